import { defineConfig } from "vitest/config";

// Tests start real registries, containerd and the API test double; they are I/O bound,
// so a small pool keeps a 2-core CI machine from thrashing.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    maxWorkers: 2,
    reporters: ["default", "./test/support/summaryReporter.ts"],
  },
});
