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
   * `signal` is the controller's (aborted when it stops: shutdown or lost lease), the same for
   * every reconcile of that controller, so a copy joined by several ModelImages is aborted only
   * when all of them would be.
   */
  options: Pick<CopyOptions, "platforms" | "allPlatforms" | "referrers" | "signal">;
  /** Part of the single-flight key: same platforms → same result. */
  platformKey: string;
  /** The requesting ModelImage's upstream credentials (the copy may start later, from another context). */
  credentials: CredentialLookup;
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
  readonly #inflight = new Map<string, Promise<CopyResult>>();

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
    const running = this.#inflight.get(key);
    if (running) return running.then((result) => ({ result, shared: true }));
    const copy = this.#queue.add(() => this.#copy(request)).finally(() => this.#inflight.delete(key));
    this.#inflight.set(key, copy);
    return copy.then((result) => ({ result, shared: false }));
  }

  async #copy(request: SyncRequest): Promise<CopyResult> {
    // A copy still queued when the controller stopped does not start.
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
