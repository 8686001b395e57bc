/**
 * The pre-warm planner as a controller: informers for ModelImages, Nodes and NodeCaches feed
 * one work-queue key; each pass plans the whole cluster (see plan.ts) and writes the
 * differences (reconciler.ts). `plan()` and `planChanges` let the ModelImage reconciler fold the
 * planner's decisions (skipped and refused nodes) into ModelImage status via `prewarmStatus`.
 */
import { type ModelImage, ModelImageResource } from "../../api/modelImage.ts";
import { type NodeCache, NodeCacheResource } from "../../api/nodeCache.ts";
import { type KubeClient, type KubeObject, Resources } from "../../kube/client.ts";
import { type Controller, type EventHandler, type EventSource, objectKey } from "../../kube/controller.ts";
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
      if (JSON.stringify(previous?.modelImages.get(key)) === JSON.stringify(plan.modelImages.get(key)))
        continue;
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
  const controller = manager.addController({ name: PREWARM_CONTROLLER_NAME, reconcile, workers: 1 });
  const toPlan = () => [PLAN_KEY];
  for (const informer of modelImageInformers) controller.watches(informer, toPlan);
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
