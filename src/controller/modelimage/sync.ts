/**
 * Mirroring, shared by every ModelImage in the process: one Copier, at most
 * `maxConcurrentSyncs` copies in flight, and a single-flight map so that concurrent reconciles
 * wanting the same image in the same cache repository (same source digest, target reference
 * and platform choice) share one copy instead of racing two.
 */
import PQueue from "p-queue";
import type { StowageMetrics } from "../../metrics.ts";
import type { CopyOptions, CopyResult } from "../../oci/copy.ts";
import type { ImageReference } from "../../oci/reference.ts";
import { formatReference } from "../../oci/reference.ts";
import type { CredentialLookup } from "../../oci/registry.ts";
import type { Clock } from "../../util/clock.ts";
import { asStowageError } from "../../util/errors.ts";
import type { Registries } from "./registries.ts";

export interface SyncRequest {
  /** The upstream image, by the digest the tag resolved to (what is copied is exactly what was checked). */
  source: ImageReference;
  target: ImageReference;
  /**
   * `signal` is the requesting reconcile's budget (its sync deadline, its cancellation and the
   * controller's stop). It ends this caller's wait at once; the copy itself is aborted only when
   * every caller sharing it has stopped waiting, so one ModelImage's deadline cannot fail another's copy.
   */
  options: Pick<CopyOptions, "platforms" | "allPlatforms" | "referrers" | "signal">;
  /** Part of the single-flight key: same platforms → same result. */
  platformKey: string;
  /** The requesting ModelImage's upstream credentials (the copy may start later, from another context). */
  credentials: CredentialLookup;
}

/** One copy and the callers still waiting for it. */
interface SharedCopy {
  result: Promise<CopyResult>;
  abort: AbortController;
  waiting: number;
}

export interface SyncOutcome {
  result: CopyResult;
  /** Another reconcile started this copy; this one waited for it. */
  shared: boolean;
}

export class Syncer {
  readonly #registries: Registries;
  readonly #metrics: StowageMetrics;
  readonly #clock: Clock;
  readonly #queue: PQueue;
  readonly #inflight = new Map<string, SharedCopy>();

  constructor(deps: {
    registries: Registries;
    metrics: StowageMetrics;
    clock: Clock;
    maxConcurrentSyncs: number;
  }) {
    this.#registries = deps.registries;
    this.#metrics = deps.metrics;
    this.#clock = deps.clock;
    this.#queue = new PQueue({ concurrency: Math.max(1, deps.maxConcurrentSyncs) });
  }

  /** Copies waiting for a slot plus those running. */
  get pending(): number {
    return this.#queue.size + this.#queue.pending;
  }

  /**
   * Mirror `request.source` into the cache, reading upstream with `request.credentials`. A
   * caller joining a copy already in flight resolved the same digest with its own credentials
   * first, so sharing the copy gives it nothing it could not read itself.
   */
  sync(request: SyncRequest): Promise<SyncOutcome> {
    const key = [
      request.source.digest ?? formatReference(request.source),
      formatReference(request.target),
      request.platformKey,
      request.options.referrers ? "referrers" : "",
    ].join("|");
    let shared = true;
    let copy = this.#inflight.get(key);
    if (!copy) {
      shared = false;
      const abort = new AbortController();
      const options = { ...request.options, signal: abort.signal };
      const started: SharedCopy = {
        abort,
        waiting: 0,
        result: this.#queue
          .add(() => this.#copy({ ...request, options }))
          .finally(() => {
            if (this.#inflight.get(key) === started) this.#inflight.delete(key);
          }),
      };
      // Nobody awaits it once every caller gave up; its failure is theirs, already reported.
      started.result.catch(() => {});
      this.#inflight.set(key, started);
      copy = started;
    }
    return this.#wait(copy, key, request.options.signal).then((result) => ({ result, shared }));
  }

  /** Wait for `copy` until it settles or `signal` aborts; the last waiter to leave aborts it. */
  #wait(copy: SharedCopy, key: string, signal: AbortSignal | undefined): Promise<CopyResult> {
    copy.waiting++;
    let left = false;
    const leave = () => {
      if (left) return;
      left = true;
      copy.waiting--;
      if (copy.waiting === 0) {
        copy.abort.abort(signal?.reason);
        // A new caller starts a new copy rather than joining an aborted one.
        if (this.#inflight.get(key) === copy) this.#inflight.delete(key);
      }
    };
    if (signal?.aborted) {
      leave();
      return Promise.reject(signal.reason);
    }
    return new Promise<CopyResult>((resolve, reject) => {
      const onAbort = () => {
        leave();
        reject(signal?.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      copy.result.then(
        (result) => {
          signal?.removeEventListener("abort", onAbort);
          left = true;
          copy.waiting--;
          resolve(result);
        },
        (err) => {
          signal?.removeEventListener("abort", onAbort);
          left = true;
          copy.waiting--;
          reject(err);
        },
      );
    });
  }

  async #copy(request: SyncRequest): Promise<CopyResult> {
    // A copy still queued when every caller gave up (deadline, deletion, shutdown) does not start.
    request.options.signal?.throwIfAborted();
    const started = this.#clock.now();
    try {
      const result = await this.#registries.withUpstreamCredentials(request.credentials, () =>
        this.#registries.copier.copy(request.source, request.target, request.options),
      );
      this.#metrics.syncTotal.inc({ result: "success", reason: "" });
      this.#metrics.syncDuration.observe((this.#clock.now() - started) / 1000);
      for (const kind of ["transferred", "mounted", "skipped"] as const) {
        this.#metrics.syncBytes.inc({ kind }, result.bytes[kind]);
      }
      return result;
    } catch (err) {
      this.#metrics.syncTotal.inc({ result: "error", reason: asStowageError(err).reason });
      throw err;
    }
  }
}
