/**
 * The fan-out planner (issue 15): for every blob a node wants, which source it fetches from —
 * the cache registry or a peer node — so that the bytes leaving the cache stay flat as the
 * cluster grows. Pure and deterministic: no clock, no randomness, no I/O; the controller passes
 * what it observed (NodeCache status: who holds which digest; NodeCache spec: the sources it
 * assigned last time; the agents' reports of peers that failed or stalled) and writes the result.
 *
 * Shape, per digest: a tree rooted at the cache and at the nodes that already hold the digest.
 * The cache feeds at most `cacheSlots` nodes and every node at most `peerSlots` (k) nodes, so
 * the first wave comes from the cache and each node, once it has the blob, feeds up to k more.
 * The whole tree is planned ahead (a node's source may still be pulling; the node starts when
 * its source has the blob) so the controller writes each NodeCache once per plan, not once per
 * blob per wave. Each digest gets its own order of nodes (see Rotation), so the nodes that
 * serve one layer are mostly not the ones serving the next: the upload work is spread over the
 * cluster instead of landing on the same few interior nodes.
 *
 * Level-triggered and idempotent: assignments from the previous plan are kept while they are
 * still valid (the node still needs the blob, its source is still there, serving and within
 * capacity), so planning twice from the same state gives the same answer, and a peer that fails
 * or stalls changes only the assignments of the nodes it was feeding: each orphaned child is
 * re-attached with its own subtree below it unchanged. A node that joins later is attached to
 * the nearest source with a free slot: same zone first, then the shallowest wave (nodes that
 * already hold the blob are wave 0), then a peer before the cache.
 *
 * Only declared images fan out: a digest the caller did not declare (pulled through the cache
 * front on a miss) gets no assignment; containerd reads it from the cache as today.
 */
import { StowageError } from "../../util/errors.ts";

export type FanoutSource = { kind: "cache" } | { kind: "peer"; node: string };

export const CACHE_SOURCE: FanoutSource = Object.freeze({ kind: "cache" });

export interface FanoutConfig {
  /** k: how many nodes one node feeds per digest at a time. */
  peerSlots: number;
  /** How many nodes the cache feeds per digest at a time (the first wave). */
  cacheSlots: number;
}

export interface FanoutBlob {
  digest: string;
  sizeBytes: number;
  /** Part of a declared ModelImage. Undeclared (pull-through) blobs are never fanned out. */
  declared: boolean;
}

export interface FanoutNode {
  name: string;
  /** topology.kubernetes.io/zone, when the node has it. */
  zone?: string;
  /** Digests the node's containerd holds, complete and verified (NodeCache status). */
  holds: readonly string[];
  /** Digests the node should get (NodeCache spec images' layers). */
  wants: readonly string[];
  /** Overrides config.peerSlots for this node (e.g. 0 to never serve peers). */
  peerSlots?: number;
  /** The node's peer-serving rate limit; among equal choices the faster source is preferred. */
  servingBytesPerSecond?: number;
}

export type UnavailableReason = "Failed" | "Stalled";

export interface UnavailablePeer {
  node: string;
  reason: UnavailableReason;
}

export interface FanoutAssignment {
  node: string;
  digest: string;
  source: FanoutSource;
  /** Depth in the digest's tree: 1 = fed by the cache or by a node that already holds it. */
  wave: number;
}

export interface FanoutInput {
  config: FanoutConfig;
  blobs: readonly FanoutBlob[];
  nodes: readonly FanoutNode[];
  /** Peers not to read from (agents reported them failing or stalling); they may still pull. */
  unavailablePeers?: readonly UnavailablePeer[];
  /** The previous plan's assignments (NodeCache spec as written). */
  current?: readonly FanoutAssignment[];
}

export type ReplanReason =
  /** The source peer was reported failed or stalled. */
  | "PeerUnavailable"
  /** The source peer is no longer a node of the plan (deleted, NotReady). */
  | "PeerGone"
  /** The source had more children than its slots allow (slots lowered). */
  | "OverCapacity"
  /** The previous assignments formed a loop (never produced by this planner). */
  | "Cycle";

export interface FanoutReplan {
  node: string;
  digest: string;
  from: FanoutSource;
  to: FanoutSource;
  reason: ReplanReason;
}

export type SkipReason = "Undeclared" | "UnknownDigest";

export interface FanoutPlan {
  /** Every (node, digest) the node wants and lacks, sorted by node then digest. */
  assignments: FanoutAssignment[];
  /** Previous assignments whose source changed, and why. Sorted like assignments. */
  replanned: FanoutReplan[];
  /** Wanted digests that are not fanned out. */
  skipped: { node: string; digest: string; reason: SkipReason }[];
}

function invalid(message: string): StowageError {
  return new StowageError("InvalidArgument", `fan-out plan: ${message}`);
}

function checkSlots(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0) {
    throw invalid(`${what} must be a non-negative integer, got ${value}`);
  }
}

function validate(input: FanoutInput): void {
  checkSlots(input.config.peerSlots, "config.peerSlots");
  checkSlots(input.config.cacheSlots, "config.cacheSlots");
  if (input.config.cacheSlots < 1) {
    throw invalid("config.cacheSlots must be at least 1, or no node could ever get a blob nobody holds");
  }
  const digests = new Set<string>();
  for (const blob of input.blobs) {
    if (!blob.digest) throw invalid("a blob has an empty digest");
    if (digests.has(blob.digest)) throw invalid(`blob ${blob.digest} is listed twice`);
    if (!(blob.sizeBytes >= 0)) throw invalid(`blob ${blob.digest} has size ${blob.sizeBytes}`);
    digests.add(blob.digest);
  }
  const names = new Set<string>();
  for (const node of input.nodes) {
    if (!node.name) throw invalid("a node has an empty name");
    if (names.has(node.name)) throw invalid(`node ${node.name} is listed twice`);
    names.add(node.name);
    if (node.peerSlots !== undefined) checkSlots(node.peerSlots, `node ${node.name} peerSlots`);
    if (node.servingBytesPerSecond !== undefined && !(node.servingBytesPerSecond > 0)) {
      throw invalid(`node ${node.name} servingBytesPerSecond must be positive`);
    }
  }
}

function sameSource(a: FanoutSource, b: FanoutSource): boolean {
  return a.kind === b.kind && (a.kind === "cache" || (b.kind === "peer" && a.node === b.node));
}

const byName = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

interface Parent {
  /** undefined = the cache. */
  node: FanoutNode | undefined;
  depth: number;
  slots: number;
  children: number;
}

/** Load per unit of serving rate: the next child goes to the least loaded source. */
function loadOf(parent: Parent): number {
  return (parent.children + 1) / (parent.node?.servingBytesPerSecond ?? 1);
}

/**
 * Parents with free slots, by zone and wave, least loaded first. Entries are not updated in
 * place: a parent is pushed again when its load changes and stale entries are skipped when met.
 * Hand-written because it is twenty lines and a heap library would be a dependency for it.
 */
class FreeSlots {
  private readonly byZone = new Map<string, { parent: Parent; children: number }[][]>();

  add(parent: Parent): void {
    if (parent.children >= parent.slots) return;
    for (const zone of parent.node?.zone === undefined ? [""] : ["", `=${parent.node.zone}`]) {
      const waves = this.byZone.get(zone) ?? [];
      this.byZone.set(zone, waves);
      const heap = waves[parent.depth] ?? [];
      waves[parent.depth] = heap;
      heap.push({ parent, children: parent.children });
      let i = heap.length - 1;
      while (i > 0) {
        const up = (i - 1) >> 1;
        if (!FreeSlots.before(heap[i], heap[up])) break;
        [heap[i], heap[up]] = [heap[up], heap[i]];
        i = up;
      }
    }
  }

  /** The shallowest, least loaded parent with a free slot in `zone` ("" = any zone), except `not`. */
  best(zone: string, not: FanoutNode): Parent | undefined {
    const waves = this.byZone.get(zone) ?? [];
    for (const heap of waves) {
      if (!heap) continue;
      const skipped: { parent: Parent; children: number }[] = [];
      let found: Parent | undefined;
      while (heap.length > 0) {
        const top = heap[0];
        const stale = top.children !== top.parent.children || top.parent.children >= top.parent.slots;
        if (!stale && top.parent.node !== not) {
          found = top.parent;
          break;
        }
        FreeSlots.pop(heap);
        if (!stale) skipped.push(top);
      }
      for (const entry of skipped) this.add(entry.parent);
      if (found) return found;
    }
    return undefined;
  }

  private static before(
    a: { parent: Parent; children: number },
    b: { parent: Parent; children: number },
  ): boolean {
    const la = loadOf(a.parent);
    const lb = loadOf(b.parent);
    if (la !== lb) return la < lb;
    return byName(a.parent.node?.name ?? "", b.parent.node?.name ?? "") < 0;
  }

  private static pop(heap: { parent: Parent; children: number }[]): void {
    const last = heap.pop()!;
    if (heap.length === 0) return;
    heap[0] = last;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let smallest = i;
      if (left < heap.length && FreeSlots.before(heap[left], heap[smallest])) smallest = left;
      if (right < heap.length && FreeSlots.before(heap[right], heap[smallest])) smallest = right;
      if (smallest === i) return;
      [heap[i], heap[smallest]] = [heap[smallest], heap[i]];
      i = smallest;
    }
  }
}

/**
 * Each digest's order of newcomers: all nodes by name, rotated by a stride of N/k per digest
 * (digests in the order the caller lists blobs, i.e. manifest order). The first ~N/k nodes of
 * an order are the interior of that digest's tree (they feed the rest), so with the rotation
 * every node is interior for about one digest in k and feeds k nodes then: each node uploads
 * about one copy of the image in total and no node's uplink carries several layers at once
 * while others idle. (A hash of digest and name balances only on average; in the simulator it
 * was 5-20% slower at 100-300 nodes.)
 */
class Rotation {
  private readonly position = new Map<string, number>();
  private readonly digestIndex = new Map<string, number>();
  private readonly stride: number;

  constructor(input: FanoutInput) {
    const names = input.nodes.map((node) => node.name).sort(byName);
    for (const [i, name] of names.entries()) this.position.set(name, i);
    for (const [i, blob] of input.blobs.entries()) this.digestIndex.set(blob.digest, i);
    this.stride = Math.max(1, Math.ceil(names.length / Math.max(1, input.config.peerSlots)));
  }

  rank(name: string, digest: string): number {
    const n = this.position.size;
    const index = this.digestIndex.get(digest) ?? 0;
    // The extra +index keeps the orders from repeating every k digests when k divides N, which
    // gives the same few nodes the same tree position for a third of the image (k = 3) and, in
    // the simulator, cost up to 60% more time at 150 and 300 nodes.
    const offset = (index * this.stride + index) % n;
    return (this.position.get(name)! - offset + n) % n;
  }
}

/** One digest's tree. Receivers are the nodes that want the digest and lack it. */
function planDigest(
  digest: string,
  holders: readonly FanoutNode[],
  receivers: readonly FanoutNode[],
  input: FanoutInput,
  unavailable: ReadonlyMap<string, UnavailableReason>,
  previous: ReadonlyMap<string, FanoutSource>,
  rotation: Rotation,
  out: FanoutPlan,
): void {
  const peerSlotsOf = (node: FanoutNode) =>
    unavailable.has(node.name) ? 0 : (node.peerSlots ?? input.config.peerSlots);
  const receiverNames = new Set(receivers.map((node) => node.name));
  const holderNames = new Set(holders.map((node) => node.name));

  // Why a receiver's previous source cannot stay, or undefined when it may.
  const previousSourceProblem = (source: FanoutSource): ReplanReason | undefined => {
    if (source.kind === "cache") return undefined;
    if (unavailable.has(source.node)) return "PeerUnavailable";
    if (!holderNames.has(source.node) && !receiverNames.has(source.node)) return "PeerGone";
    return undefined;
  };

  // The previous plan's children of each source ("" = the cache), in name order, so trimming to
  // capacity is deterministic; receivers without a usable previous source are orphans.
  const previousChildren = new Map<string, FanoutNode[]>();
  const orphans: { node: FanoutNode; from?: FanoutSource; reason?: ReplanReason }[] = [];
  for (const receiver of [...receivers].sort((a, b) => byName(a.name, b.name))) {
    const source = previous.get(receiver.name);
    const problem = source && previousSourceProblem(source);
    if (!source || problem) {
      orphans.push({ node: receiver, from: source, reason: problem });
      continue;
    }
    const key = source.kind === "cache" ? "" : source.node;
    const list = previousChildren.get(key) ?? [];
    list.push(receiver);
    previousChildren.set(key, list);
  }

  const free = new FreeSlots();
  const cacheParent: Parent = { node: undefined, depth: 0, slots: input.config.cacheSlots, children: 0 };
  const attached = new Map<string, { source: FanoutSource; depth: number }>();

  // Attach `node` under `parent` and bring along the subtree it had in the previous plan.
  const attach = (node: FanoutNode, source: FanoutSource, parent: Parent) => {
    parent.children++;
    if (parent.node) free.add(parent);
    const stack = [{ node, source, depth: parent.depth + 1 }];
    while (stack.length > 0) {
      const item = stack.pop()!;
      attached.set(item.node.name, { source: item.source, depth: item.depth });
      const asParent: Parent = {
        node: item.node,
        depth: item.depth,
        slots: peerSlotsOf(item.node),
        children: 0,
      };
      for (const child of previousChildren.get(item.node.name) ?? []) {
        if (attached.has(child.name)) continue; // a loop in the previous plan: cut here
        if (asParent.children >= asParent.slots) {
          orphans.push({ node: child, from: { kind: "peer", node: item.node.name }, reason: "OverCapacity" });
          continue;
        }
        asParent.children++;
        stack.push({ node: child, source: { kind: "peer", node: item.node.name }, depth: item.depth + 1 });
      }
      free.add(asParent);
    }
  };

  // Keep the previous tree from its roots down: the cache's children, then each holder's.
  for (const child of previousChildren.get("") ?? []) {
    if (cacheParent.children >= cacheParent.slots) {
      orphans.push({ node: child, from: CACHE_SOURCE, reason: "OverCapacity" });
      continue;
    }
    attach(child, CACHE_SOURCE, cacheParent);
  }
  for (const holder of [...holders].sort((a, b) => byName(a.name, b.name))) {
    const parent: Parent = { node: holder, depth: 0, slots: peerSlotsOf(holder), children: 0 };
    for (const child of previousChildren.get(holder.name) ?? []) {
      if (parent.children >= parent.slots) {
        orphans.push({ node: child, from: { kind: "peer", node: holder.name }, reason: "OverCapacity" });
        continue;
      }
      attach(child, { kind: "peer", node: holder.name }, parent);
    }
    free.add(parent);
  }
  // Re-attach orphans first (a failed peer's children resume soonest), then newcomers: those
  // that can serve before those that cannot (a node with no peer slots taking the cache's slot
  // would leave the next node nowhere but one cache slot too many, re-planned OverCapacity on
  // the next pass), each group in this digest's own order.
  const rank = (name: string) => rotation.rank(name, digest);
  const serves = (node: FanoutNode) => peerSlotsOf(node) > 0;
  orphans.sort((a, b) => {
    if ((a.from === undefined) !== (b.from === undefined)) return a.from === undefined ? 1 : -1;
    if (a.from !== undefined) return byName(a.node.name, b.node.name);
    if (serves(a.node) !== serves(b.node)) return serves(a.node) ? -1 : 1;
    return rank(a.node.name) - rank(b.node.name);
  });

  // The cache is in no zone: after same-zone peers it competes with peers of other zones by wave,
  // and loses a tie to a peer (cache egress is what fan-out saves).
  const pick = (node: FanoutNode): Parent => {
    const sameZone = node.zone === undefined ? undefined : free.best(`=${node.zone}`, node);
    if (sameZone) return sameZone;
    const anyZone = free.best("", node);
    const cacheFree = cacheParent.children < cacheParent.slots;
    if (anyZone && (!cacheFree || anyZone.depth <= cacheParent.depth)) return anyZone;
    // With every slot taken (only when every holder serves no peers or is unavailable) the cache
    // takes one more rather than leave a node without a source.
    return cacheParent;
  };

  const place = (orphan: (typeof orphans)[number]) => {
    if (attached.has(orphan.node.name)) return;
    const parent = pick(orphan.node);
    const source: FanoutSource = parent.node ? { kind: "peer", node: parent.node.name } : CACHE_SOURCE;
    attach(orphan.node, source, parent);
    if (orphan.from && orphan.reason && !sameSource(orphan.from, source)) {
      out.replanned.push({
        node: orphan.node.name,
        digest,
        from: orphan.from,
        to: source,
        reason: orphan.reason,
      });
    }
  };
  // orphans grows while we walk it (children trimmed for capacity); for-of visits those too.
  for (const orphan of orphans) place(orphan);
  // A receiver still unattached followed its previous sources into a loop no root reaches: never
  // produced by this planner, handled so that bad input cannot leave a node without a source.
  for (const receiver of [...receivers].sort((a, b) => byName(a.name, b.name))) {
    place({ node: receiver, from: previous.get(receiver.name), reason: "Cycle" });
  }

  for (const [name, { source, depth }] of attached) {
    out.assignments.push({ node: name, digest, source, wave: depth });
  }
}

export function planFanout(input: FanoutInput): FanoutPlan {
  validate(input);
  const blobByDigest = new Map(input.blobs.map((blob) => [blob.digest, blob]));
  const unavailable = new Map((input.unavailablePeers ?? []).map((peer) => [peer.node, peer.reason]));
  const previousByDigest = new Map<string, Map<string, FanoutSource>>();
  for (const assignment of input.current ?? []) {
    const byNode = previousByDigest.get(assignment.digest) ?? new Map<string, FanoutSource>();
    byNode.set(assignment.node, assignment.source);
    previousByDigest.set(assignment.digest, byNode);
  }

  const out: FanoutPlan = { assignments: [], replanned: [], skipped: [] };
  const rotation = new Rotation(input);
  const holdersOf = new Map<string, FanoutNode[]>();
  const receiversOf = new Map<string, FanoutNode[]>();
  for (const node of input.nodes) {
    const held = new Set(node.holds);
    for (const digest of held) {
      const list = holdersOf.get(digest) ?? [];
      list.push(node);
      holdersOf.set(digest, list);
    }
    for (const digest of new Set(node.wants)) {
      if (held.has(digest)) continue;
      const blob = blobByDigest.get(digest);
      if (!blob?.declared) {
        out.skipped.push({ node: node.name, digest, reason: blob ? "Undeclared" : "UnknownDigest" });
        continue;
      }
      const list = receiversOf.get(digest) ?? [];
      list.push(node);
      receiversOf.set(digest, list);
    }
  }
  for (const digest of [...receiversOf.keys()].sort(byName)) {
    planDigest(
      digest,
      holdersOf.get(digest) ?? [],
      receiversOf.get(digest)!,
      input,
      unavailable,
      previousByDigest.get(digest) ?? new Map(),
      rotation,
      out,
    );
  }
  const order = (a: { node: string; digest: string }, b: { node: string; digest: string }) =>
    byName(a.node, b.node) || byName(a.digest, b.digest);
  out.assignments.sort(order);
  out.replanned.sort(order);
  out.skipped.sort(order);
  return out;
}
