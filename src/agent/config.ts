/** What one node agent is told to do: `stowage agent`'s flags, and the defaults tests start from. */
export interface AgentConfig {
  nodeName: string;
  agentVersion: string;
  /** Write containerd hosts.toml for `spec.mirrorHosts` (default true). */
  mirrorConfig: boolean;
  /** containerd's registry `config_path` (hosts.toml dirs live here). */
  containerdConfigPath: string;
  /** containerd's config.toml, read to check that `config_path` is set; optional. */
  containerdConfigFile?: string;
  /** containerd's root (e.g. /var/lib/containerd), if mounted: image filesystem capacity when the runtime's mountpoint is not visible. */
  containerdRoot?: string;
  /** skip_verify for the cache host in hosts.toml. */
  cacheSkipVerify?: boolean;
  /**
   * PEM file with the CA of an HTTPS cache, copied beside each hosts.toml for containerd. Read on
   * every pass, so a renewed CA reaches the node; a missing file means no CA (the cache's
   * certificate must then chain to one the node trusts already).
   */
  cacheCaFile?: string;
  maxConcurrentPulls: number;
  /** A pull with no progress for this long is cancelled and retried. */
  stallTimeoutMs: number;
  /** status.heartbeatTime is refreshed this often: the only periodic write. */
  heartbeatIntervalMs: number;
  /** How often the runtime is re-checked without any change (images removed behind our back). */
  resyncIntervalMs: number;
  /** Backoff between attempts of a failing pull. */
  retryInitialMs: number;
  retryMaxMs: number;
  /**
   * How often a pull's bytes so far reach status while it runs (`pulling 42%`), read from
   * containerd's content store under containerdRoot; 0 reports bytes only at Present.
   */
  progressIntervalMs?: number;
  /**
   * Label present spec images so the runtime pins them against the kubelet's image GC
   * (containerd 1.7+; see pin.ts), and unlabel them when they leave the spec (default true).
   */
  pinImages?: boolean;
  /**
   * Fan-out (issue 15): the mirrors hosts.toml lists before the cache: this agent's own mirror
   * (`planned` mode) or an external peer layer such as Spegel (`external` mode).
   */
  fanoutMirror?: { localMirror?: { port: number }; externalMirror?: string };
  /**
   * How long a peer failure stays in status.peerFailures after its `since` (planned mode;
   * default PEER_FAILURE_EXPIRY_MS below, which says why ten minutes).
   */
  peerFailureExpiryMs?: number;
}

/**
 * How long a peer failure stays in status.peerFailures after its `since` (default of
 * --fanout-failure-expiry). The controller plans no piece from a peer any NodeCache lists there,
 * so an entry that never left would keep a recovered peer out of every later plan. Ten minutes:
 * - long enough that a peer that is really gone (a node rebooting, an agent crash-looping) is not
 *   planned again and again: each retry costs its new receivers a stall timeout per blob and the
 *   controller a re-plan of their pieces. It also outlasts one fan-out
 *   (seconds to a few minutes for a 20 GB image, docs/fanout.md), so a failed peer is not handed
 *   children again within the rollout that saw it fail;
 * - short enough that a peer back after a restart serves the next rollout, rather than leaving
 *   its share to the cache for the rest of the agent's life.
 * A peer that fails again when planned again is reported again, with a new `since`.
 */
export const PEER_FAILURE_EXPIRY_MS = 10 * 60_000;

export const defaultAgentConfig: Omit<AgentConfig, "nodeName" | "agentVersion"> = {
  mirrorConfig: true,
  containerdConfigPath: "/etc/containerd/certs.d",
  maxConcurrentPulls: 2,
  stallTimeoutMs: 5 * 60_000,
  heartbeatIntervalMs: 60_000,
  resyncIntervalMs: 30_000,
  retryInitialMs: 10_000,
  retryMaxMs: 5 * 60_000,
  progressIntervalMs: 10_000,
  pinImages: true,
};
