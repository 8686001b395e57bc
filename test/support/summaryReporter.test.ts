/**
 * The `N passed, N failed, N skipped` line CI reads: vitest runs small fixture files as a child
 * process with this reporter, and the line must count every failure vitest saw, not only the
 * tests that failed.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { root, run } from "./run.ts";

const fixtures = join(root, "test/support/fixtures/summary");

async function summaryOf(...files: string[]): Promise<{ line: string; code: number }> {
  const result = await run(process.execPath, [
    join(root, "node_modules/vitest/vitest.mjs"),
    "run",
    "--root",
    fixtures,
    "--config",
    "vitest.config.ts",
    ...files,
  ]);
  const lines = result.stdout.match(/^\d+ passed, \d+ failed, \d+ skipped$/gm) ?? [];
  expect(lines, `${result.stdout}\n${result.stderr}`).toHaveLength(1);
  return { line: lines[0] ?? "", code: result.code };
}

describe("the summary reporter's closing line", () => {
  it("counts a beforeAll that throws as a failure (its tests are reported skipped)", async () => {
    expect(await summaryOf("before-all-throws.fixture.ts")).toEqual({
      line: "1 passed, 1 failed, 2 skipped",
      code: 1,
    });
  });

  it("counts an afterAll whose assertion fails as a failure", async () => {
    expect(await summaryOf("after-all-fails.fixture.ts")).toEqual({
      line: "1 passed, 1 failed, 0 skipped",
      code: 1,
    });
  });

  it("counts a file that fails to load as a failure", async () => {
    expect(await summaryOf("fails-to-load.fixture.ts")).toEqual({
      line: "0 passed, 1 failed, 0 skipped",
      code: 1,
    });
  });

  it("counts an error nothing awaited as a failure", async () => {
    expect(await summaryOf("unhandled-rejection.fixture.ts")).toEqual({
      line: "1 passed, 1 failed, 0 skipped",
      code: 1,
    });
  });

  it("reports a passing file as 0 failed, and adds up several files", async () => {
    expect(await summaryOf("passing.fixture.ts")).toEqual({ line: "1 passed, 0 failed, 1 skipped", code: 0 });
    expect(await summaryOf()).toEqual({ line: "4 passed, 4 failed, 3 skipped", code: 1 });
  });
});
