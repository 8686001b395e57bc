/**
 * The status report: a pure function of a cluster snapshot. Per ModelImage its conditions, lag,
 * variants (image, digests, size) and a node × variant matrix of warm state. This shape is the
 * `-o json` output, documented in README.md ("stowage status"); add fields, never rename them.
 */
import {
  ConditionTypes,
  type ModelImage,
  normaliseImage,
  shortDigest,
  variantsOf,
} from "../api/modelImage.ts";
import { type FanoutSourceBytes, imageStatusOf, type NodeCache, type PeerFailure } from "../api/nodeCache.ts";
import type { Condition } from "../kube/conditions.ts";
import type { ClusterSnapshot, StatusEvent } from "./gather.ts";

export const STATUS_REPORT_KIND = "StowageStatus";
export const STATUS_REPORT_VERSION = "v1";

export type WarmState = "present" | "pulling" | "pending" | "failed" | "skipped" | "removing";

export interface ConditionSummary {
  status: "True" | "False" | "Unknown";
  reason: string;
  message: string;
}

export interface VariantReport {
  name: string;
  image: string;
  sourceDigest?: string;
  cacheDigest?: string;
  platforms: string[];
  sizeBytes?: number;
  syncedAt?: string;
  /** Upstream moved and the cache does not have it yet, since then. */
  upstreamChangedAt?: string;
  nodes?: { desired: number; ready: number; pulling: number; failed: number; skipped: number };
}

export interface NodeCell {
  node: string;
  variant: string;
  state: WarmState;
  digest?: string;
  /** Bytes pulled so far (pulling) or held (present), as the agent reports them. */
  bytes?: number;
  sizeBytes?: number;
  /** 0-100, when both bytes and size are known. */
  percent?: number;
  reason?: string;
  message?: string;
  /** Present with fan-out: the image's fanned-out blob bytes by where they came from (`cache` or a node). */
  sources?: FanoutSourceBytes[];
}

/** A node's own fan-out report: the peers its agent stopped reading from (planned fan-out). */
export interface NodeReport {
  node: string;
  /** `node` here is the peer; the controller plans no piece from it for this node's images meanwhile. */
  peerFailures: PeerFailure[];
}

export interface ModelImageReport {
  namespace: string;
  name: string;
  ready: ConditionSummary;
  synced?: ConditionSummary;
  prewarmed?: ConditionSummary;
  stalled?: ConditionSummary;
  /** When the cache started lagging upstream, and for how long (seconds) at report time. */
  lag?: { since: string; seconds: number };
  /** NODES column: ready/desired. */
  nodes?: string;
  variants: VariantReport[];
  /** Sorted by node, then variant. */
  cells: NodeCell[];
}

export interface StatusReport {
  kind: typeof STATUS_REPORT_KIND;
  version: typeof STATUS_REPORT_VERSION;
  generatedAt: string;
  modelImages: ModelImageReport[];
  /** Nodes with something of their own to report (peer failures); absent when none has. */
  nodes?: NodeReport[];
}

const unknownCondition: ConditionSummary = { status: "Unknown", reason: "NotObserved", message: "" };

export function buildReport(snapshot: ClusterSnapshot): StatusReport {
  const nodes = nodeReports(snapshot.nodeCaches);
  return {
    kind: STATUS_REPORT_KIND,
    version: STATUS_REPORT_VERSION,
    generatedAt: new Date(snapshot.takenAt).toISOString(),
    modelImages: snapshot.modelImages.map((mi) => modelImageReport(mi, snapshot)),
    ...(nodes.length > 0 ? { nodes } : {}),
  };
}

function nodeReports(nodeCaches: readonly NodeCache[]): NodeReport[] {
  return nodeCaches
    .filter((nc) => (nc.status?.peerFailures ?? []).length > 0)
    .map((nc) => ({
      node: nc.spec?.nodeName ?? nc.metadata.name ?? "",
      peerFailures: [...(nc.status?.peerFailures ?? [])].sort((a, b) => (a.node < b.node ? -1 : 1)),
    }))
    .sort((a, b) => (a.node < b.node ? -1 : 1));
}

function modelImageReport(mi: ModelImage, snapshot: ClusterSnapshot): ModelImageReport {
  const namespace = mi.metadata.namespace ?? "";
  const name = mi.metadata.name ?? "";
  const conditions = mi.status?.conditions ?? [];
  const statusVariants = mi.status?.variants ?? [];
  const variants: VariantReport[] = variantsOf(mi.spec ?? {}).map((v) => {
    const observed = statusVariants.find((s) => s.name === v.name);
    return dropUndefined({
      name: v.name,
      image: observed?.image ?? safeNormalise(v.image),
      sourceDigest: observed?.sourceDigest,
      cacheDigest: observed?.cacheDigest,
      platforms: observed?.platforms ?? v.platforms ?? [],
      sizeBytes: observed?.sizeBytes,
      syncedAt: observed?.syncedAt,
      upstreamChangedAt: observed?.upstreamChangedAt,
      nodes: observed?.nodes,
    });
  });
  const lagSince =
    mi.status?.lagSince ??
    statusVariants
      .map((v) => v.upstreamChangedAt)
      .filter((t): t is string => !!t)
      .sort()[0];
  const lagStart = lagSince ? Date.parse(lagSince) : Number.NaN;
  return dropUndefined({
    namespace,
    name,
    ready: summary(find(conditions, ConditionTypes.Ready)) ?? unknownCondition,
    synced: summary(find(conditions, ConditionTypes.Synced)),
    prewarmed: summary(find(conditions, ConditionTypes.Prewarmed)),
    stalled: stalledSummary(find(conditions, ConditionTypes.Stalled)),
    lag:
      lagSince && !Number.isNaN(lagStart)
        ? { since: lagSince, seconds: Math.max(0, Math.round((snapshot.takenAt - lagStart) / 1000)) }
        : undefined,
    nodes: mi.status?.nodes,
    variants,
    cells: cellsFor(mi, variants, snapshot),
  });
}

/** Warm state of every node that holds, pulls or was refused one of this ModelImage's variants. */
function cellsFor(mi: ModelImage, variants: VariantReport[], snapshot: ClusterSnapshot): NodeCell[] {
  const namespace = mi.metadata.namespace;
  const name = mi.metadata.name;
  const cells = new Map<string, NodeCell>();
  for (const nc of snapshot.nodeCaches) {
    const node = nc.spec?.nodeName ?? nc.metadata.name ?? "";
    for (const entry of nc.spec?.images ?? []) {
      for (const requester of entry.requestedBy ?? []) {
        if (requester.namespace !== namespace || requester.name !== name) continue;
        const variant = requester.variant ?? variants[0]?.name ?? "default";
        cells.set(`${node}|${variant}`, cellFromNodeCache(nc, node, variant, entry.digest, entry.sizeBytes));
      }
    }
  }
  // Nodes the planner skipped or refused are not in any NodeCache spec: its Warning events and the
  // Prewarmed message name them ("<Reason>: node <name>: <why>").
  for (const problem of plannerProblems(mi, snapshot.events)) {
    const variant =
      problem.variant ??
      (variants.length === 1
        ? variants[0].name
        : variants.find((v) => problem.message.includes(v.image))?.name);
    if (!variant) continue;
    const key = `${problem.node}|${variant}`;
    if (cells.has(key)) continue;
    cells.set(key, {
      node: problem.node,
      variant,
      state: "skipped",
      reason: problem.reason,
      message: problem.message,
    });
  }
  return [...cells.values()].sort(
    (a, b) => a.node.localeCompare(b.node) || a.variant.localeCompare(b.variant),
  );
}

function cellFromNodeCache(
  nc: NodeCache,
  node: string,
  variant: string,
  digest: string,
  sizeBytes: number | undefined,
): NodeCell {
  const observed = imageStatusOf(nc, digest);
  const state: WarmState = observed ? (observed.state.toLowerCase() as WarmState) : "pending";
  const bytes = observed?.bytes;
  const percent =
    bytes !== undefined && sizeBytes ? Math.min(100, Math.floor((bytes / sizeBytes) * 100)) : undefined;
  return dropUndefined({
    node,
    variant,
    state,
    digest,
    bytes,
    sizeBytes,
    percent: state === "present" ? 100 : percent,
    reason: observed?.reason,
    message: observed?.message,
    sources: state === "present" && observed?.sources?.length ? observed.sources : undefined,
  });
}

/** Reasons for which the planner leaves a node out of its NodeCache spec. */
const PLANNER_SKIP_REASONS = ["CudaDriverTooOld", "PlatformNotFound", "QuotaExceeded"];

interface PlannerProblem {
  node: string;
  variant?: string;
  reason: string;
  message: string;
}

function plannerProblems(mi: ModelImage, events: readonly StatusEvent[]): PlannerProblem[] {
  const problems: PlannerProblem[] = [];
  const nodePattern = /node ([a-z0-9][-a-z0-9.]*[a-z0-9]|[a-z0-9])\b:?/;
  for (const event of events) {
    if (!event.reason || !PLANNER_SKIP_REASONS.includes(event.reason)) continue;
    const regarding = event.regarding ?? {};
    if (regarding.kind !== "ModelImage" || regarding.name !== mi.metadata.name) continue;
    if (regarding.namespace !== mi.metadata.namespace) continue;
    const note = event.note ?? "";
    const node = nodePattern.exec(note)?.[1];
    if (!node) continue;
    const variant = /^variant ([a-z0-9-]+): /.exec(note)?.[1];
    problems.push({
      node,
      variant,
      reason: event.reason,
      message: note.replace(/^variant [a-z0-9-]+: /, ""),
    });
  }
  const prewarmed = find(mi.status?.conditions ?? [], ConditionTypes.Prewarmed)?.message ?? "";
  for (const part of prewarmed.split("; ")) {
    const reason = PLANNER_SKIP_REASONS.find((r) => part.startsWith(`${r}: `));
    if (!reason) continue;
    const message = part.slice(reason.length + 2);
    const node = nodePattern.exec(message)?.[1];
    if (node) problems.push({ node, reason, message });
  }
  return problems;
}

function find(conditions: readonly Condition[], type: string): Condition | undefined {
  return conditions.find((c) => c.type === type);
}

function summary(condition: Condition | undefined): ConditionSummary | undefined {
  if (!condition) return undefined;
  return { status: condition.status, reason: condition.reason, message: condition.message };
}

function stalledSummary(condition: Condition | undefined): ConditionSummary | undefined {
  return condition?.status === "True" ? summary(condition) : undefined;
}

function safeNormalise(image: string): string {
  try {
    return normaliseImage(image);
  } catch {
    return image;
  }
}

export { shortDigest };

function dropUndefined<T extends object>(value: T): T {
  for (const key of Object.keys(value) as (keyof T)[]) if (value[key] === undefined) delete value[key];
  return value;
}
