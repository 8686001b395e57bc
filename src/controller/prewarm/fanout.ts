/**
 * Peer-assisted pre-warm in the pre-warm pass (issue 15, docs/fanout.md): from the NodeCache
 * specs the pre-warm plan wrote and what the agents report, the fan-out planner
 * (src/controller/fanout/plan.ts) picks a source for every blob a node still lacks, and each
 * spec gets its pieces (`images[].fanout`), the endpoints of the peers they name (`peers`) and a
 * peer token for exactly the digests read from peers (`peerToken`).
 *
 * What the planner is told, per node:
 * - holds: the blobs of the images the agent reports Present (verified by containerd);
 * - wants: the blobs of its spec images; an image whose manifest the resolver has not read
 *   this process is left out, and its blobs come from the cache as without fan-out;
 * - peerSlots 0 when the node cannot serve: no InternalIP, or not Ready;
 * - zone from `topology.kubernetes.io/zone`.
 * Every NodeCache's `status.peerFailures` makes that peer unavailable (the agent drops an entry
 * after a while, so a recovered peer serves again), and the previous pieces' sources are the
 * planner's `current`, so a steady cluster keeps its tree and its specs are not rewritten.
 *
 * Pure: no clock (the caller passes `now`), no I/O.
 */

import { issuePeerToken, verifyPeerToken } from "../../agent/peer/token.ts";
import type { NodeCache, NodeCacheSpec, NodePullToken } from "../../api/nodeCache.ts";
import {
  type FanoutAssignment,
  type FanoutNode,
  type FanoutReplan,
  planFanout,
  type UnavailablePeer,
} from "../fanout/plan.ts";
import { assignmentsOfSpec, fanoutSpecs, pieceLayout, withFanout } from "../fanout/toSpec.ts";
import type { ImageBlob } from "./images.ts";
import { internalIpOf, isNodeReady, type PlannerNode } from "./nodes.ts";
import { DEFAULT_NODE_TOKEN_TTL_MS } from "./pullToken.ts";

export const ZONE_LABEL = "topology.kubernetes.io/zone";

export interface FanoutSettings {
  /** The fan-out secret every agent verifies peer tokens with (`--fanout-secret-file`). */
  secret: Buffer;
  /** The agents' peer port: a node's endpoint is `http://<InternalIP>:<peerPort>`. */
  peerPort: number;
  /** k: nodes one node feeds per blob. */
  peerSlots: number;
  /** Nodes the cache feeds per blob (its copies of each blob). */
  cacheSlots: number;
  /** Piece size; the last piece of a blob is shorter. */
  pieceBytes: number;
  /** Life of a peer token (default 1 h, as node tokens); renewed once half of it has passed. */
  tokenTtlMs?: number;
}

export interface FanoutInput {
  specs: ReadonlyMap<string, NodeCacheSpec>;
  nodes: readonly PlannerNode[];
  nodeCaches: ReadonlyMap<string, NodeCache>;
  /** Config and layers of a single-platform manifest digest, when known. */
  blobsOf: (digest: string) => readonly ImageBlob[] | undefined;
  settings: FanoutSettings;
  now: number;
}

export interface FanoutResult {
  /** The specs with fanout, peers and peerToken set (a node the plan gives nothing keeps none). */
  specs: Map<string, NodeCacheSpec>;
  /** Assignments whose source changed since the specs as written, and why. */
  replanned: FanoutReplan[];
  /** When the earliest peer token is due for renewal (Infinity without tokens). */
  nextRenewal: number;
}

/** `http://10.0.0.7:5007`, `http://[fd00::7]:5007`. */
export function peerEndpoint(ip: string, port: number): string {
  return `http://${ip.includes(":") ? `[${ip}]` : ip}:${port}`;
}

export function planPeerFanout(input: FanoutInput): FanoutResult {
  const { settings, now } = input;
  const nodesByName = new Map(input.nodes.map((n) => [n.metadata?.name ?? "", n]));
  const blobOfImage = (digest: string) => input.blobsOf(digest) ?? [];
  // Blobs of size 0 cannot be cut into pieces; they come from the cache.
  const blobSizes = new Map<string, number>();
  for (const [nodeName, spec] of input.specs) {
    for (const image of [...(spec.images ?? []), ...(input.nodeCaches.get(nodeName)?.status?.images ?? [])]) {
      for (const blob of blobOfImage(image.digest)) if (blob.size > 0) blobSizes.set(blob.digest, blob.size);
    }
  }
  const layout = pieceLayout(
    [...blobSizes].map(([digest, size]) => ({ digest, size })),
    settings.pieceBytes,
  );
  const piecesOf = (digests: Iterable<string>) => [...digests].flatMap((d) => layout.byBlob.get(d) ?? []);

  const planNodes: FanoutNode[] = [];
  const endpoints = new Map<string, string>();
  const current: FanoutAssignment[] = [];
  const unavailable = new Map<string, UnavailablePeer>();
  for (const [nodeName, spec] of input.specs) {
    const node = nodesByName.get(nodeName);
    if (!node) continue;
    const nc = input.nodeCaches.get(nodeName);
    const holds = new Set<string>();
    for (const image of nc?.status?.images ?? []) {
      if (image.state !== "Present") continue;
      for (const blob of blobOfImage(image.digest)) holds.add(blob.digest);
    }
    const wants = new Set<string>();
    for (const image of spec.images ?? [])
      for (const blob of blobOfImage(image.digest)) wants.add(blob.digest);
    const ip = internalIpOf(node);
    if (ip) endpoints.set(nodeName, peerEndpoint(ip, settings.peerPort));
    const zone = node.metadata?.labels?.[ZONE_LABEL];
    planNodes.push({
      name: nodeName,
      ...(zone ? { zone } : {}),
      holds: piecesOf(holds),
      wants: piecesOf(wants),
      ...(ip && isNodeReady(node) ? {} : { peerSlots: 0 }),
    });
    current.push(...assignmentsOfSpec(nodeName, nc?.spec.images, layout));
    for (const failure of nc?.status?.peerFailures ?? []) {
      if (!unavailable.has(failure.node))
        unavailable.set(failure.node, { node: failure.node, reason: failure.reason });
    }
  }

  const plan = planFanout({
    config: { peerSlots: settings.peerSlots, cacheSlots: settings.cacheSlots },
    blobs: layout.units,
    nodes: planNodes,
    unavailablePeers: [...unavailable.values()],
    current,
  });
  const perNode = fanoutSpecs(plan, { layout, endpoints });

  const specs = new Map<string, NodeCacheSpec>();
  let nextRenewal = Number.POSITIVE_INFINITY;
  for (const [nodeName, spec] of input.specs) {
    const { peers: _peers, peerToken: _token, ...base } = spec;
    const fanout = perNode.get(nodeName);
    const images = spec.images
      ? withFanout(spec.images, fanout, (image) => blobOfImage(image.digest).map((b) => b.digest))
      : undefined;
    const peerToken = fanout?.peerDigests.length
      ? peerTokenFor(
          nodeName,
          fanout.peerDigests,
          input.nodeCaches.get(nodeName)?.spec.peerToken,
          settings,
          now,
        )
      : undefined;
    if (peerToken) nextRenewal = Math.min(nextRenewal, renewalDue(peerToken, settings));
    specs.set(nodeName, {
      ...base,
      ...(images ? { images } : {}),
      ...(fanout && fanout.peers.length > 0 ? { peers: fanout.peers } : {}),
      ...(peerToken ? { peerToken } : {}),
    });
  }
  return { specs, replanned: plan.replanned, nextRenewal };
}

const ttlOf = (settings: FanoutSettings) => settings.tokenTtlMs ?? DEFAULT_NODE_TOKEN_TTL_MS;

function renewalDue(token: NodePullToken, settings: FanoutSettings): number {
  return Date.parse(token.expiresAt) - ttlOf(settings) / 2;
}

/** The current token while it names the same receiver and digests and has over half its life left; a new one otherwise. */
function peerTokenFor(
  receiver: string,
  digests: string[],
  current: NodePullToken | undefined,
  settings: FanoutSettings,
  now: number,
): NodePullToken {
  if (current && renewalDue(current, settings) > now) {
    try {
      const claims = verifyPeerToken(settings.secret, current.token, now);
      if (
        claims.receiver === receiver &&
        claims.exp * 1000 === Date.parse(current.expiresAt) &&
        claims.digests.length === digests.length &&
        claims.digests.every((digest, i) => digest === digests[i])
      )
        return current;
    } catch {
      // another secret (rotated), malformed or expired: sign a new one
    }
  }
  const exp = Math.floor((now + ttlOf(settings)) / 1000);
  return {
    token: issuePeerToken(settings.secret, { receiver, digests, exp }),
    expiresAt: new Date(exp * 1000).toISOString(),
  };
}
