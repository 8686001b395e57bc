import { createRequire } from "node:module";
import type * as PromClient from "prom-client";
import type { Counter, Gauge, Histogram, Registry } from "prom-client";

/**
 * prom-client's classes, required from their own files rather than from the package's index.
 *
 * Why: the index also loads its Pushgateway, cluster aggregator, summaries and, for the default
 * process metrics, @opentelemetry/api: measured on Node 24, `require("prom-client")` raises a
 * process's peak RSS by 21 MB and these four files by 3.4 MB. The agent runs on every node with a
 * < 80 MB goal and uses only these. prom-client has no `exports` map, so the paths are public;
 * test/metrics/promClient.test.ts checks they are the very classes the index exports.
 * `collectDefaultMetrics` (the controller and the cache front) is required from its own file too.
 */
const requirePromClient = createRequire(import.meta.url);
export const promClient = {
  Registry: requirePromClient("prom-client/lib/registry") as typeof PromClient.Registry,
  Counter: requirePromClient("prom-client/lib/counter") as typeof PromClient.Counter,
  Gauge: requirePromClient("prom-client/lib/gauge") as typeof PromClient.Gauge,
  Histogram: requirePromClient("prom-client/lib/histogram") as typeof PromClient.Histogram,
  /** Node's process metrics (CPU, memory, event loop lag, GC) on a registry; loaded on first use. */
  collectDefaultMetrics(
    config: PromClient.DefaultMetricsCollectorConfiguration<"text/plain; version=0.0.4; charset=utf-8">,
  ): void {
    (requirePromClient("prom-client/lib/defaultMetrics") as typeof PromClient.collectDefaultMetrics)(config);
  },
};
const {
  Counter: CounterClass,
  Gauge: GaugeClass,
  Histogram: HistogramClass,
  Registry: RegistryClass,
} = promClient;

/**
 * Every metric Stowage exports is defined here, once. Components receive the metrics object
 * instead of creating collectors themselves, so two managers in one process (tests) can use
 * separate registries and a name is never registered twice.
 */
export function createRegistry(): Registry {
  return new RegistryClass();
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
    informerRestarts: new CounterClass({
      name: "stowage_informer_restarts_total",
      help: "Times an informer re-established its list/watch after the watch ended or failed.",
      labelNames: ["resource"],
      registers,
    }),
    workqueueDepth: new GaugeClass({
      name: "workqueue_depth",
      help: "Keys waiting in the work queue.",
      labelNames: ["name"],
      registers,
    }),
    workqueueAdds: new CounterClass({
      name: "workqueue_adds_total",
      help: "Keys added to the work queue (duplicates of a waiting key are not counted).",
      labelNames: ["name"],
      registers,
    }),
    workqueueRetries: new CounterClass({
      name: "workqueue_retries_total",
      help: "Keys re-added with rate-limited backoff after a failure.",
      labelNames: ["name"],
      registers,
    }),
    workqueueQueueDuration: new HistogramClass({
      name: "workqueue_queue_duration_seconds",
      help: "Time a key waited in the work queue before a worker took it.",
      labelNames: ["name"],
      buckets: durationBuckets,
      registers,
    }),
    workqueueWorkDuration: new HistogramClass({
      name: "workqueue_work_duration_seconds",
      help: "Time a worker spent on a key, from taking it to marking it done.",
      labelNames: ["name"],
      buckets: durationBuckets,
      registers,
    }),
    reconcileTotal: new CounterClass({
      name: "controller_reconcile_total",
      help: "Reconciles by controller and result (success, error, requeue_after).",
      labelNames: ["controller", "result"],
      registers,
    }),
    reconcileTime: new HistogramClass({
      name: "controller_reconcile_time_seconds",
      help: "Time spent in one reconcile.",
      labelNames: ["controller"],
      buckets: durationBuckets,
      registers,
    }),
    leaderStatus: new GaugeClass({
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
  const syncLag = new GaugeClass({
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
  const modelImageReady = new GaugeClass({
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
    syncTotal: new CounterClass({
      name: "stowage_sync_total",
      help: "Mirror operations (upstream checks that needed a copy, and checks that failed) by result and reason.",
      labelNames: ["result", "reason"],
      registers,
    }),
    syncDuration: new HistogramClass({
      name: "stowage_sync_duration_seconds",
      help: "Time one image took to mirror into the cache (successful copies).",
      buckets: syncDurationBuckets,
      registers,
    }),
    syncBytes: new CounterClass({
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

// ---------------------------------------------------------------------------------------------
// stowage_pod_gate*: pods held by the prewarm scheduling gate (webhook + gate controller).
// ---------------------------------------------------------------------------------------------

/** Holds last from seconds (image already warm elsewhere) to the hold timeout (15 min default) or longer. */
const gateDurationBuckets = [1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];

export interface GateMetrics {
  registry: Registry;
  /** Pods carrying the prewarm gate now, counted on scrape from the gate controller's cache. */
  podsGated: Gauge<never>;
  /** Seconds from pod creation to gate removal, by why it was removed (prewarmed, deleted, released, timeout). */
  podGateSeconds: Histogram<"outcome">;
  podGateTimeouts: Counter<never>;
  setGatedPodSource(source: (() => number) | undefined): void;
}

export function createGateMetrics(registry: Registry = createRegistry()): GateMetrics {
  const registers = [registry];
  let source: (() => number) | undefined;
  return {
    registry,
    podsGated: new GaugeClass({
      name: "stowage_pods_gated",
      help: "Pods waiting behind the stowage.dev/prewarm scheduling gate.",
      registers,
      collect() {
        this.set(source?.() ?? 0);
      },
    }),
    podGateSeconds: new HistogramClass({
      name: "stowage_pod_gate_seconds",
      help: "Time from pod creation until the stowage.dev/prewarm scheduling gate was removed, by outcome.",
      labelNames: ["outcome"],
      buckets: gateDurationBuckets,
      registers,
    }),
    podGateTimeouts: new CounterClass({
      name: "stowage_pod_gate_timeouts_total",
      help: "Scheduling gates removed because prewarm.holdTimeout passed before the image was prewarmed.",
      registers,
    }),
    setGatedPodSource(next) {
      source = next;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// stowage_prewarm_*: the pre-warm planner's metrics (owner: prewarm planner, src/controller/prewarm).
// ---------------------------------------------------------------------------------------------

/** Pulls of one image onto one node take seconds (small) to an hour (40 GB over a slow link). */
const prewarmDurationBuckets = [1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200];

export type PrewarmNodeState = "desired" | "ready" | "pulling" | "failed" | "skipped";

/** Per-ModelImage node counts, computed on scrape from the planner's caches. */
export interface PrewarmSamples {
  nodes: { namespace: string; name: string; state: PrewarmNodeState; count: number }[];
}

export interface PrewarmMetrics {
  registry: Registry;
  prewarmNodes: Gauge<"namespace" | "name" | "state">;
  prewarmDuration: Histogram<never>;
  /** Where `stowage_prewarm_nodes` reads its values at scrape time; a deleted ModelImage has no series. */
  setPrewarmSource(source: (() => PrewarmSamples) | undefined): void;
}

export function createPrewarmMetrics(registry: Registry = createRegistry()): PrewarmMetrics {
  const registers = [registry];
  let source: (() => PrewarmSamples) | undefined;
  const prewarmNodes = new GaugeClass({
    name: "stowage_prewarm_nodes",
    help: "Nodes per ModelImage by pre-warm state: desired, ready (image present), pulling, failed (including disk budget refusals), skipped (platform or CUDA driver).",
    labelNames: ["namespace", "name", "state"],
    registers,
    collect() {
      this.reset();
      for (const s of source?.().nodes ?? [])
        this.set({ namespace: s.namespace, name: s.name, state: s.state }, s.count);
    },
  });
  return {
    registry,
    prewarmNodes,
    prewarmDuration: new HistogramClass({
      name: "stowage_prewarm_duration_seconds",
      help: "Time from an image being planned onto a node until the node's agent reported it Present.",
      buckets: prewarmDurationBuckets,
      registers,
    }),
    setPrewarmSource(next) {
      source = next;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// stowage_nodecache_*: node agent health and per-node pre-warm progress (install-and-operate).
// Computed at scrape time from the controller's NodeCache informer: no API calls, and a node
// whose NodeCache is gone has no series. Wire it with
//   nodeCacheHeartbeatCollector(nodeCacheInformer, clock, registry)
// next to createStowageMetrics in `stowage controller`.
// ---------------------------------------------------------------------------------------------

/** The NodeCache fields the collector reads (structural, so metrics.ts imports no API types). */
export interface NodeCacheView {
  /** Objects read as JSON carry a string; client-node typed objects may carry a Date. */
  metadata?: { name?: string; creationTimestamp?: string | Date };
  status?: { heartbeatTime?: string; images?: readonly { state: string }[] };
}

export interface NodeCacheMetrics {
  heartbeatAge: Gauge<"node">;
  images: Gauge<"node" | "state">;
}

const nodeImageStates = ["Pending", "Pulling", "Present", "Failed", "Removing"];

/**
 * `stowage_nodecache_heartbeat_age_seconds{node}`: seconds since the node's agent last refreshed
 * `status.heartbeatTime` (since the NodeCache was created, when it never did — an agent that never
 * started is as down as one that stopped). `stowage_nodecache_images{node,state}`: images in the
 * node's status per state (every state present, 0 included, so graphs do not break).
 */
export function nodeCacheHeartbeatCollector(
  informer: { list(): readonly NodeCacheView[] },
  clock: { now(): number },
  registry: Registry = createRegistry(),
): NodeCacheMetrics {
  const registers = [registry];
  const heartbeatAge = new GaugeClass({
    name: "stowage_nodecache_heartbeat_age_seconds",
    help: "Seconds since the node agent last refreshed its NodeCache heartbeat (since the NodeCache was created when it never did).",
    labelNames: ["node"],
    registers,
    collect() {
      this.reset();
      const now = clock.now();
      for (const nc of informer.list()) {
        const node = nc.metadata?.name;
        const since = new Date(
          nc.status?.heartbeatTime ?? nc.metadata?.creationTimestamp ?? Number.NaN,
        ).getTime();
        if (!node || Number.isNaN(since)) continue;
        this.set({ node }, Math.max(0, (now - since) / 1000));
      }
    },
  });
  const images = new GaugeClass({
    name: "stowage_nodecache_images",
    help: "Images in a node's NodeCache status by state (Pending, Pulling, Present, Failed, Removing).",
    labelNames: ["node", "state"],
    registers,
    collect() {
      this.reset();
      for (const nc of informer.list()) {
        const node = nc.metadata?.name;
        if (!node) continue;
        const counts = new Map(nodeImageStates.map((state) => [state, 0]));
        for (const image of nc.status?.images ?? [])
          counts.set(image.state, (counts.get(image.state) ?? 0) + 1);
        for (const [state, count] of counts) this.set({ node, state }, count);
      }
    },
  });
  return { heartbeatAge, images };
}

// ---------------------------------------------------------------------------------------------
// stowage_cache_*: the pull-through front (`stowage cache`, src/cache).
// ---------------------------------------------------------------------------------------------

export interface CacheMetrics {
  registry: Registry;
  /** Requests answered from storage, by kind (manifest, blob). */
  hits: Counter<"kind">;
  /** Requests storage could not answer, fetched upstream, by kind. */
  misses: Counter<"kind">;
  /** Bytes sent to callers, by where they came from (storage, upstream). */
  bytesServed: Counter<"source">;
  /** Bytes read from upstreams (each blob once, however many callers wait on it). */
  upstreamBytes: Counter<never>;
  /** Callers currently streaming a blob that is still being fetched upstream. */
  singleFlightWaiters: Gauge<never>;
  /** Requests that joined a fetch already under way instead of starting one. */
  singleFlightJoined: Counter<"kind">;
  /** Tag requests answered with a remembered digest because the upstream could not be asked. */
  staleTags: Counter<never>;
  /** Requests refused by the access check, by status (401, 403). */
  refused: Counter<"status">;
  /** Upstream fetches that failed, by reason (DigestMismatch, UpstreamUnavailable, ...). */
  fetchFailures: Counter<"reason">;
}

export function createCacheMetrics(registry: Registry = createRegistry()): CacheMetrics {
  const registers = [registry];
  return {
    registry,
    hits: new CounterClass({
      name: "stowage_cache_hits_total",
      help: "Requests the cache front answered from storage, by kind (manifest, blob).",
      labelNames: ["kind"],
      registers,
    }),
    misses: new CounterClass({
      name: "stowage_cache_misses_total",
      help: "Requests storage could not answer and the front fetched upstream, by kind (manifest, blob).",
      labelNames: ["kind"],
      registers,
    }),
    bytesServed: new CounterClass({
      name: "stowage_cache_served_bytes_total",
      help: "Bytes the cache front sent to callers, by source (storage, upstream).",
      labelNames: ["source"],
      registers,
    }),
    upstreamBytes: new CounterClass({
      name: "stowage_cache_upstream_bytes_total",
      help: "Blob bytes the cache front read from upstream registries (once per blob, whatever the number of callers).",
      registers,
    }),
    singleFlightWaiters: new GaugeClass({
      name: "stowage_cache_singleflight_waiters",
      help: "Callers streaming a blob that is still being fetched upstream.",
      registers,
    }),
    singleFlightJoined: new CounterClass({
      name: "stowage_cache_singleflight_joined_total",
      help: "Requests that joined an upstream fetch already under way instead of starting one, by kind.",
      labelNames: ["kind"],
      registers,
    }),
    staleTags: new CounterClass({
      name: "stowage_cache_stale_tags_total",
      help: "Tag requests answered with the last known digest because the upstream could not be asked.",
      registers,
    }),
    refused: new CounterClass({
      name: "stowage_cache_refused_total",
      help: "Requests the access check refused, by status (401: no or wrong credentials, 403: not allowed).",
      labelNames: ["status"],
      registers,
    }),
    fetchFailures: new CounterClass({
      name: "stowage_cache_fetch_failures_total",
      help: "Upstream fetches that failed, by reason (DigestMismatch, UpstreamUnavailable, ...).",
      labelNames: ["reason"],
      registers,
    }),
  };
}

// ---------------------------------------------------------------------------------------------
// stowage_cache_evict*: the controller's eviction of images nobody declared (src/controller/cachegc).
// ---------------------------------------------------------------------------------------------

export interface EvictionMetrics {
  /** Images (manifests) evicted from the cache registry. */
  evictions: Counter<never>;
  /** Bytes no longer referenced once those images were evicted (freed by the next garbage collection). */
  evictedBytes: Counter<never>;
  /** Bytes the images nobody declared take, as of the last eviction pass. */
  undeclaredBytes: Gauge<never>;
  /** Eviction passes, by result (ok, failed). */
  passes: Counter<"result">;
}

export function createEvictionMetrics(registry: Registry = createRegistry()): EvictionMetrics {
  const registers = [registry];
  return {
    evictions: new CounterClass({
      name: "stowage_cache_evictions_total",
      help: "Images nobody declared that the controller evicted from the cache registry (least recently pulled first).",
      registers,
    }),
    evictedBytes: new CounterClass({
      name: "stowage_cache_evicted_bytes_total",
      help: "Blob bytes no image references any more after evictions (freed by the registry's garbage collection).",
      registers,
    }),
    undeclaredBytes: new GaugeClass({
      name: "stowage_cache_undeclared_bytes",
      help: "Bytes the images nobody declared take in the cache registry, as of the last eviction pass.",
      registers,
    }),
    passes: new CounterClass({
      name: "stowage_cache_eviction_passes_total",
      help: "Eviction passes over the cache registry, by result (ok, failed).",
      labelNames: ["result"],
      registers,
    }),
  };
}

// ---------------------------------------------------------------------------------------------
// stowage_cache_registry_gc*: the registry's garbage collection run in the cluster by the
// controller (src/controller/cachegc/cluster.ts): read-only rollout, a Job, writable again.
// ---------------------------------------------------------------------------------------------

export interface RegistryGcMetrics {
  /** Garbage collections, by result (ok, failed). */
  runs: Counter<"result">;
  /** Failed garbage collections since the last one that succeeded. */
  consecutiveFailures: Gauge<never>;
  /** When a garbage collection last succeeded (Unix seconds); absent until one has. */
  lastSuccess: Gauge<never>;
  /** How long collections took, pause to resume. */
  duration: Histogram<"result">;
  /** 1 while this controller holds the cache registry read-only for a collection. */
  readOnly: Gauge<never>;
}

export function createRegistryGcMetrics(registry: Registry = createRegistry()): RegistryGcMetrics {
  const registers = [registry];
  return {
    runs: new CounterClass({
      name: "stowage_cache_registry_gc_runs_total",
      help: "Garbage collections of the cache registry the controller ran in the cluster, by result (ok, failed).",
      labelNames: ["result"],
      registers,
    }),
    consecutiveFailures: new GaugeClass({
      name: "stowage_cache_registry_gc_consecutive_failures",
      help: "Garbage collections of the cache registry that failed since the last one that succeeded.",
      registers,
    }),
    lastSuccess: new GaugeClass({
      name: "stowage_cache_registry_gc_last_success_timestamp_seconds",
      help: "When a garbage collection of the cache registry last succeeded (Unix seconds).",
      registers,
    }),
    duration: new HistogramClass({
      name: "stowage_cache_registry_gc_duration_seconds",
      help: "Garbage collections of the cache registry, from the read-only rollout to writes resumed, by result.",
      labelNames: ["result"],
      buckets: [10, 30, 60, 120, 300, 600, 1800, 3600],
      registers,
    }),
    readOnly: new GaugeClass({
      name: "stowage_cache_registry_read_only",
      help: "1 while the controller holds the cache registry read-only for a garbage collection.",
      registers,
    }),
  };
}

/** The node agent's own metrics (one agent per node: the scrape target's labels say which). */
export interface AgentMetrics {
  /** Pre-warmed images that disappeared from the node without the agent removing them. */
  imagesEvicted: Counter;
  /** Spec images the runtime reports pinned (kept from the kubelet's image GC), and not. */
  imagesPinned: Gauge;
}

export function createAgentMetrics(registry: Registry = createRegistry()): AgentMetrics {
  const registers = [registry];
  return {
    imagesEvicted: new CounterClass({
      name: "stowage_agent_images_evicted_total",
      help: "Pre-warmed images that were present and then vanished from the node without the agent removing them (the kubelet's image garbage collection, or someone's crictl rmi); each is pulled again.",
      registers,
    }),
    imagesPinned: new GaugeClass({
      name: "stowage_agent_images_pinned",
      help: "Spec images present on the node, by whether the runtime reports them pinned (kept from the kubelet's image GC: containerd 1.7+).",
      labelNames: ["pinned"],
      registers,
    }),
  };
}
