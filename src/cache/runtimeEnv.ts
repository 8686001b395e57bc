/**
 * The front's process environment, as charts/stowage's cache StatefulSet sets it and bench:cache
 * runs it (test/cache/runtimeEnv.test.ts keeps the chart to this). Both are about peak memory
 * while streaming blobs (bench:cache at 2 GiB: 240 MB without them, 158-172 MB with them):
 * - a 1 MB young-generation semi-space (default 16 MB): the front's JS heap stays small, its bulk
 *   is blob buffers outside it;
 * - glibc's mmap threshold fixed at 128 KiB: glibc raises it after the first large free, and blob
 *   buffers (64 KiB to 1 MiB) then come from the malloc heap and stay resident after they are freed.
 */
export const FRONT_RUNTIME_ENV: Readonly<Record<string, string>> = {
  NODE_OPTIONS: "--max-semi-space-size=1",
  MALLOC_MMAP_THRESHOLD_: "131072",
};
