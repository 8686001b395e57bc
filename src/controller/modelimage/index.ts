/**
 * Wires the ModelImage reconciler into a Manager: informers for ModelImages (all namespaces or
 * the configured ones) and Nodes, the shared registry client / Copier / single-flight syncer,
 * and the scrape-time lag and readiness gauges.
 */
import {
  type ModelImage,
  ModelImageResource,
  type ModelImageStatus,
  variantsOf,
} from "../../api/modelImage.ts";
import { type KubeClient, type KubeObject, Resources } from "../../kube/client.ts";
import { isConditionTrue } from "../../kube/conditions.ts";
import {
  type Controller,
  done,
  type EventHandler,
  type EventSource,
  objectKey,
} from "../../kube/controller.ts";
import type { EventRecorder } from "../../kube/events.ts";
import { isBeingDeleted } from "../../kube/finalizers.ts";
import type { Informer } from "../../kube/informer.ts";
import type { Manager } from "../../kube/manager.ts";
import { writeStatus } from "../../kube/status.ts";
import { parseTime } from "../../kube/time.ts";
import { trimNode } from "../../kube/trim.ts";
import type { ModelImageSamples, StowageMetrics } from "../../metrics.ts";
import type { RegistryClientOptions } from "../../oci/registry.ts";
import { type Clock, systemClock } from "../../util/clock.ts";
import { type Logger, silentLogger } from "../../util/log.ts";
import { type ControllerConfig, syncsPerUpstreamHost } from "../config.ts";
import type { PrewarmController } from "../prewarm/index.ts";
import { mapNodeCacheToModelImages } from "../prewarm/status.ts";
import { UpstreamSlots } from "./fairness.ts";
import { isNodeReady, type Node, nodePlatform, selectorMatches } from "./plan.ts";
import { recheckPullSecrets } from "./pullSecrets.ts";
import {
  type CheckRecord,
  type CredentialSource,
  createReconciler,
  foldPrewarm,
  type PrewarmSource,
} from "./reconciler.ts";
import { createRegistries, type Registries } from "./registries.ts";
import { Syncer } from "./sync.ts";

export { FINALIZER } from "./deletion.ts";
export type { CredentialSource } from "./reconciler.ts";

export const CONTROLLER_NAME = "modelimage";

export interface ModelImageControllerDeps {
  client: KubeClient;
  config: ControllerConfig;
  credentials: CredentialSource;
  metrics: StowageMetrics;
  events: EventRecorder;
  clock?: Clock;
  log?: Logger;
  registryOptions?: Partial<RegistryClientOptions>;
  /** For tests of the jitter; Math.random by default. */
  random?: () => number;
  /**
   * The pre-warm planner of this process (`setupPrewarmController`). With it, status carries
   * `variants[].nodes`, the NODES column and `Prewarmed`, and Ready means Synced AND Prewarmed;
   * a second controller refreshes that part on NodeCache and plan changes without upstream checks.
   */
  prewarm?: PrewarmController;
}

export interface ModelImageController {
  controller: Controller;
  informers: Informer<KubeObject>[];
  /** The shared registry client and Copier (close on shutdown: `registries.client.close()`). */
  registries: Registries;
  syncer: Syncer;
  /** Refreshes the pre-warm part of status (only with `deps.prewarm`). */
  prewarmStatusController?: Controller;
}

export function setupModelImageController(
  manager: Manager,
  deps: ModelImageControllerDeps,
): ModelImageController {
  const clock = deps.clock ?? systemClock;
  const log = (deps.log ?? silentLogger()).child({ controller: CONTROLLER_NAME });
  const namespaces = deps.config.namespaces?.length ? deps.config.namespaces : [undefined];
  const modelImageInformers = namespaces.map((namespace) =>
    manager.addInformer<ModelImage>({ type: ModelImageResource, namespace }),
  );
  const nodeInformer = manager.addInformer<Node>({ type: Resources.Node, transform: trimNode });
  const getModelImage = (key: string) => {
    for (const informer of modelImageInformers) {
      const found = informer.get(key);
      if (found) return found;
    }
    return undefined;
  };
  const allModelImages = () => modelImageInformers.flatMap((informer) => informer.list());

  const registries = createRegistries({
    config: deps.config,
    cacheCredentials: deps.credentials.forCache(),
    logger: log,
    options: deps.registryOptions,
    // Pre-warm through the front: the mirror reads blobs there too (one upstream read).
    throughCache: deps.prewarm?.throughCache,
  });
  const syncer = new Syncer({
    registries,
    metrics: deps.metrics,
    clock,
    maxConcurrentSyncs: deps.config.maxConcurrentSyncs,
  });
  const checks = new Map<string, Map<string, CheckRecord>>();
  // A parked key is queued again through the controller, created below.
  let controller: Controller | undefined;
  const slots = new UpstreamSlots(syncsPerUpstreamHost(deps.config), (key) => controller?.enqueue(key), {
    now: () => clock.now(),
  });
  const planner = deps.prewarm;
  const prewarmSource: PrewarmSource | undefined = planner
    ? { nodeCaches: () => planner.nodeCacheInformer.list(), plan: () => planner.plan() }
    : undefined;
  const reconcile = createReconciler({
    objects: deps.client.resource<ModelImage>(ModelImageResource),
    getModelImage,
    allModelImages,
    nodes: () => nodeInformer.list(),
    config: deps.config,
    credentials: deps.credentials,
    registries,
    syncer,
    events: deps.events,
    clock,
    log,
    checks,
    random: deps.random,
    prewarm: prewarmSource,
    slots,
  });
  const modelImageController = manager.addController({
    name: CONTROLLER_NAME,
    reconcile,
    workers: deps.config.workers,
    reconcileTimeoutMs: deps.config.syncTimeoutMs,
  });
  controller = modelImageController;
  // A Secret created or fixed after a ModelImage failed on it: sync again now, not at the interval.
  const secretRecheck = new AbortController();
  void manager.stopped.then(() => secretRecheck.abort());
  void recheckPullSecrets(
    {
      secrets: deps.client.resource(Resources.Secret),
      modelImages: allModelImages,
      enqueue: (key) => modelImageController.enqueue(key),
      active: () => modelImageController.running,
      clock,
      log,
      intervalMs: deps.config.pullSecretRecheckMs ?? 5_000,
    },
    secretRecheck.signal,
  );
  for (const informer of modelImageInformers) {
    modelImageController.watches(specChanges(informer));
    // A sync under way for a spec that changed, or for an object being deleted, is moot: its
    // worker goes to the pass the change queued (a deletion must not wait out a hung upstream).
    informer.addEventHandler({
      update: (old, obj) => {
        const generationChanged = old.metadata.generation !== obj.metadata.generation;
        const deletionStarted = !old.metadata.deletionTimestamp && Boolean(obj.metadata.deletionTimestamp);
        if (generationChanged || deletionStarted)
          modelImageController.cancel(
            objectKey(obj),
            deletionStarted ? "cancelled: the object is being deleted" : "cancelled: its spec changed",
          );
      },
      delete: (obj) => modelImageController.cancel(objectKey(obj), "cancelled: the object was deleted"),
    });
  }
  modelImageController.watches(relevantNodeChanges(nodeInformer), (node) =>
    allModelImages()
      .filter((mi) => variantsOf(mi.spec).some((v) => selectorMatches(v.nodeSelector, node.metadata?.labels)))
      .map((mi) => objectKey(mi)),
  );

  let prewarmStatusController: Controller | undefined;
  if (planner && prewarmSource) {
    // Node progress changes often; it must not cost an upstream HEAD, so it has its own queue.
    const objects = deps.client.resource<ModelImage>(ModelImageResource);
    prewarmStatusController = manager.addController({
      name: `${CONTROLLER_NAME}-prewarm`,
      workers: 1,
      reconcile: async (key, ctx) => {
        const mi = getModelImage(key);
        // Before the first sync there is no status to add to; the sync's own write folds it in.
        if (!mi || isBeingDeleted(mi) || mi.status?.observedGeneration === undefined) return done();
        await writeStatus<ModelImageStatus, ModelImage>(
          objects,
          mi,
          (status, current) =>
            foldPrewarm(status ?? {}, current, nodeInformer.list(), prewarmSource, clock.now()),
          { clock, signal: ctx.signal },
        );
        return done();
      },
    });
    prewarmStatusController.watches(planner.nodeCacheInformer, mapNodeCacheToModelImages);
    prewarmStatusController.watches(planner.planChanges);
    // Node counts follow the nodes a variant's selector matches that take images (Ready, not
    // cordoned): a node uncordoned or labelled after the sync changes Prewarmed and Ready, even
    // when no plan changed (no NodeCache yet) and no upstream check is due.
    prewarmStatusController.watches(prewarmNodeChanges(nodeInformer), (node) =>
      allModelImages()
        .filter((mi) =>
          variantsOf(mi.spec).some((v) => selectorMatches(v.nodeSelector, node.metadata?.labels)),
        )
        .map((mi) => objectKey(mi)),
    );
    for (const informer of modelImageInformers) prewarmStatusController.watches(specChanges(informer));
  }

  deps.metrics.setModelImageSource(() => samples(allModelImages(), checks, clock.now()));
  return {
    controller: modelImageController,
    informers: [...modelImageInformers, nodeInformer] as unknown as Informer<KubeObject>[],
    registries,
    syncer,
    ...(prewarmStatusController ? { prewarmStatusController } : {}),
  };
}

/**
 * ModelImage changes worth a reconcile: new objects, spec changes (generation), deletion
 * starting. Our own status and finalizer writes are not: each would cost an upstream HEAD
 * (and race the write that caused it); the periodic requeue looks again anyway.
 */
function specChanges(informer: Informer<ModelImage>): EventSource<ModelImage> {
  return {
    addEventHandler(handler: EventHandler<ModelImage>) {
      return informer.addEventHandler({
        add: (obj) => handler.add?.(obj),
        delete: (obj) => handler.delete?.(obj),
        update: (old, obj) => {
          const before = old.metadata;
          const after = obj.metadata;
          if (
            before.generation !== after.generation ||
            Boolean(before.deletionTimestamp) !== Boolean(after.deletionTimestamp)
          )
            handler.update?.(old, obj);
        },
      });
    },
  };
}

/** Node updates that change what `platforms: auto` sees (labels, readiness, platform), not heartbeats. */
function relevantNodeChanges(informer: Informer<Node>): EventSource<Node> {
  const fingerprint = (node: Node) =>
    JSON.stringify([node.metadata?.labels ?? {}, isNodeReady(node), nodePlatform(node)]);
  return {
    addEventHandler(handler: EventHandler<Node>) {
      return informer.addEventHandler({
        add: (node) => handler.add?.(node),
        delete: (node) => handler.delete?.(node),
        update: (old, node) => {
          if (fingerprint(old) === fingerprint(node)) return;
          // Keys for both label sets: a node that stopped matching a selector matters too.
          handler.update?.(old, old);
          handler.update?.(old, node);
        },
      });
    },
  };
}

/** Node updates that change the pre-warm counts: labels, readiness, cordon; not heartbeats. */
function prewarmNodeChanges(informer: Informer<Node>): EventSource<Node> {
  const fingerprint = (node: Node) =>
    JSON.stringify([node.metadata?.labels ?? {}, isNodeReady(node), Boolean(node.spec?.unschedulable)]);
  return {
    addEventHandler(handler: EventHandler<Node>) {
      return informer.addEventHandler({
        add: (node) => handler.add?.(node),
        delete: (node) => handler.delete?.(node),
        update: (old, node) => {
          if (fingerprint(old) === fingerprint(node)) return;
          // Keys for both label sets: a node that stopped matching a selector matters too.
          handler.update?.(old, old);
          handler.update?.(old, node);
        },
      });
    },
  };
}

/** Lag and readiness per object, from the informer cache, the last checks and the clock. */
function samples(
  modelImages: ModelImage[],
  checks: Map<string, Map<string, CheckRecord>>,
  now: number,
): ModelImageSamples {
  const out: ModelImageSamples = { lag: [], ready: [] };
  for (const mi of modelImages) {
    const namespace = mi.metadata.namespace ?? "";
    const name = mi.metadata.name ?? "";
    out.ready.push({ namespace, name, ready: isConditionTrue(mi.status?.conditions, "Ready") });
    const records = checks.get(`${namespace}/${name}`);
    for (const variant of variantsOf(mi.spec)) {
      const status = mi.status?.variants?.find((v) => v.name === variant.name);
      const record = records?.get(variant.name);
      let since: number | undefined;
      if (status?.upstreamChangedAt) since = parseTime(status.upstreamChangedAt);
      else if (record?.failing || !status?.cacheDigest)
        since =
          record?.lastSuccessAt ??
          parseTime(status?.lastCheckedAt) ??
          parseTime(mi.metadata.creationTimestamp);
      const seconds = since === undefined ? 0 : Math.max(0, (now - since) / 1000);
      out.lag.push({ namespace, name, variant: variant.name, seconds });
    }
  }
  return out;
}
