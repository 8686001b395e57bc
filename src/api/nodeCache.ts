/**
 * The NodeCache API (`stowage.dev/v1alpha1`, cluster-scoped, one per node, named after the node):
 * the contract between the controller's pre-warm planner, which writes `spec`, and the node agent,
 * which writes `status`. The CRD in `crds/stowage.dev_nodecaches.yaml` is the truth;
 * `test/api/nodeCache.test.ts` keeps this file in step.
 */
import type { KubeObject, ObjectMeta, ResourceType } from "../kube/client.ts";
import type { Condition } from "../kube/conditions.ts";
import { type API_VERSION, GROUP, VERSION } from "./modelImage.ts";

export const NODE_CACHE_KIND = "NodeCache";
export const NODE_CACHE_PLURAL = "nodecaches";
export const NODE_CACHE_SINGULAR = "nodecache";
export const NODE_CACHE_SHORT_NAME = "nc";
export const NODE_CACHE_CRD_NAME = `${NODE_CACHE_PLURAL}.${GROUP}`;

/** For `KubeClient.resource(...)`, informers and the work queue. */
export const NodeCacheResource = {
  group: GROUP,
  version: VERSION,
  plural: NODE_CACHE_PLURAL,
  kind: NODE_CACHE_KIND,
  namespaced: false,
} as const satisfies ResourceType;

/** Per-image states the agent reports. */
export const NodeImageStates = {
  /** In spec, not yet being pulled (queued behind the agent's concurrency). */
  Pending: "Pending",
  Pulling: "Pulling",
  Present: "Present",
  /** The last attempt failed; the agent retries with backoff. */
  Failed: "Failed",
  /** Dropped from spec; the agent is removing what it pulled. */
  Removing: "Removing",
} as const;
export type NodeImageState = (typeof NodeImageStates)[keyof typeof NodeImageStates];

/** Condition types on NodeCache status (written by the agent). */
export const NodeCacheConditionTypes = {
  Ready: "Ready",
  /** containerd hosts.toml points the mirror hosts at the cache (False when config_path is unset). */
  MirrorConfigured: "MirrorConfigured",
} as const;

/** A ModelImage variant that wants an image on a node. */
export interface ImageRequester {
  namespace: string;
  name: string;
  variant?: string;
}

export interface NodeCacheImage {
  /** The original (upstream) reference the kubelet will use: `docker.io/acme/llama:1.0`. */
  image: string;
  /** The mirrored single-platform manifest digest for this node; pull `<image name>@<digest>`. */
  digest: string;
  /** Repository in the cache registry, upstream host first: `docker.io/acme/llama`. */
  cacheRepository?: string;
  /** Compressed size of this platform's config and layers (the disk budget counts it). */
  sizeBytes?: number;
  /** Higher first. */
  priority?: number;
  requestedBy?: ImageRequester[];
  /**
   * The fan-out plan for this image's blobs (docs/fanout.md, src/controller/fanout/toSpec.ts): one
   * entry per piece, in offset order per digest. Blobs without entries come from the cache as today.
   */
  fanout?: FanoutPiece[];
}

/** The source name for "read this piece from the cache registry"; any other value is a node name. */
export const FANOUT_CACHE_SOURCE = "cache";

export interface FanoutPiece {
  digest: string;
  offset: number;
  length: number;
  /** `cache`, or the node to read the piece from (its endpoint is in spec.peers). */
  source: string;
  /** Depth in the digest's tree: 1 = fed by the cache or by a node that already holds it. */
  wave: number;
}

/** A peer's fan-out endpoint: the node's IP and its agent's peer port, `http://10.0.0.7:5007`. */
export interface FanoutPeer {
  node: string;
  endpoint: string;
}

export interface NodeCacheSpec {
  nodeName: string;
  /** URL at which the node reaches the cache registry without cluster DNS: `http://10.0.0.5:5000`. */
  cacheEndpoint?: string;
  /** Upstream hosts the agent writes containerd hosts.toml for. */
  mirrorHosts?: string[];
  images?: NodeCacheImage[];
  /**
   * A node token (src/cache/nodeToken.ts) for exactly the digests in `images`: the agent passes it
   * to the cache front in CRI PullImage auth so private images are served to this node.
   */
  pullToken?: NodePullToken;
  /** Endpoints of the nodes that `images[].fanout` names as sources. */
  peers?: FanoutPeer[];
  /**
   * A peer token (`stwp1`, src/agent/peer/token.ts) naming this node as the receiver and the digests
   * its fanout entries assign to peers; the agent presents it to those peers. Same shape as pullToken.
   */
  peerToken?: NodePullToken;
}

export interface NodePullToken {
  /** `stwn1.<payload>.<signature>`: a credential, never logged. */
  token: string;
  /** RFC 3339; the controller renews the token at half its life. */
  expiresAt: string;
}

export interface NodeImageStatus {
  image: string;
  digest: string;
  state: NodeImageState;
  reason?: string;
  message?: string;
  bytes?: number;
  startedAt?: string;
  finishedAt?: string;
  ownedByAgent?: boolean;
  /** Present and pinned by the runtime: kept from the kubelet's image GC (containerd 1.7+). */
  pinned?: boolean;
  /** Bytes of this image's fanned-out blobs by the source that served them (`cache` or a node). */
  sources?: FanoutSourceBytes[];
}

export interface FanoutSourceBytes {
  source: string;
  bytes: number;
}

/** A peer this node's mirror stopped reading from; the planner treats it as unavailable here. */
export interface PeerFailure {
  node: string;
  /** Failed: the request failed or the bytes did not verify; Stalled: no byte within the stall timeout. */
  reason: "Failed" | "Stalled";
  /** RFC 3339. */
  since: string;
}

export interface ImageFsStatus {
  capacityBytes?: number;
  usedBytes?: number;
  availableBytes?: number;
}

export interface NodeCacheCounts {
  images?: number;
  present?: number;
  pulling?: number;
  failed?: number;
}

export interface NodeCacheStatus {
  agentVersion?: string;
  heartbeatTime?: string;
  /** containerd's registry config_path; empty when containerd has none (see MirrorConfigured). */
  containerdConfigPath?: string;
  imageFs?: ImageFsStatus;
  counts?: NodeCacheCounts;
  /** DISK USED column: `12.3 GiB / 100 GiB`. */
  diskUsed?: string;
  images?: NodeImageStatus[];
  peerFailures?: PeerFailure[];
  conditions?: Condition[];
}

export interface NodeCache extends KubeObject {
  apiVersion: typeof API_VERSION;
  kind: typeof NODE_CACHE_KIND;
  metadata: ObjectMeta;
  spec: NodeCacheSpec;
  status?: NodeCacheStatus;
}

/** The status entry for a spec image (matched by digest), if the agent reported one. */
export function imageStatusOf(nc: NodeCache | undefined, digest: string): NodeImageStatus | undefined {
  return nc?.status?.images?.find((s) => s.digest === digest);
}

/** The printer-column counts for a list of image statuses (the agent writes these). */
export function countImages(images: readonly NodeImageStatus[]): Required<NodeCacheCounts> {
  return {
    images: images.length,
    present: images.filter((i) => i.state === NodeImageStates.Present).length,
    pulling: images.filter((i) => i.state === NodeImageStates.Pulling || i.state === NodeImageStates.Pending)
      .length,
    failed: images.filter((i) => i.state === NodeImageStates.Failed).length,
  };
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** `1536` → `1.5 KiB`; whole numbers below 10 keep one decimal (`1.0 GiB`), larger ones none. */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  if (unit === 0) return `${value} B`;
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${UNITS[unit]}`;
}

/** The DISK USED column: `12 GiB / 100 GiB`, or just the used bytes when the capacity is unknown. */
export function diskUsedColumn(fs: ImageFsStatus): string | undefined {
  if (fs.usedBytes === undefined) return undefined;
  if (fs.capacityBytes === undefined) return formatBytes(fs.usedBytes);
  return `${formatBytes(fs.usedBytes)} / ${formatBytes(fs.capacityBytes)}`;
}
