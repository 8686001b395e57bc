import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";

// The README's first quick-start command must keep working: run the sandbox headless.
describe("npm run demo -- --ci", () => {
  it("mirrors the synthetic model image into the cache and exits 0 with a byte-exact summary", async () => {
    const child = spawn(process.execPath, ["testkit/demo.ts", "--ci"], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (chunk: Buffer) => {
      out += chunk.toString();
    });
    child.stderr.resume();
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    expect(out).toContain("the cache holds the upstream image, byte-exact");
    expect(out).toMatch(/0 blobs transferred/);
    expect(code).toBe(0);
  }, 120_000);
});
