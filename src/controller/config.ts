/**
 * What the controller process is told by its flags / Helm values. Every field has a default
 * except the cache registry, which the deployment must name.
 */
export interface CacheConfig {
  /** host[:port] of the in-cluster cache registry. */
  registry: string;
  /** Speak plain HTTP to the cache registry. */
  insecure: boolean;
  /** Extra CAs for the cache registry. */
  caPem?: string[];
  credentials?: { username: string; password: string };
}

export interface ControllerConfig {
  cache: CacheConfig;
  /**
   * Other host[:port] names of the cache registry (the endpoint for nodes, the cache front): a
   * ModelImage naming one of them, or `cache.registry`, is refused, since the controller would read
   * another tenant's cached copy with its own cache credentials.
   */
  cacheAliases?: string[];
  /** Upstream hosts spoken to over plain HTTP. */
  insecureRegistries: string[];
  /** Extra CAs for upstream registries. */
  caPem?: string[];
  /** Watch only these namespaces (default: all). */
  namespaces?: string[];
  /** Reconcile workers (default 4). */
  workers: number;
  /** Mirror operations in flight across all ModelImages (default 4). */
  maxConcurrentSyncs: number;
  /**
   * Reconcile workers one upstream host may hold at once (default: half the workers, at least 1):
   * an upstream that never answers then cannot take every worker; the ModelImages it would have
   * held wait parked, without a worker, until one of its syncs ends.
   */
  maxSyncsPerUpstreamHost?: number;
  /**
   * The whole-sync deadline: a ModelImage sync (upstream checks and the copy) still running after
   * this long is aborted, reported as Synced=False UpstreamTimeout and retried with backoff
   * (default 30 min: a 40 GB image at 25 MB/s fits; the copy resumes from the blobs already there).
   */
  syncTimeoutMs: number;
  /**
   * The upstream manifest checks of one sync (a HEAD per variant) must answer within this (default
   * 20 s; a HEAD normally takes well under a second): past it the sync is UpstreamTimeout at once
   * rather than holding its worker for the transport's retries, and the host counts as slow.
   */
  checkTimeoutMs?: number;
  /**
   * How often the Secrets named by ModelImages that failed on credentials (AuthConfigInvalid,
   * AuthFailed) are read again, so a created or fixed Secret re-queues them (default 5 s).
   */
  pullSecretRecheckMs?: number;
  /**
   * How often a synced, unchanged image is read back from the cache with every blob hashed
   * (src/oci/verify.ts), re-copying what is corrupt; 0 turns it off (default 24 h, counted from
   * the controller's first check of the image, so a restart does not read every image at once).
   */
  verifyIntervalMs?: number;
  /** Keep cache tags when a ModelImage is deleted (default true). */
  retainOnDelete: boolean;
  /** 0..1: fraction of the sync interval added at random to each requeue (default 0.1). */
  syncJitter: number;
  /** Give up cache cleanup this long after deletionTimestamp and release the finalizer (default 5 min). */
  deletionTimeoutMs: number;
  /**
   * `status.variants[].lastCheckedAt` is rewritten by an unchanged check only when it is older
   * than this (default 1 h), so a steady state makes no API writes; the precise age of the
   * last check is in the `stowage_modelimage_sync_lag_seconds` metric instead.
   */
  checkedAtResolutionMs: number;
}

export const DEFAULT_CONTROLLER_CONFIG: Omit<ControllerConfig, "cache"> = {
  insecureRegistries: [],
  workers: 4,
  maxConcurrentSyncs: 4,
  syncTimeoutMs: 30 * 60_000,
  retainOnDelete: true,
  syncJitter: 0.1,
  deletionTimeoutMs: 5 * 60_000,
  checkedAtResolutionMs: 60 * 60_000,
};

/** Slots per upstream host: the configured number, else half the workers (at least 1). */
export function syncsPerUpstreamHost(
  config: Pick<ControllerConfig, "workers" | "maxSyncsPerUpstreamHost">,
): number {
  return config.maxSyncsPerUpstreamHost ?? Math.max(1, Math.floor(config.workers / 2));
}

/** A full config from the cache registry and any overrides. */
export function controllerConfig(
  cache: Partial<CacheConfig> & { registry: string },
  overrides: Partial<Omit<ControllerConfig, "cache">> = {},
): ControllerConfig {
  return {
    ...DEFAULT_CONTROLLER_CONFIG,
    ...overrides,
    cache: { insecure: false, ...cache },
  };
}
