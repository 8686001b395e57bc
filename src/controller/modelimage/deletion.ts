/**
 * The finalizer path. With `retainOnDelete` (the default) the cache keeps everything and the
 * finalizer goes at once. Otherwise the manifests this ModelImage put in the cache are deleted
 * unless another ModelImage (any namespace) still refers to the same cache repository by tag
 * or digest — distribution deletes by digest, which drops every tag on it, so a shared digest
 * is kept too. An unreachable cache is retried with backoff until `deletionTimeoutMs` after the
 * deletionTimestamp; then the finalizer is released anyway with a Warning: deletion is never
 * blocked forever.
 */
import { type ModelImage, variantsOf } from "../../api/modelImage.ts";
import type { ObjectClient } from "../../kube/client.ts";
import { done, type Result, requeueAfter } from "../../kube/controller.ts";
import type { EventRecorder } from "../../kube/events.ts";
import { isBeingDeleted, removeFinalizer } from "../../kube/finalizers.ts";
import { parseTime } from "../../kube/time.ts";
import { parseReference } from "../../oci/reference.ts";
import type { Clock } from "../../util/clock.ts";
import { asStowageError } from "../../util/errors.ts";
import type { Logger } from "../../util/log.ts";
import type { ControllerConfig } from "../config.ts";
import { cacheTarget } from "./plan.ts";
import type { Registries } from "./registries.ts";

export const FINALIZER = "stowage.dev/cache-cleanup";

/** One manifest this ModelImage placed in the cache. */
interface CacheEntry {
  repository: string;
  tag?: string;
  digest?: string;
}

export interface DeletionDeps {
  objects: ObjectClient<ModelImage>;
  /** Every ModelImage the controller sees. */
  allModelImages: () => ModelImage[];
  registries: Registries;
  config: ControllerConfig;
  events: EventRecorder;
  clock: Clock;
  log: Logger;
}

/** Attempts per object, for the backoff between cleanup tries (one map per controller). */
const attempts = new WeakMap<DeletionDeps, Map<string, number>>();

/** `deps` must be the same object on every call (it keys the retry count); `log` may vary. */
export async function finalize(mi: ModelImage, deps: DeletionDeps, log: Logger = deps.log): Promise<Result> {
  if (!mi.metadata.finalizers?.includes(FINALIZER)) return done();
  if (deps.config.retainOnDelete) {
    await removeFinalizer(deps.objects, mi, FINALIZER);
    return done();
  }
  const key = `${mi.metadata.namespace}/${mi.metadata.name}`;
  let tries = attempts.get(deps);
  if (!tries) {
    tries = new Map();
    attempts.set(deps, tries);
  }
  try {
    const removed = await deleteUnsharedManifests(mi, deps);
    log.info({ removed }, "cache cleanup done");
    tries.delete(key);
    await removeFinalizer(deps.objects, mi, FINALIZER);
    return done();
  } catch (err) {
    const error = asStowageError(err, "CacheUnavailable");
    const deletedAt = parseTime(mi.metadata.deletionTimestamp) ?? deps.clock.now();
    const remainingMs = deletedAt + deps.config.deletionTimeoutMs - deps.clock.now();
    if (remainingMs <= 0) {
      tries.delete(key);
      await deps.events.event(mi, {
        type: "Warning",
        reason: "CacheUnavailable",
        action: "Cleanup",
        note: `gave up deleting this ModelImage's images from cache ${deps.config.cache.registry} after ${Math.round(deps.config.deletionTimeoutMs / 1000)}s and released the finalizer; they may remain in the cache: ${error.message}`,
      });
      await removeFinalizer(deps.objects, mi, FINALIZER);
      return done();
    }
    const n = (tries.get(key) ?? 0) + 1;
    tries.set(key, n);
    const delayMs = Math.min(1000 * 2 ** (n - 1), 30_000, remainingMs + 50);
    log.warn({ reason: "CacheUnavailable", error: error.message, delayMs }, "cache cleanup failed; retrying");
    return requeueAfter(delayMs);
  }
}

function entriesOf(mi: ModelImage, cacheRegistry: string): CacheEntry[] {
  const entries: CacheEntry[] = [];
  for (const variant of variantsOf(mi.spec)) {
    let target: { repository: string; tag?: string };
    try {
      target = cacheTarget(parseReference(variant.image), cacheRegistry);
    } catch {
      continue; // never mirrored
    }
    const digest = mi.status?.variants?.find((v) => v.name === variant.name)?.cacheDigest;
    entries.push({ repository: target.repository, tag: target.tag, digest });
  }
  return entries;
}

async function deleteUnsharedManifests(mi: ModelImage, deps: DeletionDeps): Promise<number> {
  const cacheRegistry = deps.registries.cacheRegistry;
  const others = deps
    .allModelImages()
    .filter((other) => other.metadata.uid !== mi.metadata.uid && !isBeingDeleted(other))
    .flatMap((other) => entriesOf(other, cacheRegistry));
  let removed = 0;
  for (const entry of entriesOf(mi, cacheRegistry)) {
    const repo = { registry: cacheRegistry, repository: entry.repository };
    // What the cache holds now under our tag: that is what a delete would remove.
    const head = entry.tag ? await deps.registries.client.headManifest(repo, entry.tag) : undefined;
    const digest = head?.digest ?? entry.digest;
    if (!digest) continue;
    const shared = others.some(
      (o) => o.repository === entry.repository && ((entry.tag && o.tag === entry.tag) || o.digest === digest),
    );
    if (shared) continue;
    if (await deps.registries.client.deleteManifest(repo, digest)) removed++;
  }
  return removed;
}
