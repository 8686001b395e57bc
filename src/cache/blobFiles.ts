/**
 * The hit path without a second HTTP hop: in the chart the front runs beside the registry in the
 * same pod, so with distribution's filesystem driver it can read a committed blob straight from
 * the registry's volume (mounted read-only: `--storage-root`). Proxying distribution's response
 * cost the front a socket receive per byte on top of the send, and ran at 0.39x of a direct GET.
 *
 * Only what distribution itself would serve is served: the blob must be linked into the
 * requested repository (`_layers/<alg>/<hex>/link` naming the digest: a digest stored for a
 * private repository is not readable through another one), and the data file is the one
 * distribution committed after verifying its digest, so its bytes are right by construction.
 * Anything unexpected (no link, no data, another layout) answers "not here", and the caller
 * asks distribution over HTTP as before.
 *
 * Layout (distribution's storage/paths.go):
 *   <root>/docker/registry/v2/blobs/<alg>/<first two hex>/<hex>/data
 *   <root>/docker/registry/v2/repositories/<name>/_layers/<alg>/<hex>/link
 */
import type { FileHandle } from "node:fs/promises";
import { open, readFile } from "node:fs/promises";
import { join } from "node:path";

const DIGEST = /^(sha256):([0-9a-f]{64})$|^(sha512):([0-9a-f]{128})$/;
const REPOSITORY_COMPONENT = /^[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*$/;

export interface BlobFile {
  handle: FileHandle;
  size: number;
}

/** A single byte range of a blob of `size` bytes, as RFC 9110 reads `bytes=a-b`, `bytes=a-`, `bytes=-n`. */
export type RangeAnswer =
  | { kind: "whole" }
  | { kind: "partial"; start: number; end: number }
  | { kind: "unsatisfiable" }
  /** A form this reader does not serve (several ranges, other units): let distribution answer. */
  | { kind: "unsupported" };

export function parseRange(header: string | undefined, size: number): RangeAnswer {
  if (header === undefined) return { kind: "whole" };
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match) return { kind: "unsupported" };
  const [, first, last] = match;
  if (first === "" && last === "") return { kind: "unsupported" };
  if (first === "") {
    const suffix = Number(last);
    if (suffix === 0) return { kind: "unsatisfiable" };
    return { kind: "partial", start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(first);
  if (start >= size) return { kind: "unsatisfiable" };
  const end = last === "" ? size - 1 : Math.min(Number(last), size - 1);
  if (end < start) return { kind: "unsupported" };
  return { kind: "partial", start, end };
}

export class BlobFiles {
  private readonly registryRoot: string;

  /** `root`: distribution's `storage.filesystem.rootdirectory`. */
  constructor(root: string) {
    this.registryRoot = join(root, "docker", "registry", "v2");
  }

  /**
   * The committed blob `digest` of `repository`, opened; undefined when distribution would not
   * serve it from there (not linked into the repository, no data file, or names it cannot hold).
   */
  async open(repository: string, digest: string): Promise<BlobFile | undefined> {
    const parsed = DIGEST.exec(digest);
    if (!parsed) return undefined;
    const algorithm = parsed[1] ?? parsed[3];
    const hex = parsed[2] ?? parsed[4];
    const components = repository.split("/");
    if (components.length === 0 || !components.every((part) => REPOSITORY_COMPONENT.test(part)))
      return undefined;
    const link = join(this.registryRoot, "repositories", ...components, "_layers", algorithm, hex, "link");
    const linked = await readFile(link, "utf8").catch(() => undefined);
    if (linked?.trim() !== digest) return undefined;
    const data = join(this.registryRoot, "blobs", algorithm, hex.slice(0, 2), hex, "data");
    const handle = await open(data, "r").catch(() => undefined);
    if (!handle) return undefined;
    try {
      const stat = await handle.stat();
      if (!stat.isFile()) throw new Error("not a file");
      return { handle, size: stat.size };
    } catch {
      await handle.close().catch(() => {});
      return undefined;
    }
  }
}
