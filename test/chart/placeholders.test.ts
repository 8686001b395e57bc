/**
 * What a user reads (README, docs, the chart and its NOTES, examples) and the code they may open
 * must stand on their own: no placeholder repository URL, no link to design notes that live
 * outside this repository.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { describe, expect, it } from "vitest";
import { root } from "../support/run.ts";

const scanned = ["README.md", "docs", "charts", "examples", "src", "testkit"];
const forbidden = ["github.com/example", "example.com/stowage", "../shared", "DESIGN.md"];

function filesUnder(path: string): string[] {
  if (!statSync(path).isDirectory()) return [path];
  return readdirSync(path).flatMap((entry) =>
    entry === "node_modules" ? [] : filesUnder(join(path, entry)),
  );
}

describe("what a user reads", () => {
  it("names no placeholder repository and no design file outside this repository", () => {
    const files = scanned.flatMap((path) => filesUnder(join(root, path)));
    expect(files.length).toBeGreaterThan(100);
    const found: string[] = [];
    for (const file of files) {
      const lines = readFileSync(file, "utf8").split("\n");
      lines.forEach((line, i) => {
        for (const text of forbidden)
          if (line.includes(text)) found.push(`${relative(root, file)}:${i + 1}: ${text}`);
      });
    }
    expect(found).toEqual([]);
  });
});
