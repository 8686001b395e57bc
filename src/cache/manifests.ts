/**
 * Manifests by digest: from storage, else fetched upstream once (concurrent misses share the
 * fetch), verified against the digest by RegistryClient, and kept in storage before the
 * answer goes out. Manifests are small (distribution caps them at 4 MiB), so a miss is held
 * whole in memory rather than streamed.
 */
import type { CacheMetrics } from "../metrics.ts";
import type { RegistryClient } from "../oci/registry.ts";
import { asStowageError } from "../util/errors.ts";
import type { Logger } from "../util/log.ts";
import type { CacheTarget } from "./layout.ts";
import type { ManifestPromotion } from "./promotion.ts";
import type { Storage, StoredManifest } from "./storage.ts";

export interface ManifestSource {
  manifest: StoredManifest;
  /** Where it came from: storage (a hit) or upstream (a miss). */
  source: "storage" | "upstream";
}

export interface ManifestsOptions {
  upstream: RegistryClient;
  storage: Storage;
  metrics: CacheMetrics;
  logger: Logger;
  promotion?: ManifestPromotion;
}

export class Manifests {
  private readonly pending = new Map<string, Promise<StoredManifest>>();

  private readonly options: ManifestsOptions;

  constructor(options: ManifestsOptions) {
    this.options = options;
  }

  async get(target: CacheTarget, digest: string): Promise<ManifestSource> {
    const stored = await this.options.storage
      .getManifest(target.cacheRepository, digest)
      .catch((err: unknown) => {
        // Storage away: serve from the upstream rather than fail the pull (the store fails too, logged).
        this.options.logger.warn(
          { repository: target.cacheRepository, digest, err: asStowageError(err).message },
          "cache storage unreadable; fetching the manifest upstream",
        );
        return undefined;
      });
    if (stored) return { manifest: stored, source: "storage" };
    const key = `${target.cacheRepository}@${digest}`;
    let pending = this.pending.get(key);
    if (pending) {
      this.options.metrics.singleFlightJoined.inc({ kind: "manifest" });
    } else {
      pending = this.fetch(target, digest).finally(() => this.pending.delete(key));
      this.pending.set(key, pending);
    }
    return { manifest: await pending, source: "upstream" };
  }

  /** The digests a manifest refers to: config and layers, or an index's children. */
  async referencesOf(target: CacheTarget, digest: string): Promise<string[]> {
    const { manifest } = await this.get(target, digest);
    const document = JSON.parse(manifest.bytes.toString("utf8")) as {
      config?: { digest?: string };
      layers?: { digest?: string }[];
      manifests?: { digest?: string }[];
    };
    return [document.config, ...(document.layers ?? []), ...(document.manifests ?? [])]
      .map((descriptor) => descriptor?.digest)
      .filter((value): value is string => typeof value === "string");
  }

  private async fetch(target: CacheTarget, digest: string): Promise<StoredManifest> {
    const { upstream, storage, logger } = this.options;
    const manifest = await upstream.getManifest(
      { registry: target.upstream, repository: target.repository },
      digest,
    );
    try {
      await storage.putManifestBlob(target.cacheRepository, manifest);
      // In the background: the caller need not wait for storage's bookkeeping.
      this.options.promotion?.track(target, manifest).catch(() => {});
    } catch (err) {
      logger.warn(
        { repository: target.cacheRepository, digest, err: asStowageError(err).message },
        "could not store a fetched manifest; it will be fetched again next time",
      );
    }
    return manifest;
  }
}
