import { Counter, Gauge, Histogram, Registry } from "prom-client";

/**
 * Every metric Stowage exports is defined here, once. Components receive the metrics object
 * instead of creating collectors themselves, so two managers in one process (tests) can use
 * separate registries and a name is never registered twice.
 */
export function createRegistry(): Registry {
  return new Registry();
}

const durationBuckets = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

export interface RuntimeMetrics {
  registry: Registry;
  informerRestarts: Counter<"resource">;
  workqueueDepth: Gauge<"name">;
  workqueueAdds: Counter<"name">;
  workqueueRetries: Counter<"name">;
  workqueueQueueDuration: Histogram<"name">;
  workqueueWorkDuration: Histogram<"name">;
  reconcileTotal: Counter<"controller" | "result">;
  reconcileTime: Histogram<"controller">;
  leaderStatus: Gauge<"name">;
}

/** The controller runtime's metrics (informers, work queues, reconcilers, leader election). */
export function createRuntimeMetrics(registry: Registry = createRegistry()): RuntimeMetrics {
  const registers = [registry];
  return {
    registry,
    informerRestarts: new Counter({
      name: "stowage_informer_restarts_total",
      help: "Times an informer re-established its list/watch after the watch ended or failed.",
      labelNames: ["resource"],
      registers,
    }),
    workqueueDepth: new Gauge({
      name: "workqueue_depth",
      help: "Keys waiting in the work queue.",
      labelNames: ["name"],
      registers,
    }),
    workqueueAdds: new Counter({
      name: "workqueue_adds_total",
      help: "Keys added to the work queue (duplicates of a waiting key are not counted).",
      labelNames: ["name"],
      registers,
    }),
    workqueueRetries: new Counter({
      name: "workqueue_retries_total",
      help: "Keys re-added with rate-limited backoff after a failure.",
      labelNames: ["name"],
      registers,
    }),
    workqueueQueueDuration: new Histogram({
      name: "workqueue_queue_duration_seconds",
      help: "Time a key waited in the work queue before a worker took it.",
      labelNames: ["name"],
      buckets: durationBuckets,
      registers,
    }),
    workqueueWorkDuration: new Histogram({
      name: "workqueue_work_duration_seconds",
      help: "Time a worker spent on a key, from taking it to marking it done.",
      labelNames: ["name"],
      buckets: durationBuckets,
      registers,
    }),
    reconcileTotal: new Counter({
      name: "controller_reconcile_total",
      help: "Reconciles by controller and result (success, error, requeue_after).",
      labelNames: ["controller", "result"],
      registers,
    }),
    reconcileTime: new Histogram({
      name: "controller_reconcile_time_seconds",
      help: "Time spent in one reconcile.",
      labelNames: ["controller"],
      buckets: durationBuckets,
      registers,
    }),
    leaderStatus: new Gauge({
      name: "leader_election_master_status",
      help: "1 while this process holds the leader lease, 0 otherwise.",
      labelNames: ["name"],
      registers,
    }),
  };
}

let processMetrics: RuntimeMetrics | undefined;

/** The process-wide runtime metrics, for callers that do not inject their own. */
export function defaultRuntimeMetrics(): RuntimeMetrics {
  processMetrics ??= createRuntimeMetrics();
  return processMetrics;
}

// ---------------------------------------------------------------------------------------------
// stowage_*: the ModelImage reconciler's metrics (what the chart's alert rules read).
// ---------------------------------------------------------------------------------------------

/** Sync durations range from a HEAD (sub-second) to a 40 GB image over a slow link (hours). */
const syncDurationBuckets = [0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400];

/** Per-object gauge values, computed on scrape from the controller's caches (no API writes). */
export interface ModelImageSamples {
  lag: { namespace: string; name: string; variant: string; seconds: number }[];
  ready: { namespace: string; name: string; ready: boolean }[];
}

export interface StowageMetrics {
  registry: Registry;
  syncTotal: Counter<"result" | "reason">;
  syncDuration: Histogram<never>;
  syncBytes: Counter<"kind">;
  syncLag: Gauge<"namespace" | "name" | "variant">;
  modelImageReady: Gauge<"namespace" | "name">;
  /**
   * Where the per-object gauges read their values at scrape time. The series are rebuilt on
   * every scrape, so an object that is gone has no series any more.
   */
  setModelImageSource(source: (() => ModelImageSamples) | undefined): void;
}

export function createStowageMetrics(registry: Registry = createRegistry()): StowageMetrics {
  const registers = [registry];
  let source: (() => ModelImageSamples) | undefined;
  const read = (): ModelImageSamples => source?.() ?? { lag: [], ready: [] };
  const syncLag = new Gauge({
    name: "stowage_modelimage_sync_lag_seconds",
    help: "Seconds the cache has lagged the upstream tag (0 when it holds the upstream digest): since the upstream change was first seen, or since the last successful check while checks fail.",
    labelNames: ["namespace", "name", "variant"],
    registers,
    collect() {
      this.reset();
      for (const s of read().lag)
        this.set({ namespace: s.namespace, name: s.name, variant: s.variant }, s.seconds);
    },
  });
  const modelImageReady = new Gauge({
    name: "stowage_modelimage_ready",
    help: "1 when the ModelImage's Ready condition is True, else 0.",
    labelNames: ["namespace", "name"],
    registers,
    collect() {
      this.reset();
      for (const s of read().ready) this.set({ namespace: s.namespace, name: s.name }, s.ready ? 1 : 0);
    },
  });
  return {
    registry,
    syncTotal: new Counter({
      name: "stowage_sync_total",
      help: "Mirror operations (upstream checks that needed a copy, and checks that failed) by result and reason.",
      labelNames: ["result", "reason"],
      registers,
    }),
    syncDuration: new Histogram({
      name: "stowage_sync_duration_seconds",
      help: "Time one image took to mirror into the cache (successful copies).",
      buckets: syncDurationBuckets,
      registers,
    }),
    syncBytes: new Counter({
      name: "stowage_sync_bytes_total",
      help: "Blob bytes of mirrored images by how they reached the cache: transferred, mounted or skipped (already there).",
      labelNames: ["kind"],
      registers,
    }),
    syncLag,
    modelImageReady,
    setModelImageSource(next) {
      source = next;
    },
  };
}
