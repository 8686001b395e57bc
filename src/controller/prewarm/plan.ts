/**
 * The pre-warm plan: from ModelImages (spec + the cache digests their status reports), Nodes,
 * the NodeCaches as they are (spec and the agents' status) and what the cache registry says
 * about each image, decide every node's NodeCache spec. Pure: the reconciler resolves images
 * first and passes a lookup; nothing here talks to a registry or the API.
 *
 * Order of decisions, per (ModelImage variant, node):
 *  1. selection: the variant's nodeSelector; nodes that are not Ready or are cordoned take no new
 *     images but keep what they were given (a short NotReady must not make the agent delete GBs);
 *  2. platform: the node's os/arch(/variant) child of the cached index (skipped when missing);
 *  3. CUDA: skipped when the node's driver supports an older CUDA than the image declares;
 *  4. disk budget per node: already planned images first, then higher priority; an image that does
 *     not fit is refused (QuotaExceeded) and never put in spec;
 *  5. rollout per ModelImage: at most `maxConcurrentNodes` nodes with one of its images in flight
 *     (planned and not yet Present or Failed); the other nodes wait.
 */
import { type ModelImage, normaliseImage, variantsOf, withDefaults } from "../../api/modelImage.ts";
import {
  type ImageRequester,
  imageStatusOf,
  type NodeCache,
  type NodeCacheImage,
  type NodeCacheSpec,
  NodeImageStates,
} from "../../api/nodeCache.ts";
import { objectKey } from "../../kube/controller.ts";
import { formatPlatform } from "../../oci/platforms.ts";
import { cacheRepository, parseReference } from "../../oci/reference.ts";
import type { Platform } from "../../oci/types.ts";
import { compareStrings } from "../../util/order.ts";
import { selectorMatches } from "../modelimage/plan.ts";
import type { PrewarmConfig } from "./config.ts";
import type { Resolution } from "./images.ts";
import {
  acceptsNewImages,
  cudaAtLeast,
  formatCuda,
  type NodeCuda,
  nodeCudaDriver,
  type PlannerNode,
  platformOf,
} from "./nodes.ts";
import { entriesByRequester, requesterKey } from "./requesters.ts";

const NOT_CACHED_MESSAGE = "the cache does not hold this variant yet";
/** A node's spec entries for a requester it has none for (shared: most pairs have none). */
const NO_ENTRIES: readonly NodeCacheImage[] = Object.freeze([]);

export const PrewarmReasons = {
  CudaDriverTooOld: "CudaDriverTooOld",
  PlatformNotFound: "PlatformNotFound",
  QuotaExceeded: "QuotaExceeded",
  /** Held back by maxConcurrentNodes. */
  RolloutWaiting: "RolloutWaiting",
} as const;

export type DecisionState =
  /** In the node's NodeCache spec. */
  | "planned"
  /** Will be planned when the rollout lets it. */
  | "waiting"
  /** The node cannot use this image (platform, CUDA driver); not desired. */
  | "skipped"
  /** Would not fit the node's disk budget: counted as failed, never in spec. */
  | "refused"
  /** The image could not be read from the cache yet; retried. */
  | "unresolved";

export interface NodeDecision {
  node: string;
  state: DecisionState;
  /** The single-platform digest for this node, when known. */
  digest?: string;
  reason?: string;
  message?: string;
}

export interface VariantPlan {
  variant: string;
  /** False when the variant's status has no cache digest yet: nothing can be planned. */
  cached: boolean;
  /** Every node the variant concerns, except those in `pending`. */
  decisions: NodeDecision[];
  /**
   * Nodes that want the variant but wait, as one group rather than a decision each: held back by
   * the rollout (state "waiting", RolloutWaiting), or (uncached variant) waiting for the cache
   * to hold it (state "unresolved", NotCached). At 2,000 ModelImages over 500 nodes a decision
   * object and message per waiting node was most of the controller's heap and of each pass's
   * garbage; node names here are the Node objects' own strings.
   */
  pending?: PendingNodes;
}

export interface PendingNodes {
  state: "waiting" | "unresolved";
  reason: string;
  message: string;
  nodes: string[];
}

/** The nodes of a variant plan in `state`, whether decided one by one or pending as a group. */
export function nodesInState(plan: VariantPlan, state: DecisionState): string[] {
  const nodes = plan.decisions.filter((d) => d.state === state).map((d) => d.node);
  if (plan.pending?.state === state) nodes.push(...plan.pending.nodes);
  return nodes;
}

export interface PrewarmPlan {
  /** Desired NodeCache spec by node name; only nodes with an image or an existing NodeCache. */
  specs: Map<string, NodeCacheSpec>;
  /** By ModelImage key (`ns/name`), its variants' decisions. */
  modelImages: Map<string, VariantPlan[]>;
}

export interface PlanInput {
  modelImages: readonly ModelImage[];
  nodes: readonly PlannerNode[];
  nodeCaches: ReadonlyMap<string, NodeCache>;
  /** The answer of ImageResolver.resolve, pre-fetched; undefined when not looked up yet. */
  lookup: (repository: string, digest: string, platform: Platform) => Resolution | undefined;
  config: PrewarmConfig;
  cacheEndpoint: string;
  /**
   * Pre-warm through the front: for variants the mirror has not finished (no cache digest in
   * status), the digest their image resolves to through the cache front, by normalised image.
   * Such a variant is planned at once; the front single-flights the upstream read.
   */
  throughDigests?: ReadonlyMap<string, string>;
}

/** A (cache repository, digest) the planner needs resolved for a platform. */
export interface ResolutionNeed {
  repository: string;
  digest: string;
  platform: Platform;
  /** Resolved through the cache front (the mirror has not stored it yet), not from the cache registry. */
  through: boolean;
}

interface Candidate {
  t: VariantTarget;
  node: string;
  digest: string;
  sizeBytes: number;
  /** Already in the node's spec for this requester. */
  planned: boolean;
  /** Set when the budget refused it, or "waiting" when the rollout held it back. */
  outcome?: NodeDecision | "waiting";
}

interface UncachedVariant {
  variant: string;
  selector: Record<string, string> | undefined;
}

interface VariantTarget {
  mi: ModelImage;
  miKey: string;
  variant: string;
  image: string;
  cacheRepository: string;
  cacheDigest: string;
  selector: Record<string, string> | undefined;
  priority: number;
  maxConcurrentNodes: number;
  acceptsNew: boolean;
  /** Planned before the mirror finished, at the digest the front resolved. */
  through: boolean;
}

/** The images of pre-warming variants whose status has no cache digest yet (normalised). */
export function imagesAwaitingMirror(modelImages: readonly ModelImage[]): string[] {
  const images = new Set<string>();
  for (const mi of modelImages) {
    if (mi.metadata.deletionTimestamp || !withDefaults(mi.spec).prewarm.enabled) continue;
    for (const variant of variantsOf(mi.spec)) {
      const status = mi.status?.variants?.find((v) => v.name === variant.name);
      if (status?.cacheDigest) continue;
      try {
        images.add(normaliseImage(status?.image ?? variant.image));
      } catch {
        // an invalid reference is the ModelImage reconciler's to report
      }
    }
  }
  return [...images];
}

/** The variants that pre-warm: prewarm enabled and a cache digest in status (or one resolved through the front). */
function variantTargets(
  modelImages: readonly ModelImage[],
  throughDigests: ReadonlyMap<string, string> = new Map(),
): {
  targets: VariantTarget[];
  uncached: Map<string, UncachedVariant[]>;
} {
  const targets: VariantTarget[] = [];
  const uncached = new Map<string, UncachedVariant[]>();
  for (const mi of modelImages) {
    if (mi.metadata.deletionTimestamp) continue;
    const spec = withDefaults(mi.spec);
    if (!spec.prewarm.enabled) continue;
    const miKey = objectKey(mi);
    for (const variant of variantsOf(mi.spec)) {
      const status = mi.status?.variants?.find((v) => v.name === variant.name);
      let image: string;
      try {
        image = normaliseImage(status?.image ?? variant.image);
      } catch {
        continue; // an invalid reference is the ModelImage reconciler's to report
      }
      const throughDigest = status?.cacheDigest ? undefined : throughDigests.get(image);
      if (!status?.cacheDigest && !throughDigest) {
        uncached.set(miKey, [
          ...(uncached.get(miKey) ?? []),
          { variant: variant.name, selector: variant.nodeSelector },
        ]);
        continue;
      }
      targets.push({
        mi,
        miKey,
        variant: variant.name,
        image,
        cacheRepository: cacheRepository(parseReference(image)),
        cacheDigest: status?.cacheDigest ?? (throughDigest as string),
        selector: variant.nodeSelector,
        priority: spec.prewarm.priority,
        maxConcurrentNodes: spec.prewarm.maxConcurrentNodes,
        acceptsNew: !spec.suspend,
        through: !status?.cacheDigest,
      });
    }
  }
  return { targets, uncached };
}

/** What resolutions a plan over this input needs (the reconciler fetches them before planning). */
export function resolutionNeeds(
  modelImages: readonly ModelImage[],
  nodes: readonly PlannerNode[],
  throughDigests?: ReadonlyMap<string, string>,
): ResolutionNeed[] {
  const needs = new Map<string, ResolutionNeed>();
  const matching = nodeMatcher(nodes);
  const memo = nodeFactsMemo();
  for (const t of variantTargets(modelImages, throughDigests).targets) {
    for (const platform of memo.platforms(matching(t.selector))) {
      const key = `${t.cacheRepository}@${t.cacheDigest}#${formatPlatform(platform)}`;
      needs.set(key, { repository: t.cacheRepository, digest: t.cacheDigest, platform, through: t.through });
    }
  }
  return [...needs.values()];
}

/** What a plan pass reads from a node, worked out once per node and pass. */
interface NodeFacts {
  platform: Platform | undefined;
  /** `formatPlatform(platform)`, or "" without one. */
  platformKey: string;
  driver: NodeCuda | undefined;
  acceptsNew: boolean;
}

/**
 * Each node's facts, memoised for one pass: at 2,000 ModelImages over 125 nodes a pass visits a
 * quarter of a million (variant, node) pairs, and re-deriving the platform, driver and lookup key
 * for each pair made tens of MB of short-lived strings per pass, the controller's peak resident
 * size (bench:controller). Distinct platforms per matched node list are kept too.
 */
function nodeFactsMemo(): {
  facts(node: PlannerNode): NodeFacts;
  platforms(nodes: readonly PlannerNode[]): readonly Platform[];
} {
  const byNode = new Map<PlannerNode, NodeFacts>();
  const byList = new Map<readonly PlannerNode[], Platform[]>();
  const facts = (node: PlannerNode): NodeFacts => {
    let found = byNode.get(node);
    if (!found) {
      const platform = platformOf(node);
      found = {
        platform,
        platformKey: platform ? formatPlatform(platform) : "",
        driver: nodeCudaDriver(node),
        acceptsNew: acceptsNewImages(node),
      };
      byNode.set(node, found);
    }
    return found;
  };
  return {
    facts,
    platforms(nodes) {
      let found = byList.get(nodes);
      if (!found) {
        const distinct = new Map<string, Platform>();
        for (const node of nodes) {
          const { platform, platformKey } = facts(node);
          if (platform && !distinct.has(platformKey)) distinct.set(platformKey, platform);
        }
        found = [...distinct.values()];
        byList.set(nodes, found);
      }
      return found;
    },
  };
}

/**
 * selectorMatches over one pass's nodes, each distinct selector evaluated once: thousands of
 * variants share a handful of selectors, and matching every variant against every node's labels
 * was most of a pass at 2,000 ModelImages and 500 nodes. Nodes keep their order.
 */
function nodeMatcher(
  nodes: readonly PlannerNode[],
): (selector: Record<string, string> | undefined) => readonly PlannerNode[] {
  const bySelector = new Map<string, PlannerNode[]>();
  return (selector) => {
    const key = JSON.stringify(
      Object.entries(selector ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    );
    let matched = bySelector.get(key);
    if (!matched) {
      matched = nodes.filter((node) => selectorMatches(selector, node.metadata?.labels));
      bySelector.set(key, matched);
    }
    return matched;
  };
}

export function planPrewarm(input: PlanInput): PrewarmPlan {
  const { targets, uncached } = variantTargets(input.modelImages, input.throughDigests);
  const modelImages = new Map<string, VariantPlan[]>();
  const variantPlan = (miKey: string, variant: string, cached: boolean): VariantPlan => {
    const list = modelImages.get(miKey) ?? [];
    modelImages.set(miKey, list);
    let found = list.find((v) => v.variant === variant);
    if (!found) {
      found = { variant, cached, decisions: [] };
      list.push(found);
    }
    return found;
  };
  const matching = nodeMatcher(input.nodes);
  const memo = nodeFactsMemo();
  // Nodes a variant will want once the cache holds it: open (they keep a warming taint meanwhile).
  for (const [miKey, variants] of uncached) {
    for (const v of variants) {
      const plan = variantPlan(miKey, v.variant, false);
      const nodes: string[] = [];
      for (const node of matching(v.selector))
        if (memo.facts(node).acceptsNew) nodes.push(node.metadata?.name ?? "");
      if (nodes.length > 0)
        plan.pending = { state: "unresolved", reason: "NotCached", message: NOT_CACHED_MESSAGE, nodes };
    }
  }

  // A node's NodeCache spec entries for a requester, from the per-object index (requesters.ts).
  const requestedEntries = (nodeName: string, requester: string): readonly NodeCacheImage[] => {
    const nc = input.nodeCaches.get(nodeName);
    return (nc && entriesByRequester(nc).get(requester)) || NO_ENTRIES;
  };

  // 1–3: selection, platform, CUDA, for one variant: its candidates, and with `plan` a decision
  // for each node it cannot use. Candidates are made per ModelImage and dropped once it is
  // decided: at 2,000 ModelImages over 125 nodes a pass has a quarter of a million pairs, and
  // holding them all until the end made each pass's peak (and the controller's).
  const candidatesOf = (t: VariantTarget, plan: VariantPlan | undefined): Candidate[] => {
    const out: Candidate[] = [];
    const requester = requesterKey(t.miKey, t.variant);
    // The variant's resolution per platform: one lookup per platform, not per node.
    const resolvedByPlatform = new Map<string, Resolution | undefined>();
    const nodes = matching(t.selector);
    // Indexed loops over a pass's pairs: `for...of` allocates an iterator result per element in
    // code V8 has not optimised, and this function runs a quarter of a million times a pass.
    for (let n = 0; n < nodes.length; n++) {
      const node = nodes[n];
      const nodeName = node.metadata?.name ?? "";
      const current = requestedEntries(nodeName, requester);
      const currentEntry = current[0];
      const facts = memo.facts(node);
      if (!(t.acceptsNew && facts.acceptsNew) && !currentEntry) continue;
      const platform = facts.platform;
      if (!platform) {
        plan?.decisions.push({
          node: nodeName,
          state: "skipped",
          reason: PrewarmReasons.PlatformNotFound,
          message: `node ${nodeName} has no kubernetes.io/os and kubernetes.io/arch labels`,
        });
        continue;
      }
      let resolved = resolvedByPlatform.get(facts.platformKey);
      if (!resolvedByPlatform.has(facts.platformKey)) {
        resolved = input.lookup(t.cacheRepository, t.cacheDigest, platform);
        resolvedByPlatform.set(facts.platformKey, resolved);
      }
      if (!resolved?.ok) {
        const platformMissing = resolved?.reason === PrewarmReasons.PlatformNotFound;
        if (currentEntry && !platformMissing) {
          // Keep what the node was given while the cache cannot be read.
          out.push(candidate(t, nodeName, currentEntry.digest, currentEntry.sizeBytes ?? 0, true));
          continue;
        }
        plan?.decisions.push({
          node: nodeName,
          state: platformMissing ? "skipped" : "unresolved",
          reason: platformMissing ? PrewarmReasons.PlatformNotFound : resolved?.reason,
          message: resolved?.message,
        });
        continue;
      }
      const need = resolved.image.cuda;
      const driver = facts.driver;
      if (need && driver && !(driver.cuda && cudaAtLeast(driver.cuda, need))) {
        plan?.decisions.push({
          node: nodeName,
          state: "skipped",
          digest: resolved.image.digest,
          reason: PrewarmReasons.CudaDriverTooOld,
          message: `node ${nodeName}: NVIDIA driver ${driver.driver} supports CUDA ${driver.cuda ? formatCuda(driver.cuda) : "< 10.0"}, the image needs CUDA ${formatCuda(need)}`,
        });
        continue;
      }
      const inSpec = current.some((e) => e.digest === resolved.image.digest);
      out.push(candidate(t, nodeName, resolved.image.digest, resolved.image.sizeBytes, inSpec));
    }
    return out;
  };

  // 4: disk budget per node that reports its capacity. Every candidate of a digest on a node
  // shares its fate (a digest is stored once), so each node's digests are ordered by their best
  // candidate (already planned, then priority, then name) and fitted in that order.
  const budgets = new Map<string, { budget: number; capacity: number; best: Map<string, Candidate> }>();
  for (const [nodeName, nc] of input.nodeCaches) {
    const capacity = nc.status?.imageFs?.capacityBytes;
    if (capacity !== undefined)
      budgets.set(nodeName, {
        budget: capacity * input.config.diskBudgetFraction,
        capacity,
        best: new Map(),
      });
  }
  if (budgets.size > 0)
    for (const t of targets)
      for (const c of candidatesOf(t, undefined)) {
        const best = budgets.get(c.node)?.best;
        if (!best) continue;
        const current = best.get(c.digest);
        if (!current || budgetOrder(c, current) < 0) best.set(c.digest, c);
      }
  /** node → digest → the refusal, for digests that do not fit. */
  const refusals = new Map<string, Map<string, { used: number; budget: number; capacity: number }>>();
  for (const [nodeName, { budget, capacity, best }] of budgets) {
    let used = 0;
    const refused = new Map<string, { used: number; budget: number; capacity: number }>();
    for (const c of [...best.values()].sort(budgetOrder)) {
      if (used + c.sizeBytes > budget) refused.set(c.digest, { used, budget, capacity });
      else used += c.sizeBytes;
    }
    if (refused.size > 0) refusals.set(nodeName, refused);
  }

  // 5: rollout per ModelImage, and each ModelImage's decisions (targets are grouped by it).
  const nodeState = (nodeName: string, digest: string) =>
    imageStatusOf(input.nodeCaches.get(nodeName), digest)?.state;
  const inFlight = (c: Candidate) => {
    const state = nodeState(c.node, c.digest);
    return state !== NodeImageStates.Present && state !== NodeImageStates.Failed;
  };
  const specEntries = new Map<string, Map<string, NodeCacheImage>>();
  for (let first = 0; first < targets.length; ) {
    const miKey = targets[first].miKey;
    let end = first;
    while (end < targets.length && targets[end].miKey === miKey) end++;
    const found: Candidate[] = [];
    const accepted: Candidate[] = [];
    for (let i = first; i < end; i++) {
      const t = targets[i];
      const candidates = candidatesOf(t, variantPlan(miKey, t.variant, true));
      for (let j = 0; j < candidates.length; j++) {
        const c = candidates[j];
        found.push(c);
        const refusal = refusals.get(c.node)?.get(c.digest);
        if (!refusal) {
          accepted.push(c);
          continue;
        }
        c.outcome = {
          node: c.node,
          state: "refused",
          digest: c.digest,
          reason: PrewarmReasons.QuotaExceeded,
          message: `node ${c.node}: ${t.image} (${c.sizeBytes} bytes) does not fit the disk budget of ${Math.floor(refusal.budget)} bytes (${input.config.diskBudgetFraction * 100}% of ${refusal.capacity}); ${refusal.used} bytes are planned`,
        };
      }
    }
    first = end;
    const max = targets[end - 1].maxConcurrentNodes;
    const busyNodes = new Set(accepted.filter((c) => c.planned && inFlight(c)).map((c) => c.node));
    const waitingNodes = new Set<string>();
    for (let i = 0; i < accepted.length; i++) if (accepted[i].planned) place(specEntries, accepted[i]);
    const fresh = accepted.filter((c) => !c.planned).sort((a, b) => compareStrings(a.node, b.node));
    for (let i = 0; i < fresh.length; i++) {
      const c = fresh[i];
      const alreadyOnNode = nodeState(c.node, c.digest) === NodeImageStates.Present;
      if (alreadyOnNode || busyNodes.has(c.node) || (busyNodes.size < max && !waitingNodes.has(c.node))) {
        if (!alreadyOnNode) busyNodes.add(c.node);
        place(specEntries, c);
        continue;
      }
      waitingNodes.add(c.node);
      c.outcome = "waiting";
      const plan = variantPlan(miKey, c.t.variant, true);
      plan.pending ??= {
        state: "waiting",
        reason: PrewarmReasons.RolloutWaiting,
        message: `waiting: ${busyNodes.size} node(s) pulling (maxConcurrentNodes ${max})`,
        nodes: [],
      };
      plan.pending.nodes.push(c.node);
    }
    // Decisions in the order the candidates were found: refused, or planned (waiting ones are in
    // their variant's pending group).
    for (let i = 0; i < found.length; i++) {
      const c = found[i];
      if (c.outcome === "waiting") continue;
      variantPlan(miKey, c.t.variant, true).decisions.push(
        c.outcome ?? { node: c.node, state: "planned", digest: c.digest },
      );
    }
  }

  // The specs.
  const specs = new Map<string, NodeCacheSpec>();
  const pullThrough = input.config.pullThroughHosts ?? [];
  for (const [nodeName] of input.nodeCaches)
    specs.set(nodeName, emptySpec(nodeName, input.cacheEndpoint, pullThrough));
  for (const [nodeName, entries] of specEntries) {
    const images = [...entries.values()];
    for (const e of images)
      e.requestedBy?.sort(
        (a, b) =>
          compareStrings(a.namespace, b.namespace) ||
          compareStrings(a.name, b.name) ||
          compareStrings(a.variant ?? "", b.variant ?? ""),
      );
    images.sort(
      (a, b) =>
        (b.priority ?? 0) - (a.priority ?? 0) ||
        compareStrings(a.image, b.image) ||
        compareStrings(a.digest, b.digest),
    );
    specs.set(nodeName, { ...emptySpec(nodeName, input.cacheEndpoint, pullThrough, images), images });
  }
  return { specs, modelImages };
}

function candidate(
  t: VariantTarget,
  node: string,
  digest: string,
  sizeBytes: number,
  planned: boolean,
): Candidate {
  // `outcome` from the start: set later on most candidates, a property added after creation gives
  // each of a pass's quarter of a million candidates a second allocation (its property store).
  return { t, node, digest, sizeBytes, planned, outcome: undefined };
}

/** A placed candidate into its node's spec entries: one entry per digest, with every requester. */
function place(specEntries: Map<string, Map<string, NodeCacheImage>>, c: Candidate): void {
  let entries = specEntries.get(c.node);
  if (!entries) {
    entries = new Map();
    specEntries.set(c.node, entries);
  }
  const { t } = c;
  const requester: ImageRequester = {
    namespace: t.mi.metadata.namespace ?? "",
    name: t.mi.metadata.name ?? "",
    variant: t.variant,
  };
  const entry = entries.get(c.digest);
  if (!entry) {
    entries.set(c.digest, {
      image: t.image,
      digest: c.digest,
      cacheRepository: t.cacheRepository,
      sizeBytes: c.sizeBytes,
      priority: t.priority,
      requestedBy: [requester],
    });
    return;
  }
  if (t.image < entry.image) entry.image = t.image;
  entry.priority = Math.max(entry.priority ?? 0, t.priority);
  entry.requestedBy?.push(requester);
}

/** The disk budget's order: already planned first, then higher priority, then by name. */
function budgetOrder(a: Candidate, b: Candidate): number {
  return (
    Number(b.planned) - Number(a.planned) ||
    b.t.priority - a.t.priority ||
    compareStrings(a.t.miKey, b.t.miKey) ||
    compareStrings(a.t.variant, b.t.variant)
  );
}

/**
 * A node's spec without images. mirrorHosts: the hosts of its images and the pull-through hosts,
 * so the kubelet's pulls of images nobody declared go through the cache front as well.
 */
function emptySpec(
  nodeName: string,
  cacheEndpoint: string,
  pullThroughHosts: readonly string[],
  images: readonly NodeCacheImage[] = [],
): NodeCacheSpec {
  const hosts = new Set([...pullThroughHosts, ...images.map((e) => parseReference(e.image).registry)]);
  return { nodeName, cacheEndpoint, mirrorHosts: [...hosts].sort(), images: [] };
}
