import { readFileSync } from "node:fs";

let cached: string | undefined;

/** Stowage's version, from package.json (shipped beside src/ in the image). */
export function stowageVersion(): string {
  cached ??= String(
    JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")).version ?? "",
  );
  return cached;
}
