import type { FanoutSettings } from "./fanout.ts";

/** Settings of the pre-warm planner (controller flags / Helm values). */
export interface PrewarmConfig {
  /**
   * URL at which nodes reach the cache registry (written to every NodeCache as `cacheEndpoint`).
   * Nodes have no cluster DNS in containerd's resolver, so this is usually a node-reachable IP or
   * hostPort. Default: the cache registry the controller uses, `http://` when it is insecure.
   */
  cacheEndpointForNodes?: string;
  /**
   * Fraction of a node's image filesystem capacity the planned images may take (default 0.7):
   * below the kubelet's image GC low threshold (imageGCLowThresholdPercent 80; it collects from
   * 85%), so pre-warming alone does not set off the GC that would evict what it pulled.
   */
  diskBudgetFraction: number;
  /** Remove the `stowage.dev/warming:NoSchedule` taint once a node holds its planned images (default true). */
  warmingTaint: boolean;
  /**
   * HMAC key shared with the cache front (`--node-token-secret-file`): with it every NodeCache
   * carries a node token for exactly the digests planned there (`spec.pullToken`).
   */
  nodeTokenSecret?: Buffer;
  /** Life of a node token (default 1 h); renewed once half of it has passed. */
  nodeTokenTtlMs?: number;
  /**
   * Upstream hosts the cache front pulls through for any image (`--pull-through-host`): written
   * into every NodeCache's mirrorHosts beside the declared images' hosts.
   */
  pullThroughHosts?: string[];
  /**
   * The cache front as the controller reaches it (`--prewarm-through-cache`): images the mirror
   * has not finished are resolved there and planned at once, the front single-flighting the
   * upstream read. Unset: a node pulls only once the ModelImage is Synced.
   */
  throughCache?: string;
  /**
   * Peer-assisted pre-warm (`--fanout-mode planned`, docs/fanout.md): NodeCache specs name a
   * source (the cache or a peer node) per blob piece. Unset: every node pulls from the cache.
   */
  fanout?: FanoutSettings;
}

/** The fan-out defaults the flags and the chart share (docs/fanout.md; the simulator's defaults). */
export const DEFAULT_FANOUT = {
  peerPort: 5007,
  peerSlots: 3,
  cacheSlots: 1,
  pieceBytes: 64 * 1024 * 1024,
} as const;

export const DEFAULT_PREWARM_CONFIG: PrewarmConfig = {
  diskBudgetFraction: 0.7,
  warmingTaint: true,
};

export function prewarmConfig(overrides: Partial<PrewarmConfig> = {}): PrewarmConfig {
  return { ...DEFAULT_PREWARM_CONFIG, ...overrides };
}

/** The cache endpoint nodes use: the configured one, or the controller's own view of the cache. */
export function cacheEndpointFor(
  config: PrewarmConfig,
  cache: { registry: string; insecure: boolean },
): string {
  if (config.cacheEndpointForNodes) return config.cacheEndpointForNodes.replace(/\/+$/, "");
  return `${cache.insecure ? "http" : "https"}://${cache.registry}`;
}
