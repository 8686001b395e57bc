/**
 * The ModelImage reconciler: read the object and the nodes from the informers, check each
 * variant's upstream tag (one manifest HEAD) against what the cache holds (one HEAD), mirror
 * what differs, and write the status those observations give. Level-triggered: nothing is
 * remembered between passes that the status and the registries do not also say, except the
 * time of the last successful check per variant (for the lag metric; lost on restart, when
 * the status's lastCheckedAt takes its place).
 */
import {
  cacheReferenceProblems,
  type ModelImage,
  type ModelImageStatus,
  type ModelImageVariant,
  syncIntervalMs,
  unhonourableSpecProblems,
  variantsOf,
  withDefaults,
} from "../../api/modelImage.ts";
import type { NodeCache } from "../../api/nodeCache.ts";
import type { CredentialProvider } from "../../auth/index.ts";
import type { ObjectClient } from "../../kube/client.ts";
import { keepTransitionTimes } from "../../kube/conditions.ts";
import {
  budgetReason,
  done,
  type ReconcileContext,
  type Result,
  requeueAfter,
} from "../../kube/controller.ts";
import type { EventRecorder } from "../../kube/events.ts";
import { ensureFinalizer, isBeingDeleted, removeFinalizer } from "../../kube/finalizers.ts";
import { writeStatus } from "../../kube/status.ts";
import {
  formatReference,
  type ImageReference,
  manifestReference,
  parseReference,
} from "../../oci/reference.ts";
import type { CredentialLookup } from "../../oci/registry.ts";
import { retryAfterOf } from "../../oci/retry.ts";
import { verifyAndRepair } from "../../oci/verify.ts";
import type { Clock } from "../../util/clock.ts";
import { formatDuration } from "../../util/duration.ts";
import { asStowageError, StowageError } from "../../util/errors.ts";
import type { Logger } from "../../util/log.ts";
import type { ControllerConfig } from "../config.ts";
import type { PrewarmPlan } from "../prewarm/plan.ts";
import { prewarmStatus, withPrewarmStatus } from "../prewarm/status.ts";
import { FINALIZER, finalize } from "./deletion.ts";
import type { UpstreamSlots } from "./fairness.ts";
import {
  cacheImageName,
  cacheTarget,
  choosePlatformsForImage,
  type Node,
  nextSyncDelay,
  type PlatformChoice,
  platformKey,
  previousSyncAnswers,
} from "./plan.ts";
import type { Registries } from "./registries.ts";
import {
  invalidSpecStatus,
  isStalledReason,
  noMatchingNodesNote,
  type StatusInput,
  statusFrom,
  storedSyncedMessage,
  suspendedStatus,
  type VariantOutcome,
  variantLabel,
} from "./status.ts";
import type { Syncer } from "./sync.ts";

/** What the reconciler uses of the credentials component (src/auth `createCredentialProvider`). */
export type CredentialSource = Pick<CredentialProvider, "forModelImage" | "forCache" | "ensureRepository">;

/** Per variant: when its last upstream check succeeded, and whether the latest failed. */
export interface CheckRecord {
  lastSuccessAt?: number;
  failing: boolean;
  /** When the cached image was last read back and hashed (verifyCachedVariants). */
  lastVerifiedAt?: number;
}

export interface ReconcilerDeps {
  objects: ObjectClient<ModelImage>;
  getModelImage: (key: string) => ModelImage | undefined;
  allModelImages: () => ModelImage[];
  nodes: () => readonly Node[];
  config: ControllerConfig;
  credentials: CredentialSource;
  registries: Registries;
  syncer: Syncer;
  events: EventRecorder;
  clock: Clock;
  log: Logger;
  /** key → variant name → last check. */
  checks: Map<string, Map<string, CheckRecord>>;
  random?: () => number;
  /** The pre-warm planner's view, when it runs in this process: status then carries node counts and Prewarmed. */
  prewarm?: PrewarmSource;
  /** Per-upstream-host sync slots (fairness); without it a sync never waits for a host. */
  slots?: UpstreamSlots;
}

/**
 * A key parked for a full upstream host is woken when the host frees a slot; this requeue is
 * only the safety net should that wake-up be lost (a new leadership term, a restarted queue).
 */
const PARKED_RECHECK_MS = 60_000;

/** The upstream hosts a sync of `spec` talks to (references that do not parse talk to none). */
function upstreamHosts(spec: ModelImage["spec"]): string[] {
  const hosts: string[] = [];
  for (const variant of variantsOf(spec)) {
    try {
      hosts.push(parseReference(variant.image).registry);
    } catch {
      // reported as InvalidReference by the sync
    }
  }
  return hosts;
}

/** What the ModelImage status needs from the pre-warm planner. */
export interface PrewarmSource {
  nodeCaches: () => readonly NodeCache[];
  plan: () => PrewarmPlan | undefined;
}

/** `status` with the pre-warm counts and conditions folded in (unchanged without a planner). */
export function foldPrewarm(
  status: ModelImageStatus,
  mi: ModelImage,
  nodes: readonly Node[],
  prewarm: PrewarmSource | undefined,
  now: number,
): ModelImageStatus {
  if (!prewarm) return status;
  return withPrewarmStatus(status, mi, prewarmStatus(mi, nodes, prewarm.nodeCaches(), prewarm.plan()), now);
}

export function createReconciler(deps: ReconcilerDeps) {
  const deletion = {
    objects: deps.objects,
    allModelImages: deps.allModelImages,
    registries: deps.registries,
    config: deps.config,
    events: deps.events,
    clock: deps.clock,
    log: deps.log,
  };
  return async function reconcileModelImage(key: string, ctx: ReconcileContext): Promise<Result> {
    let askedForSlots = false;
    try {
      return await reconcileKey(key, ctx, () => {
        askedForSlots = true;
      });
    } finally {
      // A key that returned before asking for upstream slots leaves the parking spots, and hands
      // on any freed slot it was woken for (fairness.ts).
      if (!askedForSlots) deps.slots?.forget(key);
    }
  };

  async function reconcileKey(
    key: string,
    ctx: ReconcileContext,
    askingForSlots: () => void,
  ): Promise<Result> {
    let mi = deps.getModelImage(key);
    if (!mi) {
      deps.checks.delete(key);
      return done();
    }
    if (isBeingDeleted(mi)) {
      deps.checks.delete(key);
      return finalize(mi, deletion, ctx.log);
    }
    // The finalizer exists only to delete cache tags. When the cache keeps everything
    // (retainOnDelete, the default) there is nothing to wait for, so it is not added, and one left
    // by an earlier setting is taken off: a ModelImage deleted after the controller is gone (helm
    // uninstall) must not hang in Terminating.
    if (deps.config.retainOnDelete) mi = await removeFinalizer(deps.objects, mi, FINALIZER);
    else mi = await ensureFinalizer(deps.objects, mi, FINALIZER);
    const spec = withDefaults(mi.spec);
    if (spec.suspend) {
      await writeStatus<ModelImageStatus, ModelImage>(
        deps.objects,
        mi,
        (status, current) => suspendedStatus(status, current, deps.clock.now()),
        { clock: deps.clock, signal: ctx.signal },
      );
      return done(); // a spec change (suspend: false) queues it again
    }
    const problems = [
      ...cacheReferenceProblems(spec, [deps.config.cache.registry, ...(deps.config.cacheAliases ?? [])]),
      ...unhonourableSpecProblems(spec),
    ];
    if (problems.length > 0) {
      await writeStatus<ModelImageStatus, ModelImage>(
        deps.objects,
        mi,
        (status, current) => invalidSpecStatus(status, current, problems, deps.clock.now()),
        { clock: deps.clock, signal: ctx.signal },
      );
      ctx.log.warn({ reason: "InvalidSpec", problems }, "spec cannot be honoured");
      return done(); // a spec change queues it again
    }
    askingForSlots();
    const release = deps.slots ? deps.slots.tryAcquire(key, upstreamHosts(spec)) : () => {};
    if (!release) {
      ctx.log.debug(
        { perHost: deps.slots?.perHost },
        "upstream host busy with other syncs: parked until one of them ends",
      );
      return requeueAfter(PARKED_RECHECK_MS);
    }
    try {
      return await syncModelImage(mi, deps, ctx);
    } finally {
      release();
    }
  }
}

const DEFAULT_CHECK_TIMEOUT_MS = 20_000;

/** Variants whose upstream did not answer the manifest check in time: UpstreamTimeout, retried with backoff. */
function checksTimedOut(work: VariantWork[], checkTimeoutMs: number): void {
  for (const { outcome } of work) {
    if (outcome.upstreamDigest || !outcome.image) continue;
    if (outcome.error && isStalledReason(outcome.error.reason)) continue;
    const host = parseReference(outcome.image).registry;
    outcome.error = new StowageError(
      "UpstreamTimeout",
      `${variantLabel(outcome)}: ${host} did not answer the manifest check within ${formatDuration(checkTimeoutMs)}; retrying with backoff`,
      { retryable: true },
    );
  }
}

/** A host that timed out shares the slow hosts' slots; one that answered has its own again. */
function noteHostHealth(outcome: VariantOutcome, slots: UpstreamSlots | undefined): void {
  if (!slots || !outcome.image) return;
  const host = parseReference(outcome.image).registry;
  if (outcome.upstreamDigest) slots.markAnswered(host);
  else if (outcome.error?.reason === "UpstreamTimeout") slots.markSlow(host);
}

/**
 * After `ctx.budget` fired: a stop or a cancellation (deletion, spec change) ends the pass
 * without a write (the key is queued again by what cancelled it); a timeout turns every variant
 * not finished into Synced=False UpstreamTimeout, which the caller writes and retries with backoff.
 */
function budgetSpent(
  ctx: ReconcileContext,
  work: VariantWork[],
  deps: ReconcilerDeps,
): "end" | "report" | undefined {
  const why = budgetReason(ctx);
  if (why === undefined) return undefined;
  if (why !== "timeout") {
    ctx.log.debug({ why }, "sync interrupted");
    return "end";
  }
  const budget = formatDuration(deps.config.syncTimeoutMs);
  for (const { outcome } of work) {
    const unfinished = outcome.syncing || (outcome.error && !isStalledReason(outcome.error.reason));
    if (!unfinished) continue;
    const host = outcome.image ? parseReference(outcome.image).registry : "the upstream";
    const stage = outcome.upstreamDigest
      ? `the copy from ${host} into the cache was still running`
      : `${host} did not answer the manifest check`;
    outcome.syncing = false;
    outcome.error = new StowageError(
      "UpstreamTimeout",
      `${variantLabel(outcome)}: the sync did not finish within ${budget} (--sync-timeout): ${stage}; retrying with backoff`,
      { retryable: true, cause: ctx.budget.reason },
    );
  }
  return "report";
}

interface VariantWork {
  outcome: VariantOutcome;
  source?: ImageReference;
  target?: ImageReference;
  choice?: PlatformChoice;
}

async function syncModelImage(mi: ModelImage, deps: ReconcilerDeps, ctx: ReconcileContext): Promise<Result> {
  const key = `${mi.metadata.namespace}/${mi.metadata.name}`;
  const spec = withDefaults(mi.spec);
  const variants = variantsOf(spec);
  let credentials: CredentialLookup | undefined;
  let credentialError: StowageError | undefined;
  try {
    credentials = await deps.credentials.forModelImage(mi.metadata.namespace ?? "", spec.pullSecrets);
  } catch (err) {
    credentialError = asStowageError(err, "AuthConfigInvalid");
  }

  // 1. Check: what upstream serves now, and whether the cache already holds it. A manifest HEAD
  // answers in well under a second; one that has not within the check deadline will not, and
  // must not hold the worker for the transport's retries.
  const nodes = deps.nodes();
  const checkTimeoutMs = deps.config.checkTimeoutMs ?? DEFAULT_CHECK_TIMEOUT_MS;
  const checkDeadline = new AbortController();
  const checkDone = new AbortController();
  deps.clock.sleep(checkTimeoutMs, checkDone.signal).then(
    () => checkDeadline.abort(new Error(`manifest checks past ${checkTimeoutMs} ms`)),
    () => {}, // the checks finished first
  );
  const work: VariantWork[] = await Promise.all(
    variants.map((variant) =>
      checkVariant(
        mi,
        variant,
        nodes,
        credentials,
        credentialError,
        deps,
        AbortSignal.any([ctx.budget, checkDeadline.signal]),
      ),
    ),
  );
  checkDone.abort("checks finished"); // a reason of our own: no DOMException built per sync
  if (checkDeadline.signal.aborted && !ctx.budget.aborted) checksTimedOut(work, checkTimeoutMs);
  for (const { outcome } of work) noteHostHealth(outcome, deps.slots);
  let spent = budgetSpent(ctx, work, deps);
  if (spent === "end") return done();

  // 2. Mirror what differs; the status says so first (Reconciling, upstreamChangedAt).
  const toCopy = work.filter((w) => w.outcome.syncing);
  if (toCopy.length > 0 && spent === undefined) {
    mi = (await write(mi, work, deps, ctx.signal)).object;
    for (const w of toCopy) {
      void deps.events.event(mi, {
        type: "Normal",
        reason: "SyncStarted",
        action: "Sync",
        note: `mirroring ${variantLabel(w.outcome)} at ${w.outcome.upstreamDigest} to ${w.outcome.cacheImage}`,
      });
    }
    await Promise.all(toCopy.map((w) => copyVariant(mi, w, credentials!, deps, ctx.budget)));
    spent = budgetSpent(ctx, work, deps);
    if (spent === "end") return done();
  }

  // 2b. The slower check: read unchanged cached images back and hash every blob, when due.
  if (spent === undefined && credentials)
    await verifyCachedVariants(mi, key, work, credentials, deps, ctx.budget);

  // 3. Report.
  const previousSyncedMessage = storedSyncedMessage(mi);
  const written = await write(mi, work, deps, ctx.signal);
  mi = written.object;
  const now = deps.clock.now();
  const checks = deps.checks.get(key) ?? new Map<string, CheckRecord>();
  deps.checks.set(key, checks);
  for (const name of checks.keys()) if (!variants.some((v) => v.name === name)) checks.delete(name);
  for (const { outcome } of work) {
    const record = checks.get(outcome.variant.name) ?? { failing: false };
    if (outcome.error) record.failing = true;
    else {
      record.failing = false;
      record.lastSuccessAt = now;
    }
    checks.set(outcome.variant.name, record);
    if (outcome.noMatchingNodes && !previousSyncedMessage.includes(noMatchingNodesNote(outcome))) {
      void deps.events.event(mi, {
        type: "Warning",
        reason: "NoMatchingNodes",
        action: "Sync",
        note: noMatchingNodesNote(outcome),
      });
    }
  }

  const failures = work.map((w) => w.outcome).filter((o) => o.error);
  for (const failure of failures) {
    ctx.log.warn(
      { variant: failure.variant.name, reason: failure.error?.reason, error: failure.error?.message },
      "sync failed",
    );
    void deps.events.event(mi, {
      type: "Warning",
      reason: "SyncFailed",
      action: "Sync",
      note: `${failure.error?.reason}: ${variantLabel(failure)}: ${failure.error?.message}`,
    });
  }
  const retryable = failures.find((o) => o.error && !isStalledReason(o.error.reason));
  if (retryable?.error) {
    // A registry that named its wait (Retry-After; the message says "retrying in Ns") gets it.
    const wait = retryAfterOf(retryable.error);
    if (wait !== undefined) return requeueAfter(wait);
    // Back off through the work queue; the status already says what is wrong.
    throw retryable.error;
  }
  return requeueAfter(nextSyncDelay(syncIntervalMs(spec), deps.config.syncJitter, deps.random));
}

/**
 * The status a sync reports: what the checks and copies found (statusFrom), then the pre-warm
 * part folded in. Pre-warm reads from status which variants the cache holds: from the status
 * written now, not the one it replaces (on a first sync that one held none, so Prewarmed and
 * Ready stayed "waiting for the cache" until a plan change refreshed them). statusFrom sets
 * Ready and Reconciling from the sync alone and the fold may set them back, so transition times
 * are kept wherever a condition ends as it was stored.
 */
export function reportedStatus(
  stored: ModelImageStatus | undefined,
  current: ModelImage,
  input: Omit<StatusInput, "mi"> & { nodes: readonly Node[]; prewarm: PrewarmSource | undefined },
): ModelImageStatus {
  const next = statusFrom(stored, {
    mi: current,
    outcomes: input.outcomes,
    now: input.now,
    checkedAtResolutionMs: input.checkedAtResolutionMs,
  });
  const folded = foldPrewarm(next, { ...current, status: next }, input.nodes, input.prewarm, input.now);
  if (!folded.conditions) return folded;
  return { ...folded, conditions: keepTransitionTimes(stored?.conditions, folded.conditions) };
}

function write(mi: ModelImage, work: VariantWork[], deps: ReconcilerDeps, signal: AbortSignal) {
  return writeStatus<ModelImageStatus, ModelImage>(
    deps.objects,
    mi,
    (status, current) =>
      reportedStatus(status, current, {
        outcomes: work.map((w) => w.outcome),
        now: deps.clock.now(),
        checkedAtResolutionMs: deps.config.checkedAtResolutionMs,
        nodes: deps.nodes(),
        prewarm: deps.prewarm,
      }),
    { clock: deps.clock, signal },
  );
}

async function checkVariant(
  mi: ModelImage,
  variant: ModelImageVariant,
  nodes: readonly Node[],
  credentials: CredentialLookup | undefined,
  credentialError: StowageError | undefined,
  deps: ReconcilerDeps,
  signal: AbortSignal,
): Promise<VariantWork> {
  const outcome: VariantOutcome = { variant, noMatchingNodes: false };
  let source: ImageReference;
  try {
    source = parseReference(variant.image);
  } catch (err) {
    outcome.error = asStowageError(err, "InvalidReference");
    return { outcome };
  }
  outcome.image = formatReference(source);
  const target = cacheTarget(source, deps.registries.cacheRegistry);
  const previous = mi.status?.variants?.find((v) => v.name === variant.name);
  outcome.cacheImage = cacheImageName(target, previous?.cacheDigest);
  let choice: PlatformChoice;
  try {
    choice = choosePlatformsForImage(mi, variant, nodes, deps.allModelImages());
  } catch (err) {
    outcome.error = asStowageError(err, "InvalidArgument");
    return { outcome };
  }
  outcome.noMatchingNodes = choice.kind === "all" && choice.noMatchingNodes;
  if (credentialError || !credentials) {
    outcome.error = credentialError ?? new StowageError("AuthConfigInvalid", "no credentials");
    return { outcome };
  }
  const lookup = credentials;
  try {
    // A pinned digest never changes upstream: no need to ask.
    const upstreamDigest =
      source.digest ??
      (
        await deps.registries.withUpstreamCredentials(lookup, () =>
          deps.registries.client.headManifest(
            { registry: source.registry, repository: source.repository },
            manifestReference(source),
            { signal },
          ),
        )
      )?.digest;
    if (!upstreamDigest) {
      throw new StowageError("ImageNotFound", `image ${outcome.image} not found upstream`);
    }
    outcome.upstreamDigest = upstreamDigest;
  } catch (err) {
    outcome.error = classify(err, deps.registries.cacheRegistry, outcome);
    return { outcome };
  }
  const work: VariantWork = { outcome, source, target, choice };
  if (previousSyncAnswers(previous, outcome.upstreamDigest, choice) && previous?.cacheDigest) {
    try {
      const reference = target.tag ?? previous.cacheDigest;
      const cached = await deps.registries.client.headManifest(
        { registry: target.registry, repository: target.repository },
        reference,
        { signal },
      );
      if (cached?.digest === previous.cacheDigest) {
        outcome.cacheDigest = cached.digest;
        return work; // unchanged: one upstream HEAD, one cache HEAD
      }
    } catch (err) {
      outcome.error = cacheError(err, outcome);
      return work;
    }
  }
  outcome.syncing = true;
  return work;
}

async function copyVariant(
  mi: ModelImage,
  work: VariantWork,
  credentials: CredentialLookup,
  deps: ReconcilerDeps,
  signal: AbortSignal,
): Promise<void> {
  const { outcome, source, target, choice } = work;
  if (!source || !target || !choice || !outcome.upstreamDigest) return;
  try {
    try {
      await deps.credentials.ensureRepository(target.registry, target.repository);
    } catch (err) {
      throw cacheError(err, outcome);
    }
    const { result, shared } = await deps.syncer.sync({
      source: { registry: source.registry, repository: source.repository, digest: outcome.upstreamDigest },
      target,
      options: {
        allPlatforms: choice.kind === "all",
        platforms: choice.kind === "list" ? choice.platforms : undefined,
        referrers: mi.spec.sync?.referrers ?? false,
        signal,
      },
      platformKey: platformKey(choice),
      credentials,
    });
    outcome.syncing = false;
    outcome.copy = result;
    outcome.cacheDigest = result.targetDigest;
    outcome.cacheImage = cacheImageName(target, result.targetDigest);
    outcome.platforms = result.platforms;
    outcome.sizeBytes = result.bytes.transferred + result.bytes.mounted + result.bytes.skipped;
    const { transferred, mounted, skipped } = result.bytes;
    void deps.events.event(mi, {
      type: "Normal",
      reason: "Synced",
      action: "Sync",
      note: `mirrored ${variantLabel(outcome)} to ${outcome.cacheImage} (${result.targetDigest}${
        result.platforms.length ? `, ${result.platforms.join(", ")}` : ""
      }): ${bytes(transferred)} transferred, ${bytes(mounted)} mounted, ${bytes(skipped)} skipped in ${(
        result.durationMs / 1000
      ).toFixed(1)}s${shared ? " (a copy shared with another ModelImage)" : ""}`,
    });
  } catch (err) {
    outcome.syncing = false;
    outcome.error = classify(err, deps.registries.cacheRegistry, outcome);
  }
}

const DEFAULT_VERIFY_INTERVAL_MS = 24 * 60 * 60_000;

/**
 * Cache corruption (a flipped byte on the cache's disk) is invisible to the manifest check:
 * every verifyIntervalMs an unchanged variant's cached image is read back with every blob
 * hashed, and what is corrupt is re-copied from upstream (verifyAndRepair); a cache that still
 * serves bad bytes makes the variant Synced=False DigestMismatch, saying what to do.
 */
async function verifyCachedVariants(
  mi: ModelImage,
  key: string,
  work: VariantWork[],
  credentials: CredentialLookup,
  deps: ReconcilerDeps,
  signal: AbortSignal,
): Promise<void> {
  const interval = deps.config.verifyIntervalMs ?? DEFAULT_VERIFY_INTERVAL_MS;
  if (interval <= 0) return;
  const now = deps.clock.now();
  const checks = deps.checks.get(key) ?? new Map<string, CheckRecord>();
  deps.checks.set(key, checks);
  await Promise.all(
    work.map(async ({ outcome, source, target }) => {
      if (outcome.error || !outcome.cacheDigest || !source || !target) return;
      const record = checks.get(outcome.variant.name) ?? { failing: false };
      checks.set(outcome.variant.name, record);
      // A copy just made was verified while it streamed; a first check after a restart waits one
      // interval too, so a restart does not read every cached image at once.
      if (record.lastVerifiedAt === undefined || outcome.syncing) record.lastVerifiedAt = now;
      if (now - record.lastVerifiedAt < interval) return;
      const cacheDigest = outcome.cacheDigest;
      try {
        const { repaired } = await deps.registries.withUpstreamCredentials(credentials, () =>
          verifyAndRepair(
            deps.registries.client,
            { registry: source.registry, repository: source.repository },
            { registry: target.registry, repository: target.repository },
            cacheDigest,
            { signal },
          ),
        );
        record.lastVerifiedAt = now;
        if (repaired > 0) {
          void deps.events.event(mi, {
            type: "Warning",
            reason: "CacheRepaired",
            action: "Verify",
            note: `${variantLabel(outcome)}: ${repaired} corrupt or missing blob(s) of ${outcome.cacheImage} re-copied from upstream`,
          });
        }
      } catch (err) {
        // The cache serving bad bytes is DigestMismatch (its message names the blob and the cure).
        outcome.error =
          err instanceof StowageError && err.reason === "DigestMismatch"
            ? new StowageError(err.reason, `${variantLabel(outcome)}: ${err.message}`, {
                cause: err,
                retryable: true,
              })
            : classify(err, deps.registries.cacheRegistry, outcome);
      }
    }),
  );
}

/** Failures of calls that only talk to the cache registry. */
function cacheError(err: unknown, outcome: VariantOutcome): StowageError {
  const error = asStowageError(err, "CacheUnavailable");
  return new StowageError(
    "CacheUnavailable",
    `the cache registry failed while syncing ${variantLabel(outcome)}: ${error.message}`,
    { cause: err, retryable: true },
  );
}

/**
 * A registry error as the condition reason a person needs: anything the cache registry said
 * (its host named in the message) is CacheUnavailable, never blamed on the upstream.
 */
function classify(err: unknown, cacheRegistry: string, outcome: VariantOutcome): StowageError {
  const error = asStowageError(err, "UpstreamUnavailable");
  if (error.reason === "CacheUnavailable") return error;
  // Registry messages name the host they failed on; "cache:5000" must not match "cache:50001".
  const host = cacheRegistry.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  if (new RegExp(`${host}(?![0-9])`).test(error.message)) return cacheError(err, outcome);
  return error;
}

function bytes(n: number): string {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(2)} GiB`;
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}
