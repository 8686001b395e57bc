/**
 * How the agent tells a slow pull from a stuck one. CRI has no pull progress, so the agent
 * samples something that grows while bytes arrive: containerd's content ingest files (when
 * the agent can see containerd's root) and the runtime's image filesystem usage. A pull whose
 * samples stop changing for the stall timeout is cancelled and retried.
 */
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import type { ImageRuntime } from "./cri.ts";

export interface ProgressProbe {
  /** An opaque value that changes whenever a pull makes progress. */
  sample(): Promise<string>;
}

/** Image filesystem bytes used, as the runtime reports them (containerd refreshes this periodically). */
export function runtimeProgressProbe(runtime: Pick<ImageRuntime, "imageFsInfo">): ProgressProbe {
  return {
    async sample() {
      const filesystems = await runtime.imageFsInfo();
      return String(filesystems.reduce((sum, fs) => sum + fs.usedBytes, 0));
    },
  };
}

/** Bytes in containerd's in-progress downloads (`<root>/io.containerd.content.v1.content/ingest/<id>/data`). */
export async function ingestBytes(containerdRoot: string): Promise<number> {
  const ingestDir = join(containerdRoot, "io.containerd.content.v1.content", "ingest");
  let entries: string[];
  try {
    entries = await readdir(ingestDir);
  } catch {
    return 0;
  }
  let total = 0;
  for (const entry of entries) {
    try {
      total += (await stat(join(ingestDir, entry, "data"))).size;
    } catch {
      // Finished (committed) between readdir and stat.
    }
  }
  return total;
}

/** Ingest growth plus image filesystem usage: either changing counts as progress. */
export function containerdProgressProbe(
  runtime: Pick<ImageRuntime, "imageFsInfo">,
  containerdRoot: string,
): ProgressProbe {
  const fallback = runtimeProgressProbe(runtime);
  return {
    async sample() {
      const [ingest, used] = await Promise.all([
        ingestBytes(containerdRoot),
        fallback.sample().catch(() => "?"),
      ]);
      return `${ingest}/${used}`;
    },
  };
}
