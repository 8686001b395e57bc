/**
 * Between the fan-out planner (plan.ts) and NodeCache spec entries (src/api/nodeCache.ts): pure,
 * so the pre-warm pass's wiring is a few calls.
 *
 * The planner plans every piece of a blob as a digest of its own (`<digest>@<offset>`), as the
 * simulator's piece mode does (docs/fanout.md): each piece gets its own tree, so a node feeds
 * other nodes for about one piece in k of every blob instead of feeding k nodes the whole of a
 * few blobs. With one tree per blob, the nodes inside a blob's tree had to upload k copies of it
 * while the others uploaded nothing, and that tree ran at 1/k of a node's uplink.
 */
import {
  FANOUT_CACHE_SOURCE,
  type FanoutPeer,
  type FanoutPiece,
  type NodeCacheImage,
} from "../../api/nodeCache.ts";
import { StowageError } from "../../util/errors.ts";
import type { FanoutAssignment, FanoutBlob, FanoutPlan } from "./plan.ts";

/** One piece of a blob, as the planner sees it (its id is the planner's digest). */
export interface PieceUnit {
  digest: string;
  offset: number;
  length: number;
}

/** The pieces of a set of blobs, for planning and for reading a plan back. */
export interface PieceLayout {
  /** One planner blob per piece, blob by blob in offset order (the planner rotates its trees by this order). */
  units: FanoutBlob[];
  /** Piece id → the piece. */
  pieces: Map<string, PieceUnit>;
  /** Blob digest → its piece ids in offset order. */
  byBlob: Map<string, string[]>;
}

/** What one receiving node's NodeCache spec gets from a plan. */
export interface NodeFanoutSpec {
  /** Pieces by blob digest, in offset order. */
  pieces: Map<string, FanoutPiece[]>;
  /** The endpoints of the peers those pieces name, sorted by node. */
  peers: FanoutPeer[];
  /** The blob digests with a piece assigned to a peer, sorted: what the node's peer token must name. */
  peerDigests: string[];
}

function invalid(message: string): StowageError {
  return new StowageError("InvalidArgument", `fan-out spec: ${message}`);
}

export const pieceId = (digest: string, offset: number): string => `${digest}@${offset}`;

/** Cuts each blob into pieces of `pieceBytes` (the last one shorter). */
export function pieceLayout(
  blobs: readonly { digest: string; size: number }[],
  pieceBytes: number,
): PieceLayout {
  if (!Number.isSafeInteger(pieceBytes) || pieceBytes < 1) {
    throw invalid(`pieceBytes must be a positive integer, got ${pieceBytes}`);
  }
  const layout: PieceLayout = { units: [], pieces: new Map(), byBlob: new Map() };
  for (const { digest, size } of blobs) {
    if (!Number.isSafeInteger(size) || size < 1) throw invalid(`no positive size for ${digest}`);
    if (layout.byBlob.has(digest)) continue;
    const ids: string[] = [];
    for (let offset = 0; offset < size; offset += pieceBytes) {
      const id = pieceId(digest, offset);
      const length = Math.min(pieceBytes, size - offset);
      layout.pieces.set(id, { digest, offset, length });
      layout.units.push({ digest: id, sizeBytes: length, declared: true });
      ids.push(id);
    }
    layout.byBlob.set(digest, ids);
  }
  return layout;
}

/** The previous plan's assignments as a spec carries them (pieces of the current layout only). */
export function assignmentsOfSpec(
  node: string,
  images: readonly NodeCacheImage[] | undefined,
  layout: PieceLayout,
): FanoutAssignment[] {
  const out = new Map<string, FanoutAssignment>();
  for (const image of images ?? []) {
    for (const piece of image.fanout ?? []) {
      const id = pieceId(piece.digest, piece.offset);
      if (layout.pieces.get(id)?.length !== piece.length || out.has(id)) continue;
      out.set(id, {
        node,
        digest: id,
        source:
          piece.source === FANOUT_CACHE_SOURCE ? { kind: "cache" } : { kind: "peer", node: piece.source },
        wave: piece.wave,
      });
    }
  }
  return [...out.values()];
}

/** Every receiving node's spec entries, keyed by node name. */
export function fanoutSpecs(
  plan: FanoutPlan,
  options: { layout: PieceLayout; endpoints: ReadonlyMap<string, string> },
): Map<string, NodeFanoutSpec> {
  const { layout, endpoints } = options;
  const byNode = new Map<string, NodeFanoutSpec>();
  for (const assignment of plan.assignments) {
    const piece = layout.pieces.get(assignment.digest);
    if (!piece)
      throw invalid(`${assignment.node} was assigned ${assignment.digest}, which is no piece of the layout`);
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
    const source = assignment.source.kind === "cache" ? FANOUT_CACHE_SOURCE : assignment.source.node;
    const list = spec.pieces.get(piece.digest) ?? [];
    list.push({
      digest: piece.digest,
      offset: piece.offset,
      length: piece.length,
      source,
      wave: assignment.wave,
    });
    spec.pieces.set(piece.digest, list);
    if (assignment.source.kind === "peer") {
      const peer = assignment.source.node;
      spec.peerDigests.push(piece.digest);
      if (!spec.peers.some((p) => p.node === peer)) {
        spec.peers.push({ node: peer, endpoint: endpoints.get(peer) as string });
      }
    }
  }
  for (const spec of byNode.values()) {
    for (const list of spec.pieces.values()) list.sort((a, b) => a.offset - b.offset);
    spec.peers.sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0));
    spec.peerDigests = [...new Set(spec.peerDigests)].sort();
  }
  return byNode;
}

/**
 * A node's spec images with `fanout` set from its plan: each image gets the pieces of its own
 * blobs (`blobsOf(image)`: config and layers of that image's manifest), a blob shared by two
 * images is listed under both. An image with no assigned piece has no `fanout`.
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
