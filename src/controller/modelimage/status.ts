/**
 * ModelImage status from what a reconcile observed: the upstream digest it saw, the digest the
 * cache answered (HEAD) or the copy pushed, and the errors it met. Timestamps move only when
 * something changed (or `lastCheckedAt` got older than its resolution), so an unchanged
 * check computes the status already stored and `writeStatus` sends nothing.
 */
import {
  ConditionReasons,
  ConditionTypes,
  type ModelImage,
  type ModelImageStatus,
  type ModelImageVariant,
  statusColumns,
  type VariantStatus,
} from "../../api/modelImage.ts";
import { type Condition, getCondition, removeCondition, setCondition } from "../../kube/conditions.ts";
import { sameJson } from "../../kube/status.ts";
import { formatTime, parseTime } from "../../kube/time.ts";
import type { CopyResult } from "../../oci/copy.ts";
import type { Reason, StowageError } from "../../util/errors.ts";

/** Errors a person has to fix: not retried fast, re-checked at the sync interval. */
export const STALLED_REASONS: ReadonlySet<Reason> = new Set<Reason>([
  "AuthFailed",
  "AuthConfigInvalid",
  "ImageNotFound",
  "InvalidReference",
  "InvalidArgument",
  "PlatformNotFound",
  "Denied",
  "UnsupportedMediaType",
]);

export function isStalledReason(reason: Reason): boolean {
  return STALLED_REASONS.has(reason);
}

/** What one reconcile learned about one variant. */
export interface VariantOutcome {
  variant: ModelImageVariant;
  /** Normalised source reference (undefined when it does not parse). */
  image?: string;
  cacheImage?: string;
  /** The digest upstream serves now, when the check got that far. */
  upstreamDigest?: string;
  /** What the cache holds for this variant, as observed (HEAD or the copy's push). */
  cacheDigest?: string;
  platforms?: string[];
  sizeBytes?: number;
  /** The copy this reconcile ran (or joined). */
  copy?: CopyResult;
  /** Copy still to run: status written before it starts (Reconciling). */
  syncing?: boolean;
  noMatchingNodes: boolean;
  error?: StowageError;
}

export function variantLabel(outcome: Pick<VariantOutcome, "variant" | "image">): string {
  return `variant "${outcome.variant.name}" (${outcome.image ?? outcome.variant.image})`;
}

export function noMatchingNodesNote(outcome: Pick<VariantOutcome, "variant" | "image">): string {
  return `${variantLabel(outcome)}: no Ready node matches its nodeSelector (NoMatchingNodes), so every platform is mirrored`;
}

export interface StatusInput {
  mi: ModelImage;
  outcomes: VariantOutcome[];
  now: number;
  checkedAtResolutionMs: number;
}

/** The status a reconcile's observations give, starting from the stored one. */
export function statusFrom(previous: ModelImageStatus | undefined, input: StatusInput): ModelImageStatus {
  const { mi, outcomes, now } = input;
  const generation = mi.metadata.generation;
  const variants = outcomes.map((outcome) =>
    variantStatus(
      previous?.variants?.find((v) => v.name === outcome.variant.name),
      outcome,
      now,
      input.checkedAtResolutionMs,
    ),
  );

  let conditions: Condition[] = previous?.conditions ?? [];
  const failures = outcomes.filter((o) => o.error);
  const syncing = outcomes.filter((o) => o.syncing);
  const notes = outcomes.filter((o) => o.noMatchingNodes).map(noMatchingNodesNote);
  const condition = (type: string, status: Condition["status"], reason: string, message: string) => {
    conditions = setCondition(
      conditions,
      { type, status, reason, message, observedGeneration: generation },
      now,
    );
  };

  if (failures.length > 0) {
    const first = pickReason(failures);
    const message = failures.map((f) => `${variantLabel(f)}: ${f.error?.message}`).join("; ");
    condition(ConditionTypes.Synced, "False", first, message);
    condition(ConditionTypes.Ready, "False", first, message);
    const stalled = failures.filter((f) => f.error && isStalledReason(f.error.reason));
    if (stalled.length > 0) {
      condition(
        ConditionTypes.Stalled,
        "True",
        stalled[0].error!.reason,
        `${stalled.map((f) => `${variantLabel(f)}: ${f.error?.message}`).join("; ")}; re-checked every sync interval`,
      );
    } else {
      conditions = removeCondition(conditions, ConditionTypes.Stalled);
    }
  } else if (syncing.length > 0) {
    const message = `mirroring ${syncing.map(variantLabel).join(", ")} into the cache`;
    condition(ConditionTypes.Synced, "False", ConditionReasons.Syncing, message);
    condition(ConditionTypes.Ready, "False", ConditionReasons.Syncing, message);
    conditions = removeCondition(conditions, ConditionTypes.Stalled);
  } else {
    const message = [
      `the cache holds the upstream digest of ${outcomes.length === 1 ? "the variant" : `all ${outcomes.length} variants`}`,
      ...notes,
    ].join("; ");
    condition(ConditionTypes.Synced, "True", ConditionReasons.UpToDate, message);
    condition(ConditionTypes.Ready, "True", ConditionReasons.Ready, message);
    conditions = removeCondition(conditions, ConditionTypes.Stalled);
  }
  if (syncing.length > 0) {
    condition(
      ConditionTypes.Reconciling,
      "True",
      ConditionReasons.Syncing,
      `mirroring ${syncing.map(variantLabel).join(", ")} into the cache`,
    );
  } else {
    condition(ConditionTypes.Reconciling, "False", ConditionReasons.Idle, "no sync in progress");
  }

  return assemble(previous, generation, conditions, variants);
}

/** spec.suspend: Ready=False/Suspended, Synced left as it was, no traffic. */
export function suspendedStatus(
  previous: ModelImageStatus | undefined,
  mi: ModelImage,
  now: number,
): ModelImageStatus {
  const generation = mi.metadata.generation;
  const message =
    "spec.suspend is true: no upstream checks and no cache updates until it is false; cached images stay";
  let conditions = setCondition(
    previous?.conditions,
    {
      type: ConditionTypes.Ready,
      status: "False",
      reason: ConditionReasons.Suspended,
      message,
      observedGeneration: generation,
    },
    now,
  );
  conditions = setCondition(
    conditions,
    {
      type: ConditionTypes.Reconciling,
      status: "False",
      reason: ConditionReasons.Suspended,
      message,
      observedGeneration: generation,
    },
    now,
  );
  conditions = removeCondition(conditions, ConditionTypes.Stalled);
  return assemble(previous, generation, conditions, previous?.variants ?? []);
}

/**
 * A spec the API server accepted but the controller cannot honour (a duration past Go's limit):
 * Stalled with reason InvalidSpec naming the fields, Synced and Ready False, nothing mirrored.
 * A spec change queues the ModelImage again.
 */
export function invalidSpecStatus(
  previous: ModelImageStatus | undefined,
  mi: ModelImage,
  problems: { field: string; message: string }[],
  now: number,
): ModelImageStatus {
  const generation = mi.metadata.generation;
  const message = `${problems.map((p) => `${p.field}: ${p.message}`).join("; ")}; fix the spec`;
  let conditions = previous?.conditions;
  for (const type of [ConditionTypes.Stalled, ConditionTypes.Synced, ConditionTypes.Ready]) {
    conditions = setCondition(
      conditions,
      {
        type,
        status: type === ConditionTypes.Stalled ? "True" : "False",
        reason: ConditionReasons.InvalidSpec,
        message,
        observedGeneration: generation,
      },
      now,
    );
  }
  conditions = setCondition(
    conditions,
    {
      type: ConditionTypes.Reconciling,
      status: "False",
      reason: ConditionReasons.Idle,
      message: "no sync in progress",
      observedGeneration: generation,
    },
    now,
  );
  return assemble(previous, generation, conditions, previous?.variants ?? []);
}

function assemble(
  previous: ModelImageStatus | undefined,
  generation: number | undefined,
  conditions: Condition[],
  variants: VariantStatus[],
): ModelImageStatus {
  const columns = statusColumns(variants);
  const lagging = variants
    .map((v) => v.upstreamChangedAt)
    .filter((t): t is string => t !== undefined)
    .sort();
  const status: ModelImageStatus = {
    ...previous,
    observedGeneration: generation,
    conditions,
    variants,
  };
  delete status.digest;
  delete status.nodes;
  delete status.lagSince;
  if (columns.digest) status.digest = columns.digest;
  if (columns.nodes) status.nodes = columns.nodes;
  if (lagging.length > 0) status.lagSince = lagging[0];
  return status;
}

/** Cache trouble first (it blocks every variant), then stalled reasons, then the rest. */
function pickReason(failures: VariantOutcome[]): Reason {
  const reasons = failures.map((f) => f.error!.reason);
  return (
    reasons.find((r) => r === "CacheUnavailable") ?? reasons.find((r) => isStalledReason(r)) ?? reasons[0]
  );
}

function variantStatus(
  previous: VariantStatus | undefined,
  outcome: VariantOutcome,
  now: number,
  checkedAtResolutionMs: number,
): VariantStatus {
  const base: VariantStatus = { ...previous, name: outcome.variant.name };
  if (outcome.image) base.image = outcome.image;
  if (outcome.cacheImage) base.cacheImage = outcome.cacheImage;
  const cacheLacksUpstream =
    outcome.upstreamDigest !== undefined &&
    (outcome.error !== undefined || outcome.syncing === true) &&
    outcome.upstreamDigest !== previous?.sourceDigest;
  if (outcome.error || outcome.syncing) {
    // Not synced (yet): keep what the cache held; note when upstream moved away from it.
    if (cacheLacksUpstream) base.upstreamChangedAt = previous?.upstreamChangedAt ?? formatTime(now);
    return base;
  }
  const next: VariantStatus = {
    ...base,
    sourceDigest: outcome.upstreamDigest,
    cacheDigest: outcome.cacheDigest,
    platforms: outcome.platforms ?? previous?.platforms,
    sizeBytes: outcome.sizeBytes ?? previous?.sizeBytes,
  };
  delete next.upstreamChangedAt;
  const changedCache = outcome.cacheDigest !== previous?.cacheDigest;
  next.syncedAt = changedCache || !previous?.syncedAt ? formatTime(now) : previous.syncedAt;
  const { lastCheckedAt: _previousCheck, ...withoutCheck } = next;
  const { lastCheckedAt: _olderCheck, ...previousWithoutCheck } = previous ?? ({ name: "" } as VariantStatus);
  const lastChecked = parseTime(previous?.lastCheckedAt);
  const fresh = lastChecked !== undefined && now - lastChecked < checkedAtResolutionMs;
  next.lastCheckedAt =
    fresh && sameJson(withoutCheck, previousWithoutCheck) ? previous?.lastCheckedAt : formatTime(now);
  return next;
}

/** The Synced condition's message as stored, for "was this already said" checks. */
export function storedSyncedMessage(mi: ModelImage): string {
  return getCondition(mi.status?.conditions, ConditionTypes.Synced)?.message ?? "";
}
