/**
 * One eviction pass over the cache registry: read what it holds (inventory.ts), decide what goes
 * (plan.ts), delete those manifests, then hand over to garbage collection (collect.ts), which
 * frees their blobs. Deleting a manifest never removes a blob, so this part is safe online; a
 * manifest tagged since the inventory was read (a ModelImage declared it meanwhile) is kept.
 */
import type { EvictionMetrics } from "../../metrics.ts";
import type { RegistryClient } from "../../oci/registry.ts";
import type { Clock } from "../../util/clock.ts";
import { asStowageError } from "../../util/errors.ts";
import type { Logger } from "../../util/log.ts";
import { clampTimerMs } from "../../util/timer.ts";
import { candidateImages, lastPulls, pinnedImages } from "./inventory.ts";
import { planEviction } from "./plan.ts";

export interface EvictionOptions {
  client: RegistryClient;
  /** The cache registry's host[:port]. */
  registry: string;
  /** Bytes the undeclared images may take. */
  budgetBytes: number;
  /**
   * Declared images as ModelImage status names them (cache repository and digest): pinned even
   * when untagged (a digest-only source is pushed by digest). Tagged images are pinned anyway.
   */
  declared?: () => Iterable<{ repository: string; digest: string }>;
  metrics: EvictionMetrics;
  logger: Logger;
  /**
   * Frees the blobs of evicted manifests (collect.ts: distribution's garbage collection while the
   * registry takes no writes). Called only when something was evicted; without it the blobs stay
   * until the registry's garbage collection runs by other means.
   */
  collectGarbage?: () => Promise<void>;
}

export interface EvictionResult {
  evicted: { repository: string; digest: string; lastPulledAt: number }[];
  undeclaredBytes: number;
  freedBytes: number;
}

/** Is `digest` what one of the repository's tags points at right now? */
async function taggedNow(client: RegistryClient, registry: string, repository: string, digest: string) {
  let tags: string[];
  try {
    tags = await client.listTags({ registry, repository });
  } catch (err) {
    if (asStowageError(err).reason === "ImageNotFound") return false;
    throw err;
  }
  for (const tag of tags) {
    if ((await client.headManifest({ registry, repository }, tag))?.digest === digest) return true;
  }
  return false;
}

export async function evictUndeclared(options: EvictionOptions): Promise<EvictionResult> {
  const { client, registry, metrics, logger } = options;
  const pinned = await pinnedImages(client, registry);
  const pulls = await lastPulls(client, registry);
  const declared = new Set<string>();
  for (const image of options.declared?.() ?? []) declared.add(`${image.repository}@${image.digest}`);
  const all = await candidateImages(client, registry, pulls, pinned);
  const candidates = all.filter((image) => !declared.has(`${image.repository}@${image.digest}`));
  const declaredImages = all.filter((image) => declared.has(`${image.repository}@${image.digest}`));
  const plan = planEviction([...pinned.values(), ...declaredImages], candidates, options.budgetBytes);
  metrics.undeclaredBytes.set(plan.undeclaredBytes);
  const evicted: EvictionResult["evicted"] = [];
  for (const image of plan.evict) {
    if (await taggedNow(client, registry, image.repository, image.digest)) continue;
    if (await client.deleteManifest({ registry, repository: image.repository }, image.digest)) {
      evicted.push({ repository: image.repository, digest: image.digest, lastPulledAt: image.lastPulledAt });
      metrics.evictions.inc();
      logger.info(
        {
          repository: image.repository,
          digest: image.digest,
          lastPulledAt: new Date(image.lastPulledAt).toISOString(),
        },
        "evicted an image nobody declared",
      );
    }
  }
  if (evicted.length > 0) {
    metrics.evictedBytes.inc(plan.freedBytes);
    logger.info(
      { images: evicted.length, freedBytes: plan.freedBytes, budgetBytes: options.budgetBytes },
      "cache over budget: evicted the least recently pulled images",
    );
    await options.collectGarbage?.();
  }
  return { evicted, undeclaredBytes: plan.undeclaredBytes, freedBytes: plan.freedBytes };
}

/** Runs eviction every `intervalMs` while `isLeader()`; a failed pass is logged and counted. */
export function startEvictionLoop(
  options: EvictionOptions & { intervalMs: number; clock: Clock; isLeader: () => boolean },
): { stop(): Promise<void> } {
  const abort = new AbortController();
  const loop = (async () => {
    while (!abort.signal.aborted) {
      try {
        await options.clock.sleep(clampTimerMs(options.intervalMs), abort.signal);
      } catch {
        return;
      }
      if (!options.isLeader()) continue;
      try {
        await evictUndeclared(options);
        options.metrics.passes.inc({ result: "ok" });
      } catch (err) {
        options.metrics.passes.inc({ result: "failed" });
        options.logger.warn(
          { reason: asStowageError(err).reason, err: asStowageError(err).message },
          "eviction pass failed",
        );
      }
    }
  })();
  return {
    async stop() {
      abort.abort();
      await loop;
    },
  };
}
