/**
 * Garbage collection paced by the blob bytes a cold fetch moves, not by V8's own heuristics.
 *
 * Every upstream chunk is a fresh buffer outside V8's heap (undici allocates one per socket read)
 * that lives a few milliseconds in the ranged download's window and the spool's write queue.
 * With the front's 1 MB young generation (runtimeEnv.ts) those milliseconds span two
 * scavenges, so most chunks are promoted, and old buffers are only freed by a full collection,
 * which V8 starts once 64 MB more of them exist than after the last one: bench:cache's 2 GiB cold
 * pulls peaked at 158-229 MB of RSS with 45-55 MB of dead buffers in it (process.memoryUsage()
 * arrayBuffers at the peak vs after a forced collection). A full collection of the front's
 * ~12 MB heap takes a few ms, so one every COLLECT_EVERY_BYTES of fetched blob costs about 1%
 * of a core at the fetch's speed and keeps the dead buffers to about that much.
 *
 * V8 hands out its collector only with --expose-gc, which Node refuses in NODE_OPTIONS: the front
 * sets the flag on itself and takes the function from a fresh context (as jest's leak detector
 * does), so no global `gc` appears for any other code.
 */
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

/** Fetched bytes between two full collections (see above). */
export const COLLECT_EVERY_BYTES = 32 * 1024 * 1024;

/** Starts a full collection without running it on the caller's stack. */
export type CollectGarbage = () => void;

type V8Collector = (options: { type: "major"; execution: "async" }) => Promise<void>;

let v8Collector: V8Collector | undefined;

/** V8's own full collection, asynchronous (it runs from a task, not inside the caller's loop). */
export function fullCollection(): CollectGarbage {
  if (!v8Collector) {
    setFlagsFromString("--expose-gc");
    v8Collector = runInNewContext("gc") as V8Collector;
  }
  const collect = v8Collector;
  return () => {
    collect({ type: "major", execution: "async" }).catch(() => {});
  };
}

/** Calls `collect` once per `everyBytes` counted, however many fetches count at once. */
export class CollectionPacer {
  readonly #collect: CollectGarbage;
  readonly #everyBytes: number;
  #sinceLast = 0;

  constructor(collect: CollectGarbage, everyBytes = COLLECT_EVERY_BYTES) {
    this.#collect = collect;
    this.#everyBytes = everyBytes;
  }

  count(bytes: number): void {
    this.#sinceLast += bytes;
    if (this.#sinceLast < this.#everyBytes) return;
    // One collection however far past the mark a large chunk went: it frees all the dead buffers.
    this.#sinceLast %= this.#everyBytes;
    this.#collect();
  }
}
