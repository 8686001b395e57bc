import type { Reporter, SerializedError, TestModule } from "vitest/node";

export interface RunSummary {
  passed: number;
  failed: number;
  skipped: number;
}

/**
 * Counts a run the way it ended: tests by their result, plus every failure that belongs to no
 * test. A `beforeAll`/`afterAll` that throws or fails an assertion is an error of its suite or
 * module (the tests of a suite whose `beforeAll` threw are reported skipped), a file that cannot
 * be imported is an error of its module with no tests, and an error nothing awaited is an
 * unhandled error of the run. Each of those counts as one failure.
 */
export function summarise(
  testModules: ReadonlyArray<TestModule>,
  unhandledErrors: ReadonlyArray<SerializedError>,
): RunSummary {
  const summary: RunSummary = { passed: 0, failed: unhandledErrors.length, skipped: 0 };
  for (const mod of testModules) {
    let failedHere = mod.errors().length;
    for (const suite of mod.children.allSuites()) failedHere += suite.errors().length;
    for (const test of mod.children.allTests()) {
      const state = test.result().state;
      if (state === "passed") summary.passed++;
      else if (state === "failed") failedHere++;
      else summary.skipped++;
    }
    // A module the runner marked failed without saying why (a crashed worker) is still one.
    if (mod.state() === "failed" && failedHere === 0) failedHere = 1;
    summary.failed += failedHere;
  }
  return summary;
}

/**
 * Ends the run with the plain `N passed, N failed, N skipped` line that CI reads, whatever the
 * default reporter printed above it.
 */
export default class SummaryReporter implements Reporter {
  onTestRunEnd(
    testModules: ReadonlyArray<TestModule>,
    unhandledErrors: ReadonlyArray<SerializedError>,
  ): void {
    const { passed, failed, skipped } = summarise(testModules, unhandledErrors);
    process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  }
}
