/**
 * Pre-warm progress of one ModelImage, for its status: per-variant node counts and the
 * `Prewarmed` condition. Pure; the ModelImage reconciler calls it with its informer caches and,
 * when the planner runs in the same process, the planner's latest plan:
 *
 *   const pw = prewarmStatus(mi, nodes, nodeCaches, prewarm.plan());
 *   status.variants[i].nodes = pw.variants[variant.name];
 *   conditions = setCondition(conditions, pw.prewarmed, now);
 *
 * With a plan, skipped (CUDA, platform) and refused (disk budget) nodes are known; without one the
 * counts come from the NodeCache specs alone and every matching Ready node counts as desired.
 */
import {
  ConditionReasons,
  ConditionTypes,
  type ModelImage,
  type ModelImageStatus,
  type NodeCounts,
  statusColumns,
  variantsOf,
  withDefaults,
} from "../../api/modelImage.ts";
import { imageStatusOf, type NodeCache, type NodeImageState, NodeImageStates } from "../../api/nodeCache.ts";
import { type ConditionInput, getCondition, setCondition } from "../../kube/conditions.ts";
import { objectKey } from "../../kube/controller.ts";
import { selectorMatches } from "../modelimage/plan.ts";
import { acceptsNewImages, type PlannerNode } from "./nodes.ts";
import type { NodeDecision, PrewarmPlan } from "./plan.ts";
import { entriesByRequester, requesterKey } from "./requesters.ts";

export interface PrewarmStatus {
  /** Node counts by variant name (every variant of the spec has an entry). */
  variants: Record<string, NodeCounts>;
  /** The `Prewarmed` condition (observedGeneration set from the object). */
  prewarmed: ConditionInput;
  /** Nodes skipped or refused, with why, for events and messages. */
  problems: NodeDecision[];
}

/**
 * A status is worked out for every ModelImage at each pass of the status controller and at each
 * metrics scrape, over the same few NodeCaches: they are indexed once per list (by node, here)
 * and once per object (by requester, requesters.ts), not scanned per ModelImage.
 */
const byNodeMemo = new WeakMap<readonly NodeCache[], Map<string, NodeCache>>();
function nodeCachesByNode(nodeCaches: readonly NodeCache[]): Map<string, NodeCache> {
  let found = byNodeMemo.get(nodeCaches);
  if (!found) {
    found = new Map(nodeCaches.map((nc) => [nc.spec?.nodeName || (nc.metadata.name ?? ""), nc]));
    byNodeMemo.set(nodeCaches, found);
  }
  return found;
}

const zero = (): NodeCounts => ({ desired: 0, ready: 0, pulling: 0, failed: 0, skipped: 0 });

export function prewarmStatus(
  mi: ModelImage,
  nodes: readonly PlannerNode[],
  nodeCaches: readonly NodeCache[],
  plan?: PrewarmPlan,
): PrewarmStatus {
  const key = objectKey(mi);
  const spec = withDefaults(mi.spec);
  const byNode = nodeCachesByNode(nodeCaches);
  const variants: Record<string, NodeCounts> = {};
  const problems: NodeDecision[] = [];
  const generation = mi.metadata.generation;
  const condition = (status: "True" | "False", reason: string, message: string): ConditionInput => ({
    type: ConditionTypes.Prewarmed,
    status,
    reason,
    message,
    ...(generation !== undefined ? { observedGeneration: generation } : {}),
  });
  if (!spec.prewarm.enabled) {
    for (const v of variantsOf(mi.spec)) variants[v.name] = zero();
    return {
      variants,
      problems,
      prewarmed: condition(
        "True",
        ConditionReasons.PrewarmDisabled,
        "prewarm.enabled is false: nothing to wait for",
      ),
    };
  }
  const countState = (counts: NodeCounts, state: NodeImageState | undefined) => {
    if (state === NodeImageStates.Present) counts.ready++;
    else if (state === NodeImageStates.Failed) counts.failed++;
    else counts.pulling++;
  };
  const uncached: string[] = [];
  const planned = plan?.modelImages.get(key);
  for (const variant of variantsOf(mi.spec)) {
    const counts = zero();
    variants[variant.name] = counts;
    const cached = Boolean(mi.status?.variants?.find((v) => v.name === variant.name)?.cacheDigest);
    if (!cached) {
      uncached.push(variant.name);
      continue;
    }
    // A plan made before this variant was cached (or before the ModelImage existed) is stale for it.
    const variantPlan = planned?.find((v) => v.variant === variant.name && v.cached);
    if (variantPlan) {
      for (const d of variantPlan.decisions) {
        if (d.state === "skipped") {
          counts.skipped++;
          problems.push(d);
          continue;
        }
        counts.desired++;
        if (d.state === "refused") {
          counts.failed++;
          problems.push(d);
        } else if (d.state === "planned" && d.digest) {
          countState(counts, imageStatusOf(byNode.get(d.node), d.digest)?.state);
        }
      }
      // Held back by the rollout: desired, not yet pulling.
      if (variantPlan.pending?.state === "waiting") counts.desired += variantPlan.pending.nodes.length;
      continue;
    }
    for (const node of nodes) {
      const name = node.metadata?.name ?? "";
      const nc = byNode.get(name);
      const entry = nc ? entriesByRequester(nc).get(requesterKey(key, variant.name))?.[0] : undefined;
      const matches = selectorMatches(variant.nodeSelector, node.metadata?.labels) && acceptsNewImages(node);
      if (!entry && !matches) continue;
      counts.desired++;
      if (entry) countState(counts, imageStatusOf(nc, entry.digest)?.state);
    }
  }
  const total = Object.values(variants).reduce(
    (sum, c) => ({
      desired: sum.desired + c.desired,
      ready: sum.ready + c.ready,
      pulling: sum.pulling + c.pulling,
      failed: sum.failed + c.failed,
      skipped: sum.skipped + c.skipped,
    }),
    zero(),
  );
  const skippedNote = describeProblems(problems);
  if (uncached.length > 0) {
    return {
      variants,
      problems,
      prewarmed: condition(
        "False",
        ConditionReasons.Syncing,
        `waiting for the cache to hold variant(s) ${uncached.join(", ")} before pre-pulling`,
      ),
    };
  }
  const target = spec.prewarm.minReadyNodes ?? total.desired;
  const summary = `${total.ready}/${total.desired} nodes ready (${total.pulling} pulling, ${total.failed} failed, ${total.skipped} skipped)`;
  if (total.ready >= target) {
    const why =
      spec.prewarm.minReadyNodes !== undefined
        ? `minReadyNodes ${target} reached`
        : total.desired === 0
          ? "no Ready node matches the variants' node selectors"
          : "every matching node is warm";
    return {
      variants,
      problems,
      prewarmed: condition("True", ConditionReasons.NodesWarm, `${why}: ${summary}${skippedNote}`),
    };
  }
  const firstRefused = problems.find((p) => p.state === "refused");
  const reason =
    total.pulling > 0 || total.desired - total.failed > total.ready
      ? ConditionReasons.NodesPulling
      : (firstRefused?.reason ?? (total.desired === 0 ? "NoMatchingNodes" : "PullFailed"));
  return {
    variants,
    problems,
    prewarmed: condition("False", reason, `need ${target} ready: ${summary}${skippedNote}`),
  };
}

function describeProblems(problems: readonly NodeDecision[]): string {
  if (problems.length === 0) return "";
  const shown = problems.slice(0, 3).map((p) => `${p.reason}: ${p.message}`);
  const more = problems.length > 3 ? `; and ${problems.length - 3} more` : "";
  return `; ${shown.join("; ")}${more}`;
}

/** `ready/desired` over the variants, for the NODES column. */
export function nodesColumn(variants: Record<string, NodeCounts>): string {
  const counts = Object.values(variants);
  return `${counts.reduce((s, c) => s + c.ready, 0)}/${counts.reduce((s, c) => s + c.desired, 0)}`;
}

/** ModelImage keys (`ns/name`) a NodeCache change concerns: every requester of its spec images. */
export function mapNodeCacheToModelImages(nc: NodeCache): string[] {
  const keys = new Set<string>();
  for (const image of nc.spec?.images ?? [])
    for (const r of image.requestedBy ?? []) keys.add(`${r.namespace}/${r.name}`);
  return [...keys].sort();
}

/** kstatus: Ready is True only when the cache is in sync and the nodes are warm. */
export function readyFrom(synced: ConditionInput | undefined, prewarmed: ConditionInput): boolean {
  return synced?.status === "True" && prewarmed.status === "True";
}

/**
 * `status` with the pre-warm part folded in: `variants[].nodes`, the NODES column, `Prewarmed`,
 * and `Ready` = Synced AND Prewarmed (Ready is left alone while not Synced or suspended: the
 * ModelImage reconciler's reason stands). `Reconciling` is True with reason NodesPulling while
 * nodes pull and no copy runs. Pure and idempotent, so the ModelImage reconciler (after a sync)
 * and the pre-warm status pass (after a NodeCache change) compute the same status and a steady
 * state writes nothing.
 */
export function withPrewarmStatus(
  status: ModelImageStatus | undefined,
  mi: ModelImage,
  pw: PrewarmStatus,
  now: number,
): ModelImageStatus {
  const next: ModelImageStatus = { ...status };
  next.variants = (status?.variants ?? []).map((v) =>
    pw.variants[v.name] ? { ...v, nodes: pw.variants[v.name] } : v,
  );
  const columns = statusColumns(next.variants);
  delete next.nodes;
  if (columns.nodes) next.nodes = columns.nodes;
  let conditions = setCondition(status?.conditions, pw.prewarmed, now);
  const generation = mi.metadata.generation;
  const set = (type: string, value: "True" | "False", reason: string, message: string) => {
    conditions = setCondition(
      conditions,
      {
        type,
        status: value,
        reason,
        message,
        ...(generation !== undefined ? { observedGeneration: generation } : {}),
      },
      now,
    );
  };
  if (!mi.spec.suspend) {
    const synced = getCondition(conditions, ConditionTypes.Synced);
    if (synced?.status === "True") {
      if (pw.prewarmed.status === "True")
        set(
          ConditionTypes.Ready,
          "True",
          ConditionReasons.Ready,
          `${synced.message}; ${pw.prewarmed.message}`,
        );
      else set(ConditionTypes.Ready, "False", pw.prewarmed.reason, pw.prewarmed.message);
    }
    const reconciling = getCondition(conditions, ConditionTypes.Reconciling);
    if (reconciling?.reason !== ConditionReasons.Syncing) {
      if (pw.prewarmed.status === "False" && pw.prewarmed.reason === ConditionReasons.NodesPulling)
        set(ConditionTypes.Reconciling, "True", ConditionReasons.NodesPulling, pw.prewarmed.message);
      else if (reconciling?.reason === ConditionReasons.NodesPulling)
        set(ConditionTypes.Reconciling, "False", ConditionReasons.Idle, "no sync in progress");
    }
  }
  next.conditions = conditions;
  return next;
}
