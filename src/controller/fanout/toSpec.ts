/**
 * From a fan-out plan (plan.ts) to NodeCache spec entries (src/api/nodeCache.ts): pure, so the
 * pre-warm planner's wiring is a call. The planner decides one source per (node, digest); the
 * spec carries one entry per piece (docs/fanout.md "Wiring it in") so the receiving agent can
 * fetch, verify progress and fall back to the cache piece by piece, and so a later planner may
 * give pieces of one blob different sources without changing the contract.
 */
import {
  FANOUT_CACHE_SOURCE,
  type FanoutPeer,
  type FanoutPiece,
  type NodeCacheImage,
} from "../../api/nodeCache.ts";
import { StowageError } from "../../util/errors.ts";
import type { FanoutAssignment, FanoutPlan } from "./plan.ts";

export interface ToSpecOptions {
  /** Piece size in bytes (the simulator's default is 64 MiB); the last piece of a blob is shorter. */
  pieceBytes: number;
  /** Compressed size of every digest the plan may assign. */
  blobSizes: ReadonlyMap<string, number>;
  /** Each node's agent peer endpoint (`http://<node IP>:<peer port>`). */
  endpoints: ReadonlyMap<string, string>;
}

/** What one receiving node's NodeCache spec gets from a plan. */
export interface NodeFanoutSpec {
  /** Pieces by blob digest, in offset order. */
  pieces: Map<string, FanoutPiece[]>;
  /** The endpoints of the peers those pieces name, sorted by node. */
  peers: FanoutPeer[];
  /** The digests assigned to a peer, sorted: what the node's peer token must name. */
  peerDigests: string[];
}

function invalid(message: string): StowageError {
  return new StowageError("InvalidArgument", `fan-out spec: ${message}`);
}

function piecesOf(assignment: FanoutAssignment, size: number, pieceBytes: number): FanoutPiece[] {
  const source = assignment.source.kind === "cache" ? FANOUT_CACHE_SOURCE : assignment.source.node;
  const pieces: FanoutPiece[] = [];
  for (let offset = 0; offset < size; offset += pieceBytes) {
    pieces.push({
      digest: assignment.digest,
      offset,
      length: Math.min(pieceBytes, size - offset),
      source,
      wave: assignment.wave,
    });
  }
  return pieces;
}

/** Every receiving node's spec entries, keyed by node name. */
export function fanoutSpecs(plan: FanoutPlan, options: ToSpecOptions): Map<string, NodeFanoutSpec> {
  const { pieceBytes, blobSizes, endpoints } = options;
  if (!Number.isSafeInteger(pieceBytes) || pieceBytes < 1) {
    throw invalid(`pieceBytes must be a positive integer, got ${pieceBytes}`);
  }
  const byNode = new Map<string, NodeFanoutSpec>();
  for (const assignment of plan.assignments) {
    const size = blobSizes.get(assignment.digest);
    if (size === undefined || !Number.isSafeInteger(size) || size < 1) {
      throw invalid(`no positive size for ${assignment.digest} (assigned to ${assignment.node})`);
    }
    if (assignment.source.kind === "peer" && !endpoints.has(assignment.source.node)) {
      throw invalid(
        `${assignment.node} reads ${assignment.digest} from ${assignment.source.node}, which has no peer endpoint`,
      );
    }
    let spec = byNode.get(assignment.node);
    if (!spec) {
      spec = { pieces: new Map(), peers: [], peerDigests: [] };
      byNode.set(assignment.node, spec);
    }
    spec.pieces.set(assignment.digest, piecesOf(assignment, size, pieceBytes));
    if (assignment.source.kind === "peer") {
      const peer = assignment.source.node;
      spec.peerDigests.push(assignment.digest);
      if (!spec.peers.some((p) => p.node === peer)) {
        spec.peers.push({ node: peer, endpoint: endpoints.get(peer) as string });
      }
    }
  }
  for (const spec of byNode.values()) {
    spec.peers.sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0));
    spec.peerDigests = [...new Set(spec.peerDigests)].sort();
  }
  return byNode;
}

/**
 * A node's spec images with `fanout` set from its plan: each image gets the pieces of its own
 * blobs (`blobsOf(image)`: config and layers of that image's manifest), a blob shared by two
 * images is listed under both. An image with no assigned blob has no `fanout`.
 */
export function withFanout(
  images: readonly NodeCacheImage[],
  spec: NodeFanoutSpec | undefined,
  blobsOf: (image: NodeCacheImage) => readonly string[],
): NodeCacheImage[] {
  return images.map((image) => {
    const { fanout: _previous, ...rest } = image;
    const pieces = spec ? blobsOf(image).flatMap((digest) => spec.pieces.get(digest) ?? []) : [];
    return pieces.length > 0 ? { ...rest, fanout: pieces } : rest;
  });
}
