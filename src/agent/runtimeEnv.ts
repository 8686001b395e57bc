/**
 * How the node agent keeps its memory small: one runs on every node, so each megabyte counts as
 * many times as there are nodes (issue 16: goal < 80 MB; `npm run bench:agent` measures it).
 * The agent holds little (its own NodeCache, a few pulls in flight); its resident size is mostly
 * Node itself, the code it loads, and what V8 and glibc keep for speed.
 * - A 1 MB young-generation semi-space (default 16 MB), one malloc arena and glibc's mmap
 *   threshold fixed at 128 KiB, as for the controller (src/controller/runtimeEnv.ts says why).
 *   Only settable at process start, so the chart's agent container and bench:agent pass them in
 *   the environment (test/agent/runtimeEnv.test.ts keeps the chart to this).
 * - V8's interpreter only (no Sparkplug, Maglev or TurboFan): their code and compile buffers cost
 *   several MB, and the agent's JavaScript is a few calls a second between the API server and
 *   containerd, never hot. V8 takes these flags on the command line, not in NODE_OPTIONS, so the
 *   agent sets them itself before it loads its dependencies. Not in fan-out `planned` mode, where
 *   the agent also streams blobs to its peers.
 * bench:agent peak RSS, agent restarted on a warm compile cache: 99.5 MB without either, 88.7 MB
 * with the environment, 81.4 MB with the interpreter only as well (a new pod, whose compile cache
 * is empty so Node loads its TypeScript stripper: 127.9, 105.9, 103.4 MB).
 */
import { setFlagsFromString } from "node:v8";

export const AGENT_RUNTIME_ENV: Readonly<Record<string, string>> = {
  NODE_OPTIONS: "--max-semi-space-size=1",
  MALLOC_ARENA_MAX: "1",
  MALLOC_MMAP_THRESHOLD_: "131072",
};

/** V8 flags the agent sets on itself (they are not allowed in NODE_OPTIONS). */
export const AGENT_V8_FLAGS = ["--no-opt", "--no-maglev", "--no-sparkplug"] as const;

/**
 * Interpreter only, for the rest of this process: call before importing what the agent runs,
 * since V8 reads these flags when it compiles a function.
 */
export function interpretOnly(): void {
  setFlagsFromString(AGENT_V8_FLAGS.join(" "));
}
