/**
 * How the controller process keeps its memory near what it holds. At 2,000 ModelImages and 500
 * nodes it holds about 45 MB (informer caches, the pre-warm plan), but a sync pass and a plan
 * pass each make short-lived garbage by the tens of MB, and with V8's defaults the heap grew to
 * 560-880 MB before collecting it (bench:controller).
 * - A 1 MB young-generation semi-space (default 16 MB): pass garbage dies young and is swept
 *   while small. Only settable at process start, so the chart's controller container and
 *   bench:controller pass it in NODE_OPTIONS (test/controller/runtimeEnv.test.ts keeps the chart
 *   to this).
 * - V8's optimize-for-size mode, and an old generation that may grow only 20% past what the last
 *   full collection kept (V8 grows it 1.1–4× by its speed heuristics): the controller sets both
 *   itself at start, since V8 takes these flags on the command line or at run time, not in
 *   NODE_OPTIONS. At 2,000 ModelImages, optimize-for-size alone took the controller's resident
 *   size between passes from ~175 to ~120 MiB; syncs ran ~15% slower, which upstream
 *   round trips hide in a real cluster.
 * - No optimising compiler (TurboFan, Maglev): Sparkplug's baseline code only. With them, a plan
 *   pass or a status burst at 2,000 ModelImages grew the heap by ~30 MB in a few dozen
 *   milliseconds before a collection caught up, and the compilers' own buffers came on top:
 *   peaks of 150-160 MB with TurboFan off alone, 134.9-147.2 MB with both off (bench:controller,
 *   goal < 150 MB). The cost is CPU: all 2,000 ModelImages Synced in ~120 s instead of ~45 s
 *   here, where the bench's upstream is on loopback; in a cluster a sync waits on registries.
 *   Set by the process at start like the two above (V8 reads them when it compiles a function).
 * - One malloc arena, and glibc's mmap threshold fixed at 128 KiB: V8's compiler and GC threads
 *   each kept an arena of 6-12 MB of freed zone memory resident (four of them at 2,000
 *   ModelImages), and the fixed threshold keeps larger freed blocks from staying in the heap.
 *   The controller's threads rarely allocate at once, so one arena costs no measurable time
 *   (bench:controller at 2,000 ModelImages: ~240 → ~175 MiB peak).
 */
import { setFlagsFromString } from "node:v8";

export const CONTROLLER_RUNTIME_ENV: Readonly<Record<string, string>> = {
  NODE_OPTIONS: "--max-semi-space-size=1",
  MALLOC_ARENA_MAX: "1",
  MALLOC_MMAP_THRESHOLD_: "131072",
};

export const CONTROLLER_HEAP_GROWING_PERCENT = 20;

/** V8 flags the controller sets on itself at start (V8 takes them at run time, not in NODE_OPTIONS). */
export const CONTROLLER_V8_FLAGS = [
  "--optimize-for-size",
  `--heap-growing-percent=${CONTROLLER_HEAP_GROWING_PERCENT}`,
  "--no-opt",
  "--no-maglev",
] as const;

/** Favours memory over speed in V8's heap and compiler heuristics, which it reads as it runs. */
export function tuneHeapForMemory(): void {
  setFlagsFromString(CONTROLLER_V8_FLAGS.join(" "));
}
