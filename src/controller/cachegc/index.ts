/**
 * Eviction in the controller process: a loop (leader only) over the cache registry with the
 * controller's cache settings. Garbage collection is not run from here: the controller cannot
 * make the registry read-only, so the freed blobs wait for the registry's garbage collection
 * (collect.ts, run where the registry runs); until then they still take space.
 */
import type { Registry } from "prom-client";
import type { VariantStatus } from "../../api/modelImage.ts";
import { createEvictionMetrics } from "../../metrics.ts";
import { cacheRepository, parseReference } from "../../oci/reference.ts";
import { RegistryClient } from "../../oci/registry.ts";
import { systemClock } from "../../util/clock.ts";
import type { Logger } from "../../util/log.ts";
import type { CacheConfig } from "../config.ts";
import { startEvictionLoop } from "./evict.ts";

/** What ModelImage status declares: each variant's cache repository and cache digest. */
export function declaredImages(objects: Iterable<unknown>): { repository: string; digest: string }[] {
  const declared: { repository: string; digest: string }[] = [];
  for (const object of objects) {
    const variants = (object as { status?: { variants?: VariantStatus[] } }).status?.variants;
    if (!Array.isArray(variants)) continue;
    for (const variant of variants) {
      if (!variant.image || !variant.cacheDigest) continue;
      try {
        declared.push({
          repository: cacheRepository(parseReference(variant.image)),
          digest: variant.cacheDigest,
        });
      } catch {
        // An image status the controller wrote but cannot parse now: nothing to pin by it.
      }
    }
  }
  return declared;
}

export function setupCacheEviction(options: {
  cache: CacheConfig;
  settings: { budgetBytes: number; intervalMs: number };
  isLeader: () => boolean;
  /** Images ModelImages declare (their status' cache repository and digest), pinned when untagged. */
  declared: () => Iterable<{ repository: string; digest: string }>;
  metricsRegistry: Registry;
  log: Logger;
}): { stop(): Promise<void> } {
  const { cache } = options;
  const credentials = cache.credentials;
  const client = new RegistryClient({
    insecureHosts: cache.insecure ? [cache.registry] : [],
    caPem: cache.caPem,
    credentials: credentials ? () => [{ ...credentials, label: "cache registry credentials" }] : undefined,
    logger: options.log,
    retry: { attempts: 3 },
  });
  const loop = startEvictionLoop({
    client,
    registry: cache.registry,
    budgetBytes: options.settings.budgetBytes,
    intervalMs: options.settings.intervalMs,
    metrics: createEvictionMetrics(options.metricsRegistry),
    logger: options.log.child({ component: "cachegc" }),
    clock: systemClock,
    isLeader: options.isLeader,
    declared: options.declared,
  });
  return {
    async stop() {
      await loop.stop();
      await client.close();
    },
  };
}
