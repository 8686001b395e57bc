/**
 * When the registry's garbage collection runs (leader only): after an eviction pass deleted
 * manifests (`request`), and every `intervalMs` (abandoned pushes and images deleted with their
 * ModelImage leave blobs too). A failed run is counted, logged, reported (`onFailure`: an Event) and
 * retried after `retryMs`, doubling up to the interval. Between runs the leader checks every
 * `recoverEveryMs` that no collection it did not finish (a crashed or deposed leader's) holds the
 * registry read-only, and undoes it: the Job goes first, then writes resume.
 */
import type { RegistryGcMetrics } from "../../metrics.ts";
import type { Clock } from "../../util/clock.ts";
import { asStowageError, type StowageError } from "../../util/errors.ts";
import type { Logger } from "../../util/log.ts";
import { clampTimerMs } from "../../util/timer.ts";
import { collectWhilePaused, type WritePause } from "./collect.ts";

/** What the loop drives (cluster.ts in the cluster). */
export interface RegistryGc extends WritePause {
  /** Runs the collection while writes are paused. */
  collect(): Promise<unknown>;
  /** Is the registry held read-only by a collection (this one, or one that did not finish)? */
  paused(): Promise<boolean>;
}

export interface RegistryGcLoopOptions {
  gc: RegistryGc;
  /** Collect this often even without evictions; 0: only after an eviction pass freed something. */
  intervalMs: number;
  /** First retry after a failure (default 5 min); doubles up to the interval (or 1 h). */
  retryMs?: number;
  /** How often the leader looks for a read-only registry nobody is collecting on (default 1 min). */
  recoverEveryMs?: number;
  isLeader: () => boolean;
  clock: Clock;
  metrics: RegistryGcMetrics;
  logger: Logger;
  onFailure?: (failure: StowageError) => Promise<void>;
}

export interface RegistryGcLoop {
  /** Ask for a collection soon (coalesced: several requests before it starts make one run). */
  request(): void;
  /** One collection now: pause, collect, resume; never throws, true when it succeeded. */
  runOnce(): Promise<boolean>;
  stop(): Promise<void>;
}

export function startRegistryGcLoop(options: RegistryGcLoopOptions): RegistryGcLoop {
  const { gc, clock, metrics, logger } = options;
  const retryMs = options.retryMs ?? 5 * 60_000;
  const recoverEveryMs = options.recoverEveryMs ?? 60_000;
  const abort = new AbortController();
  let requested = false;
  let failures = 0;
  let nextRunAt = options.intervalMs > 0 ? clock.now() + options.intervalMs : Number.POSITIVE_INFINITY;
  let wake: AbortController | undefined;
  let running: Promise<boolean> | undefined;

  const runOnce = (): Promise<boolean> => {
    running ??= (async () => {
      const started = clock.now();
      metrics.readOnly.set(1);
      try {
        await collectWhilePaused(gc, () => gc.collect());
        const seconds = (clock.now() - started) / 1000;
        failures = 0;
        metrics.runs.inc({ result: "ok" });
        metrics.consecutiveFailures.set(0);
        metrics.lastSuccess.set(clock.now() / 1000);
        metrics.duration.observe({ result: "ok" }, seconds);
        metrics.readOnly.set(0);
        logger.info({ seconds }, "registry garbage collection done; the registry takes writes again");
        return true;
      } catch (err) {
        const failure = asStowageError(err);
        failures += 1;
        metrics.runs.inc({ result: "failed" });
        metrics.consecutiveFailures.set(failures);
        metrics.duration.observe({ result: "failed" }, (clock.now() - started) / 1000);
        const stillPaused = await gc.paused().catch(() => true);
        metrics.readOnly.set(stillPaused ? 1 : 0);
        logger.warn(
          { reason: failure.reason, err: failure.message, failures, readOnly: stillPaused },
          "registry garbage collection failed; retrying later",
        );
        await options.onFailure?.(failure).catch(() => {});
        return false;
      } finally {
        running = undefined;
      }
    })();
    return running;
  };

  const recover = async () => {
    try {
      if (!(await gc.paused())) return;
      logger.warn(
        "the cache registry is read-only for a garbage collection nobody is running (a controller stopped during one): resuming writes",
      );
      metrics.readOnly.set(1);
      await gc.resume();
      metrics.readOnly.set(0);
    } catch (err) {
      const failure = asStowageError(err);
      logger.warn(
        { reason: failure.reason, err: failure.message },
        "could not resume writes on the cache registry",
      );
      await options.onFailure?.(failure).catch(() => {});
    }
  };

  const loop = (async () => {
    while (!abort.signal.aborted) {
      wake = new AbortController();
      const waitMs = Math.max(0, Math.min(recoverEveryMs, nextRunAt - clock.now()));
      try {
        // a standby sleeps even with a request pending: it waits to lead, never spins
        if (!requested || !options.isLeader())
          await clock.sleep(clampTimerMs(waitMs), AbortSignal.any([abort.signal, wake.signal]));
      } catch {
        // woken by request() or stopped
      }
      if (abort.signal.aborted) return;
      if (!options.isLeader()) continue;
      if (requested || clock.now() >= nextRunAt) {
        requested = false;
        const ok = await runOnce();
        const base = options.intervalMs > 0 ? options.intervalMs : 60 * 60_000;
        nextRunAt = ok
          ? options.intervalMs > 0
            ? clock.now() + options.intervalMs
            : Number.POSITIVE_INFINITY
          : clock.now() + Math.min(retryMs * 2 ** (failures - 1), Math.max(base, retryMs));
      } else if (!running) {
        await recover();
      }
    }
  })();

  return {
    request() {
      requested = true;
      wake?.abort();
    },
    runOnce,
    /**
     * Stops the loop. A collection under way is not waited for (it may take an hour, shutdown has
     * seconds): it goes on while the process lives, and the next leader undoes what it left.
     */
    async stop() {
      abort.abort();
      if (running) {
        logger.warn("stopping during a registry garbage collection: the next leader resumes writes");
        return;
      }
      await loop;
    },
  };
}
