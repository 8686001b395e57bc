/**
 * How the agent tells a slow pull from a stuck one. CRI has no pull progress, so the agent
 * samples something that grows while bytes arrive: containerd's content ingest files (when
 * the agent can see containerd's root) and the runtime's image filesystem usage. A pull whose
 * samples stop changing for the stall timeout is cancelled and retried.
 */
import { readdir, readFile, stat } from "node:fs/promises";
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

/** The digest a content-store ingest is for: its `ref` file ends in `<kind>-<algorithm>:<hex>`. */
function ingestDigest(ref: string): string | undefined {
  return /-((?:sha256|sha512):[a-f0-9]+)\s*$/.exec(ref)?.[1];
}

interface ManifestDescriptor {
  digest: string;
  size: number;
}

/**
 * How many bytes of one image's config and layers containerd holds so far: a committed blob
 * counts whole, one still downloading counts what its ingest's `data` holds. Read from the
 * content store under `containerdRoot` (blobs/<alg>/<hex>, and ingest/<id>/{ref,data}: checked on
 * containerd 1.6, where a CRI pull's ingest ref is `k8s.io/<n>/layer-sha256:<hex>`). Undefined
 * until the manifest itself is in the store (the first thing a pull commits), or when the
 * digest is not a single-platform manifest.
 */
export async function pulledBytes(
  containerdRoot: string,
  manifestDigest: string,
): Promise<{ bytes: number; totalBytes: number } | undefined> {
  const content = join(containerdRoot, "io.containerd.content.v1.content");
  const blobPath = (digest: string) => {
    const [algorithm, hex] = digest.split(":");
    return join(content, "blobs", algorithm, hex);
  };
  let manifest: { config?: ManifestDescriptor; layers?: ManifestDescriptor[] };
  try {
    manifest = JSON.parse(await readFile(blobPath(manifestDigest), "utf8"));
  } catch {
    return undefined;
  }
  if (!manifest?.config || !Array.isArray(manifest.layers)) return undefined;
  const parts = [manifest.config, ...manifest.layers].filter(
    (d): d is ManifestDescriptor => typeof d?.digest === "string" && typeof d.size === "number",
  );
  const ingesting = new Map<string, number>();
  const ingestDir = join(content, "ingest");
  for (const entry of await readdir(ingestDir).catch(() => [] as string[])) {
    try {
      const digest = ingestDigest(await readFile(join(ingestDir, entry, "ref"), "utf8"));
      if (digest) ingesting.set(digest, (await stat(join(ingestDir, entry, "data"))).size);
    } catch {
      // Committed (or abandoned) between readdir and read.
    }
  }
  let bytes = 0;
  for (const part of parts) {
    const committed = await stat(blobPath(part.digest)).then(
      () => true,
      () => false,
    );
    bytes += committed ? part.size : Math.min(part.size, ingesting.get(part.digest) ?? 0);
  }
  return { bytes, totalBytes: parts.reduce((sum, part) => sum + part.size, 0) };
}
