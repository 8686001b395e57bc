/**
 * What one node's mirror did, as the NodeCache status says it (issue 15): each image's bytes by
 * source, and the peers this node stopped reading from. Types only from the mirror: the reconciler
 * imports this in every mode, and the peer endpoint and mirror are loaded only in planned mode.
 */
import type { FanoutSourceBytes, NodeCacheImage, PeerFailure } from "../../api/nodeCache.ts";
import { PEER_FAILURE_EXPIRY_MS } from "../config.ts";
import type { MirrorStats } from "./mirror.ts";

export { PEER_FAILURE_EXPIRY_MS };

/** Bytes by source (`cache` or a node). */
export type SourceTally = ReadonlyMap<string, number>;

/** One spec image's blob bytes by source so far (its fanout digests' counts in the mirror). */
export function imageTally(image: NodeCacheImage, stats: MirrorStats): Map<string, number> {
  const totals = new Map<string, number>();
  for (const digest of new Set((image.fanout ?? []).map((p) => p.digest))) {
    for (const [source, bytes] of stats.sources.get(digest) ?? [])
      totals.set(source, (totals.get(source) ?? 0) + bytes);
  }
  return totals;
}

/** A tally as status.images[].sources, less a baseline taken earlier (bytes of earlier pulls); sorted by source. */
export function sourcesOf(tally: SourceTally, baseline?: SourceTally): FanoutSourceBytes[] | undefined {
  const sources: FanoutSourceBytes[] = [];
  for (const [source, bytes] of tally) {
    const since = bytes - (baseline?.get(source) ?? 0);
    if (since > 0) sources.push({ source, bytes: since });
  }
  if (sources.length === 0) return undefined;
  return sources.sort((a, b) => (a.source < b.source ? -1 : 1));
}

/** status.images[].sources for one spec image: its blobs' bytes by source, sorted by source. */
export function imageSources(image: NodeCacheImage, stats: MirrorStats): FanoutSourceBytes[] | undefined {
  return sourcesOf(imageTally(image, stats));
}

/** status.peerFailures, sorted by node. */
export function peerFailures(stats: MirrorStats): PeerFailure[] {
  return [...stats.peerFailures.values()].sort((a, b) => (a.node < b.node ? -1 : 1));
}

/**
 * The failures to report now: what status already says (it survives an agent restart, the
 * mirror's memory does not) and what the mirror saw since, the later `since` of each peer, less
 * every entry `expiryMs` or more after its `since`. Sorted by node.
 */
export function currentPeerFailures(
  reported: readonly PeerFailure[],
  observed: readonly PeerFailure[],
  now: number,
  expiryMs: number = PEER_FAILURE_EXPIRY_MS,
): PeerFailure[] {
  const latest = new Map<string, PeerFailure>();
  for (const failure of [...reported, ...observed]) {
    const seen = latest.get(failure.node);
    if (!seen || sinceMs(failure) > sinceMs(seen)) latest.set(failure.node, failure);
  }
  return [...latest.values()]
    .filter((failure) => sinceMs(failure) + expiryMs > now)
    .sort((a, b) => (a.node < b.node ? -1 : 1));
}

/** When the first of these failures expires (ms since epoch), or undefined for none. */
export function nextPeerFailureExpiry(
  failures: readonly PeerFailure[],
  expiryMs: number = PEER_FAILURE_EXPIRY_MS,
): number | undefined {
  let next: number | undefined;
  for (const failure of failures) {
    const at = sinceMs(failure) + expiryMs;
    if (Number.isFinite(at) && (next === undefined || at < next)) next = at;
  }
  return next;
}

/** An unparseable `since` (written by hand?) counts as long ago: expired, not kept forever. */
function sinceMs(failure: PeerFailure): number {
  const ms = Date.parse(failure.since);
  return Number.isNaN(ms) ? Number.NEGATIVE_INFINITY : ms;
}
