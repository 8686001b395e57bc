/**
 * Eviction and garbage collection in the controller process (leader only). Eviction deletes the
 * manifests of undeclared images over the budget (evict.ts); their blobs are freed by the
 * registry's garbage collection, which the controller runs in the cluster when it is told the
 * cache StatefulSet (cluster.ts: read-only rollout, a Job, writable again; loop.ts: after an
 * eviction freed something, and on an interval). Without it the blobs wait for a collection run
 * by other means and still take space.
 */
import type { Registry } from "prom-client";
import type { VariantStatus } from "../../api/modelImage.ts";
import type { KubeClient } from "../../kube/client.ts";
import type { EventRecorder } from "../../kube/events.ts";
import { createEvictionMetrics, createRegistryGcMetrics } from "../../metrics.ts";
import { cacheRepository, parseReference } from "../../oci/reference.ts";
import { RegistryClient } from "../../oci/registry.ts";
import { systemClock } from "../../util/clock.ts";
import type { Logger } from "../../util/log.ts";
import type { CacheConfig } from "../config.ts";
import { ClusterRegistryGc } from "./cluster.ts";
import { startEvictionLoop } from "./evict.ts";
import { type RegistryGcLoop, startRegistryGcLoop } from "./loop.ts";

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
  /** Asked for a garbage collection after a pass evicted something (setupRegistryGc). */
  collectGarbage?: RegistryGcLoop;
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
    collectGarbage: options.collectGarbage ? async () => options.collectGarbage?.request() : undefined,
  });
  return {
    async stop() {
      await loop.stop();
      await client.close();
    },
  };
}

/** The registry's garbage collection in the cluster, on the cache StatefulSet in `namespace`. */
export function setupRegistryGc(options: {
  client: KubeClient;
  namespace: string;
  statefulSet: string;
  settings: { intervalMs: number; timeoutMs: number };
  isLeader: () => boolean;
  events: EventRecorder;
  metricsRegistry: Registry;
  log: Logger;
}): RegistryGcLoop {
  const logger = options.log.child({ component: "registry-gc", statefulSet: options.statefulSet });
  const gc = new ClusterRegistryGc({
    client: options.client,
    namespace: options.namespace,
    statefulSet: options.statefulSet,
    jobTimeoutMs: options.settings.timeoutMs,
    clock: systemClock,
    logger,
  });
  return startRegistryGcLoop({
    gc,
    intervalMs: options.settings.intervalMs,
    isLeader: options.isLeader,
    clock: systemClock,
    metrics: createRegistryGcMetrics(options.metricsRegistry),
    logger,
    onFailure: async (failure) => {
      const sts = await gc.statefulSet().catch(() => undefined);
      if (!sts) return;
      await options.events.event(sts, {
        type: "Warning",
        reason: "RegistryGcFailed",
        action: "GarbageCollect",
        note: `${failure.reason}: ${failure.message}`.slice(0, 1000),
      });
    },
  });
}
