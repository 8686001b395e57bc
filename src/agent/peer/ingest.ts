/**
 * Blobs this node's containerd is still downloading, served to peers as far as they have arrived
 * (docs/fanout.md: pieces pipeline through the tree only if a node passes on piece i while it
 * receives piece i+1; without this a child could start only once its source holds the whole blob).
 *
 * Read from containerd's content store under its root, as the pull-progress probe does
 * (src/agent/progress.ts): `io.containerd.content.v1.content/ingest/<id>/` holds `ref` (ending in
 * `-<digest>`; a CRI pull's is `k8s.io/<n>/layer-sha256:<hex>`), `total` (the expected size) and
 * `data`, which containerd appends to as the bytes arrive. The content service's Read serves
 * committed blobs only, so the file is the one way to reach these bytes; no copy of the blob is
 * kept anywhere else (a spool of our own would double the disk a 20 GB layer takes while it
 * downloads). The data file is opened once per request: containerd renames it into blobs/ on
 * commit, and an open descriptor keeps reading the same bytes across the rename.
 *
 * The bytes are not verified here (containerd verifies the whole blob at commit, and so does the
 * receiving node's mirror): a range of a blob still downloading cannot be checked on its own.
 */
import { open, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { PartialBlob, PartialBlobs } from "./server.ts";

const READ_BYTES = 256 * 1024;

/** The ingest directory whose ref names `digest`, or undefined. */
async function ingestOf(ingestDir: string, digest: string): Promise<string | undefined> {
  for (const entry of await readdir(ingestDir).catch(() => [] as string[])) {
    const ref = await readFile(join(ingestDir, entry, "ref"), "utf8").catch(() => "");
    if (ref.trimEnd().endsWith(`-${digest}`)) return join(ingestDir, entry);
  }
  return undefined;
}

export function containerdIngests(containerdRoot: string): PartialBlobs {
  const ingestDir = join(containerdRoot, "io.containerd.content.v1.content", "ingest");
  return {
    async get(digest: string): Promise<PartialBlob | undefined> {
      const dir = await ingestOf(ingestDir, digest);
      if (!dir) return undefined;
      const total = Number((await readFile(join(dir, "total"), "utf8").catch(() => "")).trim());
      if (!Number.isSafeInteger(total) || total <= 0) return undefined;
      const handle = await open(join(dir, "data"), "r").catch(() => undefined);
      if (!handle) return undefined;
      const available = (await handle.stat()).size;
      return {
        size: total,
        available: () => available,
        async *read(offset: number, length: number) {
          try {
            let position = offset;
            const end = offset + length;
            while (position < end) {
              const buffer = Buffer.allocUnsafe(Math.min(READ_BYTES, end - position));
              const { bytesRead } = await handle.read(buffer, 0, buffer.length, position);
              if (bytesRead === 0) return;
              position += bytesRead;
              yield buffer.subarray(0, bytesRead);
            }
          } finally {
            await handle.close().catch(() => {});
          }
        },
        close: () => handle.close().catch(() => {}),
      };
    },
  };
}
