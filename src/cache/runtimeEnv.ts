/**
 * The front's process environment, as charts/stowage's cache StatefulSet sets it and bench:cache
 * runs it (test/cache/runtimeEnv.test.ts keeps the chart to this). All three are about peak memory
 * while streaming blobs (bench:cache at 2 GiB: 240 MB without the first and last, 158-196 MB with
 * them; with one arena as well, and collect.ts's paced collections, 120-135 MB):
 * - a 1 MB young-generation semi-space (default 16 MB): the front's JS heap stays small, its bulk
 *   is blob buffers outside it;
 * - one malloc arena: V8's GC and compiler threads and libuv's pool each kept an arena of freed
 *   memory resident (as in the controller and agent, src/controller/runtimeEnv.ts); at 1 GiB,
 *   the front's RssAnon peaked ~10 MB lower with it;
 * - glibc's mmap threshold fixed at 128 KiB: glibc raises it after the first large free, and blob
 *   buffers (64 KiB to 1 MiB) then come from the malloc heap and stay resident after they are freed.
 */
export const FRONT_RUNTIME_ENV: Readonly<Record<string, string>> = {
  NODE_OPTIONS: "--max-semi-space-size=1",
  MALLOC_ARENA_MAX: "1",
  MALLOC_MMAP_THRESHOLD_: "131072",
};
