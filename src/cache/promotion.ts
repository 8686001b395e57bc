/**
 * Promotion of fetched image manifests into distribution's manifest store. A pull-through
 * cache has a manifest before any of its blobs, and distribution refuses a manifest whose
 * blobs it lacks, so the front first keeps it in the blob store (storage.ts); once every blob
 * the manifest names is committed, it is pushed as a manifest by digest. Why it matters:
 * distribution's garbage collection keeps only blobs some stored manifest references, so
 * without promotion a GC run would empty the cache of everything pulled through the front,
 * and eviction (delete manifests, then GC) could not tell what is in use.
 *
 * Only image manifests are promoted: an index would need every platform's manifest stored,
 * and a node pulls one. Indexes stay in the blob store (small, fetched again after a GC).
 * State is in memory: after a restart, manifests fetched before it are not promoted.
 */
import type { Logger } from "../util/log.ts";
import type { CacheTarget } from "./layout.ts";
import type { Storage, StoredManifest } from "./storage.ts";

interface Waiting {
  repository: string;
  manifest: StoredManifest;
  missing: Set<string>;
}

const IMAGE_MANIFEST_TYPES = new Set([
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
]);

/** The blob digests an image manifest names (config and layers); undefined for other documents. */
export function blobsOfImageManifest(manifest: StoredManifest): string[] | undefined {
  if (!IMAGE_MANIFEST_TYPES.has(manifest.mediaType)) return undefined;
  const document = JSON.parse(manifest.bytes.toString("utf8")) as {
    config?: { digest?: string };
    layers?: { digest?: string; urls?: string[] }[];
  };
  // A foreign layer (with urls) is never in the registry: distribution does not ask for it.
  const layers = (document.layers ?? []).filter((layer) => !layer.urls?.length);
  return [document.config, ...layers]
    .map((descriptor) => descriptor?.digest)
    .filter((digest): digest is string => typeof digest === "string");
}

export class ManifestPromotion {
  private readonly waiting = new Map<string, Waiting>();
  private readonly storage: Storage;
  private readonly logger: Logger;
  private readonly maxWaiting: number;

  constructor(options: { storage: Storage; logger: Logger; maxWaiting?: number }) {
    this.storage = options.storage;
    this.logger = options.logger;
    this.maxWaiting = options.maxWaiting ?? 10_000;
  }

  /** A manifest just fetched: promote it now if storage has its blobs, else when they arrive. */
  async track(target: CacheTarget, manifest: StoredManifest): Promise<void> {
    const blobs = blobsOfImageManifest(manifest);
    if (!blobs) return;
    const key = `${target.cacheRepository}@${manifest.digest}`;
    // Registered before looking, so a blob committed while we look is not missed.
    const entry: Waiting = { repository: target.cacheRepository, manifest, missing: new Set(blobs) };
    if (this.waiting.size >= this.maxWaiting) {
      const oldest = this.waiting.keys().next().value;
      if (oldest !== undefined) this.waiting.delete(oldest);
    }
    this.waiting.set(key, entry);
    for (const digest of blobs) {
      const head = await this.storage
        .openBlob(target.cacheRepository, digest, { method: "HEAD" })
        .catch(() => undefined);
      if (head) {
        await head.body.dump();
        entry.missing.delete(digest);
      }
    }
    await this.promoteIfComplete(key, entry);
  }

  /** A blob is committed in `repository`: promote the manifests that were waiting only for it. */
  async blobCommitted(repository: string, digest: string): Promise<void> {
    for (const [key, entry] of this.waiting) {
      if (entry.repository !== repository || !entry.missing.delete(digest)) continue;
      await this.promoteIfComplete(key, entry);
    }
  }

  private async promoteIfComplete(key: string, entry: Waiting): Promise<void> {
    if (entry.missing.size > 0 || this.waiting.get(key) !== entry) return;
    this.waiting.delete(key);
    try {
      await this.storage.client.putManifest(
        { registry: this.storage.registry, repository: entry.repository },
        entry.manifest.digest,
        entry.manifest,
      );
      this.logger.debug({ repository: entry.repository, digest: entry.manifest.digest }, "manifest promoted");
    } catch (err) {
      this.logger.warn(
        { repository: entry.repository, digest: entry.manifest.digest, err: (err as Error).message },
        "could not store a fetched manifest in the manifest store; it stays in the blob store",
      );
    }
  }
}
