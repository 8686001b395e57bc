/**
 * The pre-warm planner as a controller: informers for ModelImages, Nodes and NodeCaches feed
 * one work-queue key; each pass plans the whole cluster (see plan.ts) and writes the
 * differences (reconciler.ts). `plan()` and `planChanges` let the ModelImage reconciler fold the
 * planner's decisions (skipped and refused nodes) into ModelImage status via `prewarmStatus`.
 */
import { isDeepStrictEqual } from "node:util";
import { type ModelImage, ModelImageResource } from "../../api/modelImage.ts";
import { type NodeCache, NodeCacheResource } from "../../api/nodeCache.ts";
import { type KubeClient, type KubeObject, Resources } from "../../kube/client.ts";
import {
  type Controller,
  type EventHandler,
  type EventSource,
  objectKey,
  type Reconcile,
  requeueAfter,
} from "../../kube/controller.ts";
import type { EventRecorder } from "../../kube/events.ts";
import type { Informer } from "../../kube/informer.ts";
import type { Manager } from "../../kube/manager.ts";
import type { PrewarmMetrics, PrewarmNodeState, PrewarmSamples } from "../../metrics.ts";
import { type CredentialLookup, RegistryClient } from "../../oci/registry.ts";
import { type Clock, systemClock } from "../../util/clock.ts";
import { type Logger, silentLogger } from "../../util/log.ts";
import type { ControllerConfig } from "../config.ts";
import { cacheEndpointFor, type PrewarmConfig, prewarmConfig } from "./config.ts";
import { ImageResolver } from "./images.ts";
import { acceptsNewImages, hasWarmingTaint, isNodeReady, type PlannerNode, platformOf } from "./nodes.ts";
import type { PrewarmPlan } from "./plan.ts";
import { createPrewarmReconciler, PLAN_KEY } from "./reconciler.ts";
import { prewarmStatus } from "./status.ts";

export { type PrewarmConfig, prewarmConfig } from "./config.ts";
export type { NodeDecision, PrewarmPlan, VariantPlan } from "./plan.ts";
export { PrewarmReasons, planPrewarm } from "./plan.ts";
export {
  mapNodeCacheToModelImages,
  nodesColumn,
  type PrewarmStatus,
  prewarmStatus,
  readyFrom,
} from "./status.ts";

import { trimNode } from "../../kube/trim.ts";

export const PREWARM_CONTROLLER_NAME = "prewarm";

export interface PrewarmControllerDeps {
  client: KubeClient;
  /** The controller's config: the cache registry (and `namespaces` to watch). */
  config: ControllerConfig;
  prewarm?: Partial<PrewarmConfig>;
  events: EventRecorder;
  metrics?: PrewarmMetrics;
  /** A client that can read the cache registry; one is made from `config.cache` when omitted. */
  registryClient?: RegistryClient;
  /** Credentials for the cache registry when a client is made here. */
  cacheCredentials?: CredentialLookup;
  clock?: Clock;
  log?: Logger;
}

export interface PrewarmController {
  controller: Controller;
  informers: Informer<KubeObject>[];
  nodeCacheInformer: Informer<NodeCache>;
  /** The latest plan (undefined before the first pass). */
  plan(): PrewarmPlan | undefined;
  /** Reports the ModelImages whose plan changed after a pass (for a secondary watch). */
  planChanges: EventSource<ModelImage>;
  /** The cache front the controller reaches (`--prewarm-through-cache`), when set: the mirror reads blobs through it too. */
  throughCache?: string;
  /** Close the registry client if it was made here. */
  close(): Promise<void>;
}

export function setupPrewarmController(manager: Manager, deps: PrewarmControllerDeps): PrewarmController {
  const clock = deps.clock ?? systemClock;
  const log = (deps.log ?? silentLogger()).child({ controller: PREWARM_CONTROLLER_NAME });
  const config = prewarmConfig(deps.prewarm);
  const namespaces = deps.config.namespaces?.length ? deps.config.namespaces : [undefined];
  const modelImageInformers = namespaces.map((namespace) =>
    manager.addInformer<ModelImage>({ type: ModelImageResource, namespace }),
  );
  const nodeInformer = manager.addInformer<PlannerNode>({ type: Resources.Node, transform: trimNode });
  const nodeCacheInformer = manager.addInformer<NodeCache>({ type: NodeCacheResource });
  const allModelImages = () => modelImageInformers.flatMap((informer) => informer.list());

  const ownClient = deps.registryClient === undefined;
  const cache = deps.config.cache;
  const cacheCredentials: CredentialLookup =
    deps.cacheCredentials ?? ((registry) => (registry === cache.registry ? cache.credentials : undefined));
  const registryClient =
    deps.registryClient ??
    new RegistryClient({
      credentials: cacheCredentials,
      insecureHosts: cache.insecure ? [cache.registry] : [],
      caPem: cache.caPem,
      userAgent: "stowage-controller",
      logger: log,
    });

  const throughUrl = config.throughCache ? new URL(config.throughCache) : undefined;
  const throughClient = throughUrl
    ? new RegistryClient({
        insecureHosts: throughUrl.protocol === "http:" ? [throughUrl.host] : [],
        caPem: cache.caPem,
        userAgent: "stowage-controller",
        logger: log,
        retry: { attempts: 1 },
      })
    : undefined;
  const through =
    throughUrl && throughClient
      ? {
          registry: throughUrl.host,
          client: throughClient,
          resolver: new ImageResolver(throughClient, throughUrl.host),
        }
      : undefined;

  let latest: PrewarmPlan | undefined;
  const planListeners = new Set<EventHandler<ModelImage>>();
  const onPlan = (plan: PrewarmPlan) => {
    const previous = latest;
    latest = plan;
    for (const mi of allModelImages()) {
      const key = objectKey(mi);
      // Compared in place (stops at the first difference): stringifying both plans of every
      // ModelImage on every pass was the largest cost of a pass at 2,000 ModelImages.
      if (isDeepStrictEqual(previous?.modelImages.get(key), plan.modelImages.get(key))) continue;
      for (const listener of planListeners) listener.update?.(mi, mi);
    }
  };

  const reconcile = createPrewarmReconciler({
    modelImages: allModelImages,
    nodes: () => nodeInformer.list(),
    nodeCaches: () => nodeCacheInformer.list(),
    nodeCacheClient: deps.client.resource<NodeCache>(NodeCacheResource),
    nodeClient: deps.client.resource<PlannerNode>(Resources.Node),
    resolver: new ImageResolver(registryClient, cache.registry),
    through,
    config,
    cacheEndpoint: cacheEndpointFor(config, cache),
    events: deps.events,
    metrics: deps.metrics,
    clock,
    log,
    onPlan,
  });
  // A plan pass reads every ModelImage, Node and NodeCache; while a thousand ModelImages sync,
  // each status write would start another. Passes are spaced: a change after a quiet spell is
  // planned at once, a burst is folded into one pass per interval, and the interval is at least
  // twice the last pass's duration, so planning never takes more than a third of the one thread
  // the syncs share (a pass over 2,000 ModelImages and 500 nodes takes a good part of a second).
  let lastPass: { at: number; tookMs: number } | undefined;
  const spaced: Reconcile = async (key, ctx) => {
    const now = clock.now();
    if (lastPass) {
      const spacing = Math.max(PLAN_MIN_INTERVAL_MS, 2 * lastPass.tookMs);
      if (now - lastPass.at < spacing) return requeueAfter(spacing - (now - lastPass.at));
    }
    const started = performance.now();
    try {
      return await reconcile(key, ctx);
    } finally {
      lastPass = { at: clock.now(), tookMs: performance.now() - started };
    }
  };
  const controller = manager.addController({ name: PREWARM_CONTROLLER_NAME, reconcile: spaced, workers: 1 });
  const toPlan = () => [PLAN_KEY];
  for (const informer of modelImageInformers) controller.watches(plannerModelImageChanges(informer), toPlan);
  controller.watches(plannerNodeChanges(nodeInformer), toPlan);
  controller.watches(nodeCacheInformer, toPlan);

  deps.metrics?.setPrewarmSource(() => {
    const samples: PrewarmSamples = { nodes: [] };
    const nodes = nodeInformer.list();
    const nodeCaches = nodeCacheInformer.list();
    for (const mi of allModelImages()) {
      const status = prewarmStatus(mi, nodes, nodeCaches, latest);
      const totals: Record<PrewarmNodeState, number> = {
        desired: 0,
        ready: 0,
        pulling: 0,
        failed: 0,
        skipped: 0,
      };
      for (const counts of Object.values(status.variants))
        for (const state of Object.keys(totals) as PrewarmNodeState[]) totals[state] += counts[state];
      for (const state of Object.keys(totals) as PrewarmNodeState[])
        samples.nodes.push({
          namespace: mi.metadata.namespace ?? "",
          name: mi.metadata.name ?? "",
          state,
          count: totals[state],
        });
    }
    return samples;
  });

  return {
    controller,
    informers: [...modelImageInformers, nodeInformer, nodeCacheInformer] as unknown as Informer<KubeObject>[],
    nodeCacheInformer,
    plan: () => latest,
    throughCache: config.throughCache,
    planChanges: {
      addEventHandler(handler) {
        planListeners.add(handler);
        return () => planListeners.delete(handler);
      },
    },
    close: async () => {
      if (ownClient) await registryClient.close();
      await throughClient?.close();
    },
  };
}

/** Node changes the plan depends on (labels, readiness, cordon, taints, platform), not heartbeats. */
/** At most one plan pass per this long (a burst of changes waits for the next one). */
export const PLAN_MIN_INTERVAL_MS = 1000;

/**
 * ModelImage changes the planner reads: spec, deletion and the variants' resolved digests in
 * status. Conditions and the pre-warm counts the status pass writes do not change a plan.
 */
function plannerModelImageChanges(informer: Informer<ModelImage>): EventSource<ModelImage> {
  const fingerprint = (mi: ModelImage) =>
    JSON.stringify([
      mi.metadata.generation,
      mi.spec,
      Boolean(mi.metadata.deletionTimestamp),
      mi.status?.variants,
    ]);
  return {
    addEventHandler(handler: EventHandler<ModelImage>) {
      return informer.addEventHandler({
        add: (mi) => handler.add?.(mi),
        delete: (mi) => handler.delete?.(mi),
        update: (old, mi) => {
          if (fingerprint(old) !== fingerprint(mi)) handler.update?.(old, mi);
        },
      });
    },
  };
}

function plannerNodeChanges(informer: Informer<PlannerNode>): EventSource<PlannerNode> {
  const fingerprint = (node: PlannerNode) =>
    JSON.stringify([
      node.metadata?.labels ?? {},
      isNodeReady(node),
      acceptsNewImages(node),
      hasWarmingTaint(node),
      node.spec?.taints ?? [],
      platformOf(node),
      node.metadata?.resourceVersion === undefined,
    ]);
  return {
    addEventHandler(handler: EventHandler<PlannerNode>) {
      return informer.addEventHandler({
        add: (node) => handler.add?.(node),
        delete: (node) => handler.delete?.(node),
        update: (old, node) => {
          if (fingerprint(old) !== fingerprint(node)) handler.update?.(old, node);
        },
      });
    },
  };
}
