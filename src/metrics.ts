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
