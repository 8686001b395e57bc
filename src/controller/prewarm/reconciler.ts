/**
 * The pre-warm reconciler. One key for the whole cluster: the disk budget is per node across
 * ModelImages and the rollout per ModelImage across nodes, so the plan is computed whole from
 * the informer caches every time and only the differences are written (NodeCache specs, warm
 * labels, the warming taint, events). A steady state writes nothing.
 */
import { WARM_LABEL_PREFIX, WARM_LABEL_VALUE, WARMING_TAINT_KEY, warmNodeLabel } from "../../api/labels.ts";
import type { ModelImage } from "../../api/modelImage.ts";
import { API_VERSION } from "../../api/modelImage.ts";
import {
  imageStatusOf,
  NODE_CACHE_KIND,
  type NodeCache,
  type NodeCacheSpec,
  NodeImageStates,
} from "../../api/nodeCache.ts";
import type { ObjectClient } from "../../kube/client.ts";
import { type Reconcile, requeueAfter } from "../../kube/controller.ts";
import type { EventRecorder } from "../../kube/events.ts";
import { sameJson } from "../../kube/status.ts";
import { parseTime } from "../../kube/time.ts";
import type { PrewarmMetrics } from "../../metrics.ts";
import { cacheRepository, parseReference } from "../../oci/reference.ts";
import type { RegistryClient } from "../../oci/registry.ts";
import type { Clock } from "../../util/clock.ts";
import { asStowageError } from "../../util/errors.ts";
import type { Logger } from "../../util/log.ts";
import type { PrewarmConfig } from "./config.ts";
import { planPeerFanout } from "./fanout.ts";
import { type ImageResolver, type Resolution, resolutionKey } from "./images.ts";
import { hasWarmingTaint, isNodeReady, type PlannerNode } from "./nodes.ts";
import { imagesAwaitingMirror, type PrewarmPlan, planPrewarm, resolutionNeeds } from "./plan.ts";
import {
  DEFAULT_NODE_TOKEN_TTL_MS,
  type PullTokenSettings,
  pullTokenFor,
  renewalDueAt,
} from "./pullToken.ts";

export const PLAN_KEY = "cluster";
/** Look again this often even without changes (unresolved images, missed events). */
const RESYNC_MS = 10 * 60_000;
const RETRY_UNRESOLVED_MS = 15_000;

export interface PrewarmReconcilerDeps {
  modelImages: () => ModelImage[];
  nodes: () => readonly PlannerNode[];
  nodeCaches: () => readonly NodeCache[];
  nodeCacheClient: ObjectClient<NodeCache>;
  nodeClient: ObjectClient<PlannerNode>;
  resolver: ImageResolver;
  /**
   * Pre-warm through the cache front: images the mirror has not finished are resolved there
   * (tag → digest, then platform) and planned at once. Undefined: wait for Synced.
   */
  through?: { registry: string; client: RegistryClient; resolver: ImageResolver };
  config: PrewarmConfig;
  cacheEndpoint: string;
  events: EventRecorder;
  metrics?: PrewarmMetrics;
  clock: Clock;
  log: Logger;
  /** Called with the new plan after every pass. */
  onPlan: (plan: PrewarmPlan) => void;
}

export function createPrewarmReconciler(deps: PrewarmReconcilerDeps): Reconcile {
  /** node|digest → when this process first planned it, until the agent reports it Present. */
  const plannedAt = new Map<string, number>();
  /** Problems already reported by an event: `${miKey}|${node}|${reason}`. */
  const reported = new Set<string>();

  return async () => {
    const modelImages = deps.modelImages();
    const nodes = deps.nodes();
    const nodeCaches = new Map(deps.nodeCaches().map((nc) => [nc.metadata.name ?? "", nc]));
    const now = deps.clock.now();

    const throughDigests = deps.through
      ? await resolveThrough(modelImages, deps.through, deps.log)
      : undefined;
    const resolutions = new Map<string, Resolution>();
    await Promise.all(
      resolutionNeeds(modelImages, nodes, throughDigests).map(async (need) => {
        const resolver = need.through && deps.through ? deps.through.resolver : deps.resolver;
        const resolution = await resolver.resolve(need.repository, need.digest, need.platform);
        resolutions.set(resolutionKey(need.repository, need.digest, need.platform), resolution);
      }),
    );
    const plan = planPrewarm({
      modelImages,
      nodes,
      nodeCaches,
      lookup: (repository, digest, platform) => resolutions.get(resolutionKey(repository, digest, platform)),
      config: deps.config,
      cacheEndpoint: deps.cacheEndpoint,
      throughDigests,
    });

    const tokens: PullTokenSettings | undefined = deps.config.nodeTokenSecret
      ? {
          secret: deps.config.nodeTokenSecret,
          ttlMs: deps.config.nodeTokenTtlMs ?? DEFAULT_NODE_TOKEN_TTL_MS,
        }
      : undefined;
    let specs = plan.specs;
    let fanoutRenewal = Number.POSITIVE_INFINITY;
    let fanout: ReturnType<typeof planPeerFanout> | undefined;
    if (deps.config.fanout) {
      try {
        fanout = planPeerFanout({
          specs: plan.specs,
          nodes,
          nodeCaches,
          blobsOf: (digest) => deps.resolver.blobsOf(digest) ?? deps.through?.resolver.blobsOf(digest),
          settings: deps.config.fanout,
          now,
        });
      } catch (err) {
        // Fan-out saves cache egress; it must never stop pre-warm: the nodes pull from the cache.
        const failure = asStowageError(err);
        deps.log.warn(
          { reason: failure.reason },
          `fan-out not planned this pass, nodes pull from the cache: ${failure.message}`,
        );
      }
    }
    if (fanout) {
      specs = fanout.specs;
      fanoutRenewal = fanout.nextRenewal;
      if (fanout.replanned.length > 0) {
        // One line per pass (a failed peer at a thousand nodes re-plans hundreds of pairs); the pairs at debug.
        const reasons: Record<string, number> = {};
        const peers = new Set<string>();
        for (const r of fanout.replanned) {
          reasons[r.reason] = (reasons[r.reason] ?? 0) + 1;
          if (r.from.kind === "peer") peers.add(r.from.node);
          deps.log.debug(
            {
              node: r.node,
              digest: r.digest,
              from: r.from.kind === "peer" ? r.from.node : "cache",
              to: r.to.kind === "peer" ? r.to.node : "cache",
              reason: r.reason,
            },
            "fan-out source re-planned",
          );
        }
        deps.log.info(
          { pairs: fanout.replanned.length, reasons, fromPeers: [...peers].sort() },
          "fan-out re-planned the nodes fed by unavailable or gone peers",
        );
      }
    }
    const nextRenewal = Math.min(
      fanoutRenewal,
      await writeSpecs(specs, modelImages, nodes, nodeCaches, plannedAt, now, tokens, deps),
    );
    observeDurations(nodeCaches, plannedAt, deps);
    await maintainNodes(plan, nodes, nodeCaches, deps);
    await reportProblems(plan, modelImages, reported, deps);
    deps.onPlan(plan);

    const unresolved = [...plan.modelImages.values()].some((variants) =>
      variants.some(
        (v) => v.pending?.state === "unresolved" || v.decisions.some((d) => d.state === "unresolved"),
      ),
    );
    const next = Math.min(unresolved ? RETRY_UNRESOLVED_MS : RESYNC_MS, nextRenewal - now);
    return requeueAfter(Math.max(1000, next));
  };
}

/**
 * The digests images awaiting the mirror resolve to through the cache front (a tag is asked
 * each pass; the front answers from its short tag TTL). An image the front will not resolve
 * (private without credentials, upstream down) is left out: it waits for the mirror as before.
 */
async function resolveThrough(
  modelImages: ModelImage[],
  through: NonNullable<PrewarmReconcilerDeps["through"]>,
  log: Logger,
): Promise<Map<string, string>> {
  const digests = new Map<string, string>();
  await Promise.all(
    imagesAwaitingMirror(modelImages).map(async (image) => {
      const ref = parseReference(image);
      if (ref.digest) return void digests.set(image, ref.digest);
      try {
        const head = await through.client.headManifest(
          { registry: through.registry, repository: cacheRepository(ref) },
          ref.tag ?? "latest",
        );
        if (head) digests.set(image, head.digest);
      } catch (err) {
        log.debug(
          { image, reason: asStowageError(err).reason },
          "not resolved through the cache front; waiting for the mirror",
        );
      }
    }),
  );
  return digests;
}

async function writeSpecs(
  specs: ReadonlyMap<string, NodeCacheSpec>,
  modelImages: ModelImage[],
  nodes: readonly PlannerNode[],
  nodeCaches: Map<string, NodeCache>,
  plannedAt: Map<string, number>,
  now: number,
  tokens: PullTokenSettings | undefined,
  deps: PrewarmReconcilerDeps,
): Promise<number> {
  const nodesByName = new Map(nodes.map((n) => [n.metadata?.name ?? "", n]));
  let nextRenewal = Number.POSITIVE_INFINITY;
  for (const [nodeName, planned] of specs) {
    const pullToken =
      tokens && pullTokenFor(planned, nodeCaches.get(nodeName)?.spec.pullToken, tokens, now, modelImages);
    const spec = pullToken ? { ...planned, pullToken } : planned;
    if (pullToken && tokens) nextRenewal = Math.min(nextRenewal, renewalDueAt(pullToken, tokens));
    for (const image of spec.images ?? []) {
      const key = `${nodeName}|${image.digest}`;
      if (
        !plannedAt.has(key) &&
        imageStatusOf(nodeCaches.get(nodeName), image.digest)?.state !== NodeImageStates.Present
      )
        plannedAt.set(key, now);
    }
    const existing = nodeCaches.get(nodeName);
    if (existing) {
      if (sameJson(existing.spec, spec)) continue;
      // A 409 (stale informer copy) fails the pass; the work queue retries with the fresh object.
      await deps.nodeCacheClient.update({ ...existing, spec });
      deps.log.info({ node: nodeName, images: spec.images?.length ?? 0 }, "NodeCache spec updated");
      continue;
    }
    const node = nodesByName.get(nodeName);
    if (!node || (spec.images?.length ?? 0) === 0) continue;
    await deps.nodeCacheClient.create({
      apiVersion: API_VERSION,
      kind: NODE_CACHE_KIND,
      metadata: {
        name: nodeName,
        // Goes with its Node (garbage collection); the planner never deletes NodeCaches itself.
        ownerReferences: [{ apiVersion: "v1", kind: "Node", name: nodeName, uid: node.metadata?.uid }],
      },
      spec,
    });
    deps.log.info({ node: nodeName, images: spec.images?.length ?? 0 }, "NodeCache created");
  }
  return nextRenewal;
}

function observeDurations(
  nodeCaches: Map<string, NodeCache>,
  plannedAt: Map<string, number>,
  deps: PrewarmReconcilerDeps,
): void {
  for (const [key, planned] of plannedAt) {
    const [nodeName, digest] = key.split("|");
    const nc = nodeCaches.get(nodeName);
    const status = imageStatusOf(nc, digest);
    if (status?.state === NodeImageStates.Present) {
      const finished = parseTime(status.finishedAt);
      if (finished !== undefined)
        deps.metrics?.prewarmDuration.observe(Math.max(0, (finished - planned) / 1000));
      plannedAt.delete(key);
    } else if (nc && !(nc.spec.images ?? []).some((e) => e.digest === digest) && !status) {
      plannedAt.delete(key); // no longer wanted
    }
  }
}

/** Warm labels (`warm.stowage.dev/<ns>.<name>=true`) and the warming taint. */
async function maintainNodes(
  plan: PrewarmPlan,
  nodes: readonly PlannerNode[],
  nodeCaches: Map<string, NodeCache>,
  deps: PrewarmReconcilerDeps,
): Promise<void> {
  // Per node: per ModelImage, are all its planned images Present; is anything still open.
  const warm = new Map<string, Set<string>>();
  const open = new Set<string>();
  const failed = new Map<string, string[]>();
  for (const [miKey, variants] of plan.modelImages) {
    const [namespace, name] = miKey.split("/");
    const perNode = new Map<string, boolean>();
    for (const v of variants) {
      for (const node of v.pending?.nodes ?? []) open.add(node);
      for (const d of v.decisions) {
        if (d.state === "waiting" || d.state === "unresolved") open.add(d.node);
        if (d.state === "refused")
          failed.set(d.node, [...(failed.get(d.node) ?? []), `${miKey} (${d.reason})`]);
        if (d.state !== "planned" || !d.digest) continue;
        const state = imageStatusOf(nodeCaches.get(d.node), d.digest)?.state;
        if (state === NodeImageStates.Failed)
          failed.set(d.node, [...(failed.get(d.node) ?? []), `${miKey} (${d.digest}: PullFailed)`]);
        else if (state !== NodeImageStates.Present) open.add(d.node);
        perNode.set(d.node, (perNode.get(d.node) ?? true) && state === NodeImageStates.Present);
      }
    }
    for (const [nodeName, isWarm] of perNode) {
      if (!isWarm) continue;
      const set = warm.get(nodeName) ?? new Set<string>();
      set.add(warmNodeLabel(namespace, name));
      warm.set(nodeName, set);
    }
  }
  for (const node of nodes) {
    const nodeName = node.metadata?.name ?? "";
    const labels = node.metadata?.labels ?? {};
    const wanted = warm.get(nodeName) ?? new Set<string>();
    const labelPatch: Record<string, string | null> = {};
    for (const key of wanted) if (labels[key] !== WARM_LABEL_VALUE) labelPatch[key] = WARM_LABEL_VALUE;
    for (const key of Object.keys(labels))
      if (key.startsWith(WARM_LABEL_PREFIX) && !wanted.has(key)) labelPatch[key] = null;
    const labelsChange = Object.keys(labelPatch).length > 0;
    // A node not Ready yet is planned nothing, so nothing is open on it; that is not warm. A
    // kubelet registers the Node first and reports Ready after, so it keeps the taint until then.
    const removeTaint =
      deps.config.warmingTaint && hasWarmingTaint(node) && isNodeReady(node) && !open.has(nodeName);
    if (!labelsChange && !removeTaint) continue;
    if (!removeTaint) {
      await deps.nodeClient.patch(nodeName, { metadata: { labels: labelPatch } });
      deps.log.info({ node: nodeName, labels: labelPatch }, "warm labels updated");
      continue;
    }
    // One patch for labels and taint: resourceVersion guards against dropping a taint someone
    // added meanwhile (409 → retried), and a separate label patch first would make it stale.
    const taints = (node.spec?.taints ?? []).filter((t) => t.key !== WARMING_TAINT_KEY);
    await deps.nodeClient.patch(nodeName, {
      metadata: {
        resourceVersion: node.metadata?.resourceVersion,
        ...(labelsChange ? { labels: labelPatch } : {}),
      },
      spec: { taints },
    });
    if (labelsChange) deps.log.info({ node: nodeName, labels: labelPatch }, "warm labels updated");
    const failures = failed.get(nodeName) ?? [];
    void deps.events.event(node, {
      type: failures.length > 0 ? "Warning" : "Normal",
      reason: "WarmingComplete",
      action: "Prewarm",
      note:
        failures.length > 0
          ? `removed taint ${WARMING_TAINT_KEY}; images that could not be placed or pulled: ${failures.join(", ")}`
          : `removed taint ${WARMING_TAINT_KEY}: every planned image is present`,
    });
    deps.log.info({ node: nodeName, failures }, "warming taint removed");
  }
}

/** One Warning event per new skipped or refused node of a ModelImage (not one per pass). */
async function reportProblems(
  plan: PrewarmPlan,
  modelImages: ModelImage[],
  reported: Set<string>,
  deps: PrewarmReconcilerDeps,
): Promise<void> {
  const current = new Set<string>();
  for (const mi of modelImages) {
    const miKey = `${mi.metadata.namespace}/${mi.metadata.name}`;
    for (const v of plan.modelImages.get(miKey) ?? []) {
      for (const d of v.decisions) {
        if ((d.state !== "skipped" && d.state !== "refused") || !d.reason) continue;
        const key = `${miKey}|${v.variant}|${d.node}|${d.reason}`;
        current.add(key);
        if (reported.has(key)) continue;
        reported.add(key);
        void deps.events.event(mi, {
          type: "Warning",
          reason: d.reason,
          action: "Prewarm",
          note: `variant ${v.variant}: ${d.message ?? d.reason}`,
        });
      }
    }
  }
  for (const key of reported) if (!current.has(key)) reported.delete(key);
}
