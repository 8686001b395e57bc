/**
 * Eviction in the controller process: a loop (leader only) over the cache registry with the
 * controller's cache settings. Garbage collection is not run from here: the controller cannot
 * make the registry read-only, so the freed blobs wait for the registry's garbage collection
 * (collect.ts, run where the registry runs); until then they still take space.
 */
import type { Registry } from "prom-client";
import { createEvictionMetrics } from "../../metrics.ts";
import { RegistryClient } from "../../oci/registry.ts";
import { systemClock } from "../../util/clock.ts";
import type { Logger } from "../../util/log.ts";
import type { CacheConfig } from "../config.ts";
import { startEvictionLoop } from "./evict.ts";

export function setupCacheEviction(options: {
  cache: CacheConfig;
  settings: { budgetBytes: number; intervalMs: number };
  isLeader: () => boolean;
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
  });
  return {
    async stop() {
      await loop.stop();
      await client.close();
    },
  };
}
