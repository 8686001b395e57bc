/**
 * A discrete-event model of pre-warming one image onto many nodes (issue 15), to compare:
 *  - `star`: every node pulls every layer from the cache registry (Stowage today);
 *  - `planned`: each node pulls each layer from the source the fan-out planner assigned
 *    (src/controller/fanout, imported, not reimplemented): the cache or a peer;
 *  - `random`: each node pulls a layer from a peer chosen at random among those that hold it,
 *    else from the cache (Spegel-like: peers found by lookup, no coordination of load);
 *  - `wired`: the first wiring of fan-out: a planner tree per blob, each blob read by containerd
 *    as one stream of pieces in order (see `Strategies`). What runs now is `planned` with
 *    pieces: a tree per piece, each node fetching its pieces in any order into a spool.
 *
 * What is modelled (see docs/fanout.md for the numbers it gives):
 *  - Nodes: NIC down and NIC up (full duplex, separate links), disk write, an optional cap on
 *    peer serving; at most `downloadsPerNode` layer downloads at a time (containerd's
 *    max_concurrent_downloads, 3 by default), in manifest order among those whose source is ready.
 *  - The cache registry: NIC egress, storage read, NIC ingress; and an upstream link it fills
 *    from when it lacks a layer (single flight per layer, store-and-forward: a layer is served
 *    once it is complete in the cache, as distribution does in normal mode).
 *  - Layers (or fixed-size pieces of them, `pieceBytes`), store-and-forward: a peer serves a
 *    layer once it holds all of it and has verified it.
 *  - Sharing: max-min fair shares of every link among the transfers crossing it (bandwidth.ts).
 *  - Failures: a node dies; transfers it was serving stall; the receivers notice after
 *    `stallTimeoutS` and resume from the byte they had (HTTP range) from a new source: `random`
 *    picks again, `planned` waits for the controller to re-plan (`reactionDelayS` later).
 *  - Late joiners: nodes that appear during the fan-out, active `reactionDelayS` later (the
 *    controller writes their NodeCache) in every strategy.
 * Not modelled: TCP slow start and loss, RTT, unpacking (the same for every strategy), CPU.
 *
 * Time advances from event to event (a transfer ends, a timer fires). The quantum trades accuracy
 * for speed at 1,000+ nodes: transfers within max(quantumS, quantumRelative × now) of their end
 * complete, and timers due that soon fire, at the same step. Each hop can end up to a quantum
 * early (error ≤ tree depth × quantum on the total; 0.1% of the elapsed time by default, which
 * lets a star of 10,000 nodes, 64,000 s long, run in thousands of steps instead of millions).
 */
import {
  type FanoutAssignment,
  type FanoutNode,
  type FanoutPlan,
  planFanout,
} from "../../src/controller/fanout/plan.ts";
import { StowageError } from "../../src/util/errors.ts";
import { maxMinRates } from "./bandwidth.ts";

/**
 * `wired`: the first wiring of fan-out (before the agent's spool): the planner plans one tree per blob (blobs as digests), every piece
 * of a blob gets the blob's source; containerd reads each blob as one stream in offset order
 * through the agent's mirror, at most `downloadsPerNode` blobs at a time in manifest order,
 * holding its slot while it waits; the stream's next piece starts once the previous one is
 * complete and its source holds the whole piece; the source is read from the spec when the
 * stream opens (a re-plan changes only blobs not yet opened), and a source that fails or
 * stalls is dropped for the cache for the rest of that blob.
 */
export const Strategies = ["star", "planned", "random", "wired"] as const;
export type Strategy = (typeof Strategies)[number];

export interface Scenario {
  nodes: number;
  /** Nodes are spread round-robin over this many zones. */
  zones: number;
  /** Layer sizes in bytes, in manifest order. */
  layerBytes: number[];
  /** Split layers into pieces of this size for distribution (0: whole layers). */
  pieceBytes: number;
  nodeDownBps: number;
  nodeUpBps: number;
  nodeDiskWriteBps: number;
  /** The agent's peer-serving rate limit (Infinity: the NIC). */
  peerServingBps: number;
  downloadsPerNode: number;
  cacheNicBps: number;
  cacheStorageReadBps: number;
  upstreamBps: number;
  /** The cache holds the image when pre-warm starts (the mirror ran first). */
  cacheWarm: boolean;
  /** k: nodes one node feeds per layer or piece (planned; the planner's peerSlots). */
  peerSlots: number;
  /** Nodes the cache feeds per layer or piece (planned; the planner's cacheSlots): its copies. */
  cacheSlots: number;
  /**
   * planned: transfers a node's agent serves at once (across layers); more wait their turn. Few
   * transfers at full speed beat many at a crawl: store-and-forward can pass a piece on only
   * once it is complete.
   */
  peerServingConcurrency: number;
  /** planned: transfers the cache serves at once. */
  cacheServingConcurrency: number;
  /** Controller reaction: Node/agent report to NodeCache spec written. */
  reactionDelayS: number;
  /** An agent declares a source dead after this long without bytes. */
  stallTimeoutS: number;
  quantumS: number;
  quantumRelative: number;
  /** Agents start the initial nodes' pulls at uniform random times in [0, startJitterS]. */
  startJitterS: number;
  seed: number;
  /** Nodes that die: a node index, or "busiest" (most peers fed at that moment). */
  failures: { node: number | "busiest"; atS: number }[];
  joins: { count: number; atS: number }[];
}

export interface RunResult {
  strategy: Strategy;
  nodes: number;
  imageBytes: number;
  /** From the start until every live node holds every layer (Infinity: never). */
  allWarmS: number;
  /** Per node: from when it could start (0, or join + reaction delay) to warm. */
  p50S: number;
  p99S: number;
  cacheEgressBytes: number;
  upstreamBytes: number;
  crossZoneBytes: number;
  /** (time, nodes warm) at each node becoming warm. */
  warmCurve: [number, number][];
  planCalls: number;
  /**
   * wired: the longest a blob stream waited for its next piece (source still lacking it or at its
   * serving concurrency). The agent's mirror gives up on a source after 30 s, which is not modelled.
   */
  longestPieceWaitS: number;
  /** Per re-plan after a failure: pairs whose source changed, and how many were not fed by it. */
  failureReplans: {
    node: string;
    atS: number;
    fedByFailed: number;
    replanned: number;
    outsideSubtree: number;
  }[];
  events: number;
}

export const Gbps = 1e9 / 8;
export const GB = 1e9;

export function defaultScenario(): Scenario {
  return {
    nodes: 1000,
    zones: 3,
    layerBytes: mlImageLayers(20 * GB),
    pieceBytes: 0,
    nodeDownBps: 25 * Gbps,
    nodeUpBps: 25 * Gbps,
    // A local NVMe drive writes 3-7 GB/s: faster than the NIC, so the NIC is the bound.
    nodeDiskWriteBps: 4 * GB,
    peerServingBps: Number.POSITIVE_INFINITY,
    downloadsPerNode: 3,
    cacheNicBps: 25 * Gbps,
    cacheStorageReadBps: 8 * GB,
    upstreamBps: 10 * Gbps,
    cacheWarm: true,
    peerSlots: 3,
    cacheSlots: 1,
    peerServingConcurrency: 3,
    cacheServingConcurrency: 4,
    reactionDelayS: 1,
    stallTimeoutS: 2,
    quantumS: 0.005,
    quantumRelative: 0.001,
    startJitterS: 0.5,
    seed: 1,
    failures: [],
    joins: [],
  };
}

/**
 * Layer sizes shaped like a large ML image (CUDA/PyTorch base plus model weights): a few big
 * layers and a tail of small ones. Shares of the total, largest first in the middle of the
 * manifest as they are in practice (base OS small, frameworks big, app layers small).
 */
export function mlImageLayers(totalBytes: number): number[] {
  const shares = [
    0.01, 0.03, 0.06, 0.12, 0.16, 0.14, 0.1, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02, 0.02, 0.01,
  ];
  const sum = shares.reduce((a, b) => a + b, 0);
  return shares.map((share) => Math.round((totalBytes * share) / sum));
}

/** mulberry32: a small seeded PRNG so `random` runs are reproducible. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const CACHE = -1;
const UPSTREAM = -2;
const NO_SOURCE = -3;

// Per (node, unit) state.
const NONE = 0;
const ACTIVE = 1;
const STALLED = 2;
const HELD = 3;

interface Flow {
  src: number;
  /** A node, or CACHE for a fill from upstream. */
  dest: number;
  unit: number;
  size: number;
  done: number;
  startDone: number;
  rate: number;
  links: number[];
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[index];
}

export function nodeName(index: number): string {
  return `node-${String(index).padStart(5, "0")}`;
}

export function simulate(scenario: Scenario, strategy: Strategy): RunResult {
  return new Simulation(scenario, strategy).run();
}

class Simulation {
  private readonly s: Scenario;
  private readonly strategy: Strategy;
  private readonly random: () => number;
  private readonly unitBytes: number[] = [];
  private readonly unitIds: string[] = [];
  /** Per unit: its layer (blob). Per layer: its first unit; units of a layer are contiguous, in offset order. */
  private readonly unitLayer: number[] = [];
  private readonly layerFirstUnit: number[] = [];
  private readonly layers: number;
  /** wired, per (node, layer): the planned source of the blob. */
  private readonly blobSource: Int32Array;
  /** wired, per (node, layer): the open stream's source (read once when it opened; CACHE once dropped). */
  private readonly streamSource: Int32Array;
  /** wired, per (node, layer): the next piece (index within the blob) of the stream; pieces held. */
  private readonly nextPiece: Int32Array;
  /** wired, per (node, layer): since when the stream waits for its next piece. */
  private readonly waitSince: Float64Array;
  /** wired, per (node, layer): a dead source is being noticed (stall timeout pending). */
  private readonly deadSourcePending: Uint8Array;
  /** wired, per node: the blobs whose streams are open, and the next blob in manifest order to open. */
  private readonly openStreams: number[][] = [];
  private readonly nextLayerToOpen: Int32Array;
  /** wired: (source, unit) keys → nodes whose stream waits for the source to hold that piece. */
  private readonly waitingOnPiece = new Map<number, number[]>();
  private readonly totalNodes: number;
  private readonly units: number;
  private readonly capacities: number[] = [];
  private readonly state: Uint8Array;
  private readonly source: Int32Array;
  private readonly partial = new Map<number, number>();
  /** planned: (node, unit) keys whose agent fell back to the cache after its peer stalled. */
  private readonly fallback = new Set<number>();
  private readonly alive: Uint8Array;
  private readonly joined: Uint8Array;
  private readonly startAt: Float64Array;
  private readonly warmAt: Float64Array;
  private readonly heldCount: Int32Array;
  private readonly downloads: Int32Array;
  /** Per node: positions before this in its unit order are all held (skip them when scanning). */
  private readonly heldPrefix: Int32Array;
  private readonly zone: Int32Array;
  private readonly holders: number[][];
  private readonly cacheHolds: Uint8Array;
  private readonly cacheFilling: Uint8Array;
  private readonly waitingOnCache = new Set<number>();
  /** planned: uploads in progress per source (index totalNodes = the cache) and who waits for one. */
  private readonly uploads: Int32Array;
  private readonly waitingOnSource: Set<number>[];
  private children = new Map<number, number[]>();
  /** planned: each node's units, shallowest wave first (a unit early in its tree has more nodes waiting behind it). */
  private order: Int32Array[] = [];
  private assignments: FanoutAssignment[] = [];
  private flows: Flow[] = [];
  private ratesStale = true;
  private now = 0;
  private timers: { at: number; run: () => void }[] = [];
  private replanPending = false;
  private pendingFailure: { index: number; atS: number; fedBy: Set<string> } | undefined;
  private readonly result: RunResult;

  constructor(scenario: Scenario, strategy: Strategy) {
    validateScenario(scenario);
    this.s = scenario;
    this.strategy = strategy;
    this.random = prng(scenario.seed);
    for (const [layer, bytes] of scenario.layerBytes.entries()) {
      // Pieces are a planned-mode feature (the agent serves ranges it holds); containerd and
      // Spegel move whole blobs.
      const pieced = strategy === "planned" || strategy === "wired";
      const piece = pieced && scenario.pieceBytes > 0 ? scenario.pieceBytes : bytes;
      const pieces = Math.max(1, Math.ceil(bytes / piece));
      this.layerFirstUnit.push(this.unitBytes.length);
      for (let p = 0; p < pieces; p++) {
        this.unitBytes.push(Math.min(piece, bytes - p * piece));
        this.unitIds.push(pieces === 1 ? `layer-${layer}` : `layer-${layer}#${p}`);
        this.unitLayer.push(layer);
      }
    }
    this.units = this.unitBytes.length;
    this.layers = scenario.layerBytes.length;
    this.layerFirstUnit.push(this.units);
    this.totalNodes = scenario.nodes + scenario.joins.reduce((sum, join) => sum + join.count, 0);
    const n = this.totalNodes;
    for (let i = 0; i < n; i++) {
      this.capacities.push(
        scenario.nodeDownBps,
        Math.min(scenario.nodeUpBps, scenario.peerServingBps),
        scenario.nodeDiskWriteBps,
      );
    }
    this.capacities.push(
      scenario.cacheNicBps,
      scenario.cacheStorageReadBps,
      scenario.cacheNicBps,
      scenario.upstreamBps,
    );
    this.state = new Uint8Array(n * this.units);
    this.source = new Int32Array(n * this.units).fill(NO_SOURCE);
    this.alive = new Uint8Array(n);
    this.joined = new Uint8Array(n);
    this.startAt = new Float64Array(n);
    this.warmAt = new Float64Array(n).fill(Number.POSITIVE_INFINITY);
    this.heldCount = new Int32Array(n);
    this.downloads = new Int32Array(n);
    this.heldPrefix = new Int32Array(n);
    this.zone = Int32Array.from({ length: n }, (_, i) => i % scenario.zones);
    this.holders = Array.from({ length: this.units }, () => []);
    this.cacheHolds = new Uint8Array(this.units).fill(scenario.cacheWarm ? 1 : 0);
    this.cacheFilling = new Uint8Array(this.units);
    this.uploads = new Int32Array(n + 1);
    this.blobSource = new Int32Array(n * this.layers).fill(NO_SOURCE);
    this.streamSource = new Int32Array(n * this.layers).fill(NO_SOURCE);
    this.nextPiece = new Int32Array(n * this.layers);
    this.waitSince = new Float64Array(n * this.layers);
    this.deadSourcePending = new Uint8Array(n * this.layers);
    this.nextLayerToOpen = new Int32Array(n);
    for (let i = 0; i < n; i++) this.openStreams.push([]);
    this.waitingOnSource = Array.from({ length: n + 1 }, () => new Set<number>());
    this.result = {
      strategy,
      nodes: scenario.nodes,
      imageBytes: this.unitBytes.reduce((a, b) => a + b, 0),
      allWarmS: Number.POSITIVE_INFINITY,
      p50S: Number.NaN,
      p99S: Number.NaN,
      cacheEgressBytes: 0,
      upstreamBytes: 0,
      crossZoneBytes: 0,
      warmCurve: [[0, 0]],
      planCalls: 0,
      longestPieceWaitS: 0,
      failureReplans: [],
      events: 0,
    };
  }

  private link(node: number, which: "down" | "up" | "disk"): number {
    return node * 3 + (which === "down" ? 0 : which === "up" ? 1 : 2);
  }

  private cacheLink(which: "nic" | "storage" | "ingress" | "upstream"): number {
    const base = this.totalNodes * 3;
    return base + (which === "nic" ? 0 : which === "storage" ? 1 : which === "ingress" ? 2 : 3);
  }

  run(): RunResult {
    // Start times have their own stream so that every strategy sees the same ones.
    const jitter = prng(this.s.seed ^ 0x9e3779b9);
    for (let i = 0; i < this.s.nodes; i++) {
      this.activate(i);
      if (this.s.startJitterS > 0) {
        this.startAt[i] = jitter() * this.s.startJitterS;
        this.at(this.startAt[i], () => {
          // A timer may fire up to a quantum early: the node starts then.
          this.startAt[i] = Math.min(this.startAt[i], this.now);
          this.tryStart(i);
        });
      }
    }
    let next = this.s.nodes;
    for (const join of this.s.joins) {
      const first = next;
      next += join.count;
      this.at(join.atS + this.s.reactionDelayS, () => {
        for (let i = first; i < first + join.count; i++) this.activate(i);
        this.afterMembershipChange();
      });
    }
    for (const failure of this.s.failures) this.at(failure.atS, () => this.fail(failure.node));
    this.afterMembershipChange();
    this.loop();
    return this.finish();
  }

  private activate(node: number): void {
    this.alive[node] = 1;
    this.joined[node] = 1;
    this.startAt[node] = this.now;
  }

  private afterMembershipChange(): void {
    // Joiners are activated when the controller has written their NodeCache, with the plan.
    if (this.planned()) this.replan();
    for (let i = 0; i < this.totalNodes; i++) if (this.alive[i]) this.tryStart(i);
  }

  private at(time: number, run: () => void): void {
    // Binary insertion after any timer due at the same moment, so those run in the order set.
    let low = 0;
    let high = this.timers.length;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (this.timers[mid].at <= time) low = mid + 1;
      else high = mid;
    }
    this.timers.splice(low, 0, { at: time, run });
  }

  private scheduleReplan(): void {
    if (this.replanPending) return;
    this.replanPending = true;
    this.at(this.now + this.s.reactionDelayS, () => {
      this.replanPending = false;
      this.replan();
    });
  }

  /** The strategies the fan-out planner drives. */
  private planned(): boolean {
    return this.strategy === "planned" || this.strategy === "wired";
  }

  private layerUnits(layer: number): number {
    return this.layerFirstUnit[layer + 1] - this.layerFirstUnit[layer];
  }

  /** What the controller would read from NodeCache status, planned by the real planner. */
  private replan(): void {
    if (this.strategy === "wired") {
      this.replanBlobs();
      return;
    }
    const nodes: FanoutNode[] = [];
    for (let i = 0; i < this.totalNodes; i++) {
      if (!this.alive[i]) continue;
      const holds: string[] = [];
      for (let u = 0; u < this.units; u++)
        if (this.state[i * this.units + u] === HELD) holds.push(this.unitIds[u]);
      nodes.push({ name: nodeName(i), zone: `zone-${this.zone[i]}`, holds, wants: this.unitIds });
    }
    const plan: FanoutPlan = planFanout({
      config: { peerSlots: this.s.peerSlots, cacheSlots: this.s.cacheSlots },
      blobs: this.unitIds.map((id, u) => ({ digest: id, sizeBytes: this.unitBytes[u], declared: true })),
      nodes,
      current: this.assignments,
    });
    this.result.planCalls++;
    const unitOf = new Map(this.unitIds.map((id, u) => [id, u]));
    const before = this.source.slice();
    this.source.fill(NO_SOURCE);
    this.children = new Map();
    for (const assignment of plan.assignments) {
      const node = Number(assignment.node.slice("node-".length));
      const unit = unitOf.get(assignment.digest)!;
      const src =
        assignment.source.kind === "cache" ? CACHE : Number(assignment.source.node.slice("node-".length));
      this.source[node * this.units + unit] = src;
      if (src >= 0) {
        const key = src * this.units + unit;
        const list = this.children.get(key) ?? [];
        list.push(node);
        this.children.set(key, list);
      }
    }
    this.assignments = plan.assignments;
    const waves = new Map<number, number>();
    for (const assignment of plan.assignments) {
      waves.set(
        Number(assignment.node.slice("node-".length)) * this.units + unitOf.get(assignment.digest)!,
        assignment.wave,
      );
    }
    const manifest = Array.from({ length: this.units }, (_, u) => u);
    this.heldPrefix.fill(0);
    this.order = Array.from({ length: this.totalNodes }, (_, node) =>
      Int32Array.from(
        [...manifest].sort(
          (a, b) =>
            (waves.get(node * this.units + a) ?? 0) - (waves.get(node * this.units + b) ?? 0) || a - b,
        ),
      ),
    );
    // A transfer in flight from a source the plan no longer names moves to the new source,
    // resuming from the bytes it has.
    for (const flow of [...this.flows]) {
      if (flow.dest < 0) continue;
      const key = flow.dest * this.units + flow.unit;
      if (this.source[key] !== flow.src && !this.fallback.has(key)) this.abort(flow, NONE);
    }
    if (this.pendingFailure) this.recordFailureReplan(before, this.source);
    for (let i = 0; i < this.totalNodes; i++) if (this.alive[i]) this.tryStart(i);
  }

  /**
   * wired: one tree per blob, as src/controller/prewarm/fanout.ts plans it. A node holds a blob
   * once it holds every piece of it (the controller reads it from the images the agent reports
   * Present, which is coarser; that moves no bytes except for late joiners' choice of roots).
   * Streams already open keep their source: the agent's mirror reads a blob's pieces from the
   * spec when containerd's GET arrives.
   */
  private replanBlobs(): void {
    const layerIds = this.s.layerBytes.map((_, layer) => `layer-${layer}`);
    const nodes: FanoutNode[] = [];
    for (let i = 0; i < this.totalNodes; i++) {
      if (!this.alive[i]) continue;
      const holds = layerIds.filter(
        (_, layer) => this.nextPiece[i * this.layers + layer] === this.layerUnits(layer),
      );
      nodes.push({ name: nodeName(i), zone: `zone-${this.zone[i]}`, holds, wants: layerIds });
    }
    const plan: FanoutPlan = planFanout({
      config: { peerSlots: this.s.peerSlots, cacheSlots: this.s.cacheSlots },
      blobs: layerIds.map((id, layer) => ({
        digest: id,
        sizeBytes: this.s.layerBytes[layer],
        declared: true,
      })),
      nodes,
      current: this.assignments,
    });
    this.result.planCalls++;
    const before = this.blobSource.slice();
    this.blobSource.fill(NO_SOURCE);
    for (const assignment of plan.assignments) {
      const node = Number(assignment.node.slice("node-".length));
      const layer = Number(assignment.digest.slice("layer-".length));
      this.blobSource[node * this.layers + layer] =
        assignment.source.kind === "cache" ? CACHE : Number(assignment.source.node.slice("node-".length));
    }
    this.assignments = plan.assignments;
    if (this.pendingFailure) this.recordFailureReplan(before, this.blobSource);
    for (let i = 0; i < this.totalNodes; i++) if (this.alive[i]) this.tryStart(i);
  }

  private recordFailureReplan(before: Int32Array, after: Int32Array): void {
    const failure = this.pendingFailure!;
    this.pendingFailure = undefined;
    let changed = 0;
    let outside = 0;
    for (let i = 0; i < before.length; i++) {
      if (before[i] === NO_SOURCE || after[i] === NO_SOURCE || before[i] === after[i]) continue;
      changed++;
      if (before[i] !== failure.index) outside++;
    }
    this.result.failureReplans.push({
      node: nodeName(failure.index),
      atS: failure.atS,
      fedByFailed: failure.fedBy.size,
      replanned: changed,
      outsideSubtree: outside,
    });
  }

  /** wired: whether `node` still lacks `layer` and `src` is assigned to feed it. */
  private feedsBlob(src: number, node: number, layer: number): boolean {
    const key = node * this.layers + layer;
    return this.blobSource[key] === src && this.nextPiece[key] < this.layerUnits(layer);
  }

  private fail(which: number | "busiest"): void {
    let index = typeof which === "number" ? which : -1;
    if (which === "busiest") {
      // The node whose death re-plans the most: the most (child, layer) pairs assigned to it
      // (planned) or the most transfers it serves (other strategies).
      const fed = new Int32Array(this.totalNodes);
      if (this.strategy === "wired") {
        for (let i = 0; i < this.blobSource.length; i++) {
          const src = this.blobSource[i];
          if (src >= 0 && this.feedsBlob(src, Math.floor(i / this.layers), i % this.layers)) fed[src]++;
        }
      } else if (this.strategy === "planned") {
        for (let i = 0; i < this.source.length; i++) {
          const src = this.source[i];
          if (src >= 0 && this.state[i] !== HELD) fed[src]++;
        }
      } else {
        for (const flow of this.flows) if (flow.src >= 0) fed[flow.src]++;
      }
      let best = 0;
      for (let i = 0; i < this.totalNodes; i++) if (this.alive[i] && fed[i] > fed[best]) best = i;
      index = best;
    }
    if (!this.alive[index]) return;
    this.alive[index] = 0;
    const fedBy = new Set<string>();
    if (this.strategy === "wired") {
      // (node, blob) pairs: the wiring plans per blob.
      for (let i = 0; i < this.blobSource.length; i++) {
        if (this.feedsBlob(index, Math.floor(i / this.layers), i % this.layers))
          fedBy.add(`${Math.floor(i / this.layers)}/${i % this.layers}`);
      }
    } else {
      for (let i = 0; i < this.source.length; i++) {
        if (this.source[i] === index && this.state[i] !== HELD)
          fedBy.add(`${Math.floor(i / this.units)}/${i % this.units}`);
      }
    }
    this.pendingFailure = { index, atS: this.now, fedBy };
    for (const flow of [...this.flows]) {
      if (flow.dest === index) this.abort(flow, NONE);
      else if (flow.src === index) {
        // The receiver sees no more bytes; it gives up on this source after the stall timeout.
        this.abort(flow, STALLED);
        this.at(this.now + this.s.stallTimeoutS, () => {
          const key = flow.dest * this.units + flow.unit;
          if (this.state[key] !== STALLED) return;
          this.state[key] = NONE;
          this.downloads[flow.dest]--;
          if (this.strategy === "wired") {
            // The mirror drops the peer for the rest of the blob: the cache serves the piece's
            // remaining bytes and every later piece of it; the peer is reported.
            const stream = flow.dest * this.layers + this.unitLayer[flow.unit];
            if (this.streamSource[stream] === index) this.streamSource[stream] = CACHE;
            this.scheduleReplan();
          } else if (this.strategy === "planned") {
            // The agent falls back to the cache for what it was fetching (hosts.toml order:
            // peer, cache, upstream) and reports the peer; the controller re-plans the rest.
            this.fallback.add(key);
            this.scheduleReplan();
          }
          this.tryStart(flow.dest);
        });
      }
    }
    if (this.planned()) {
      // Children that had not started yet find out when they try it: also after the timeout.
      this.at(this.now + this.s.stallTimeoutS, () => this.scheduleReplan());
    }
    if (this.strategy === "wired") {
      // Streams waiting on the dead node for their next piece ask it again and get nothing.
      this.waitingOnSource[index].clear();
      for (let i = 0; i < this.totalNodes; i++) if (this.alive[i]) this.tryStart(i);
    }
  }

  private abort(flow: Flow, next: number): void {
    this.flows.splice(this.flows.indexOf(flow), 1);
    this.ratesStale = true;
    this.account(flow, flow.done);
    if (flow.dest < 0) return;
    this.uploadEnded(flow.src);
    const key = flow.dest * this.units + flow.unit;
    this.partial.set(key, flow.done);
    this.state[key] = next;
    if (next === NONE) this.downloads[flow.dest]--;
  }

  private account(flow: Flow, upTo: number): void {
    const bytes = upTo - flow.startDone;
    if (flow.src === CACHE) this.result.cacheEgressBytes += bytes;
    else if (flow.src === UPSTREAM) this.result.upstreamBytes += bytes;
    else if (this.zone[flow.src] !== this.zone[flow.dest]) this.result.crossZoneBytes += bytes;
  }

  /** Whether the cache holds `unit`; if not, `waiter` waits on it and the cache starts filling it from upstream. */
  private cacheHas(unit: number, waiter: number): boolean {
    if (this.cacheHolds[unit]) return true;
    this.waitingOnCache.add(waiter);
    if (!this.cacheFilling[unit]) {
      this.cacheFilling[unit] = 1;
      this.startFlow(UPSTREAM, CACHE, unit, 0);
    }
    return false;
  }

  /** Whether `src` can serve `unit` now; asks the cache to fill from upstream when it lacks it. */
  private ready(src: number, unit: number, waiter: number): boolean {
    if (!this.hasUploadSlot(src, waiter)) return false;
    if (src === CACHE) return this.cacheHas(unit, waiter);
    return src >= 0 && this.alive[src] === 1 && this.state[src * this.units + unit] === HELD;
  }

  /**
   * planned: a source serves at most its slots at once (k for a peer, cacheSlots for the cache),
   * each at full speed, rather than every child of every layer at once at a crawl; store-and-
   * forward rewards finishing a layer early, because its subtree can start only then.
   */
  private hasUploadSlot(src: number, waiter: number): boolean {
    if (!this.planned() || src === UPSTREAM) return true;
    const index = src === CACHE ? this.totalNodes : src;
    const slots = src === CACHE ? this.s.cacheServingConcurrency : this.s.peerServingConcurrency;
    if (this.uploads[index] < slots) return true;
    this.waitingOnSource[index].add(waiter);
    return false;
  }

  private uploadEnded(src: number): void {
    if (src === UPSTREAM) return;
    const index = src === CACHE ? this.totalNodes : src;
    this.uploads[index]--;
    // Wake waiters in the order they came until the freed slot is taken; the rest stay queued
    // (waking them all made every upload's end rescan hundreds of nodes' pieces).
    const slots = src === CACHE ? this.s.cacheServingConcurrency : this.s.peerServingConcurrency;
    const waiting = this.waitingOnSource[index];
    for (const node of [...waiting]) {
      if (this.uploads[index] >= slots) break;
      waiting.delete(node);
      this.tryStart(node);
    }
  }

  private chooseSource(node: number, unit: number): number {
    if (this.strategy === "star") return CACHE;
    if (this.strategy === "planned") {
      const key = node * this.units + unit;
      return this.fallback.has(key) ? CACHE : this.source[key];
    }
    const peers = this.holders[unit].filter((peer) => this.alive[peer] === 1);
    if (peers.length === 0) return CACHE;
    return peers[Math.floor(this.random() * peers.length)];
  }

  private tryStart(node: number): void {
    if (!this.alive[node] || this.now < this.startAt[node]) return;
    if (this.strategy === "wired") {
      this.tryStreams(node);
      return;
    }
    const base = node * this.units;
    const order = this.strategy === "planned" ? this.order[node] : undefined;
    const unitAt = (i: number) => (order ? order[i] : i);
    while (this.heldPrefix[node] < this.units && this.state[base + unitAt(this.heldPrefix[node])] === HELD) {
      this.heldPrefix[node]++;
    }
    for (
      let i = this.heldPrefix[node];
      i < this.units && this.downloads[node] < this.s.downloadsPerNode;
      i++
    ) {
      const unit = unitAt(i);
      if (this.state[base + unit] !== NONE) continue;
      const src = this.chooseSource(node, unit);
      if (src === NO_SOURCE || !this.ready(src, unit, node)) continue;
      this.state[base + unit] = ACTIVE;
      this.downloads[node]++;
      this.startFlow(src, node, unit, this.partial.get(base + unit) ?? 0);
    }
  }

  /**
   * wired: containerd opens blob streams in manifest order, at most `downloadsPerNode` at once,
   * each holding its slot until its last byte (also while it waits for a source); each stream
   * fetches its pieces one after the other from the source it read when it opened.
   */
  private tryStreams(node: number): void {
    const open = this.openStreams[node];
    while (open.length < this.s.downloadsPerNode && this.nextLayerToOpen[node] < this.layers) {
      const layer = this.nextLayerToOpen[node]++;
      const stream = node * this.layers + layer;
      if (this.nextPiece[stream] === this.layerUnits(layer)) continue;
      const planned = this.blobSource[stream];
      // A blob with no assignment is proxied to the cache unchanged.
      this.streamSource[stream] = planned === NO_SOURCE ? CACHE : planned;
      this.waitSince[stream] = this.now;
      open.push(layer);
    }
    for (const layer of open) {
      const stream = node * this.layers + layer;
      const unit = this.layerFirstUnit[layer] + this.nextPiece[stream];
      const key = node * this.units + unit;
      if (this.state[key] !== NONE) continue;
      const src = this.streamSource[stream];
      if (src >= 0 && !this.alive[src]) {
        this.noticeDeadSource(node, layer, src);
        continue;
      }
      if (!this.holdsPiece(src, unit, node) || !this.hasUploadSlot(src, node)) continue;
      this.result.longestPieceWaitS = Math.max(
        this.result.longestPieceWaitS,
        this.now - this.waitSince[stream],
      );
      this.state[key] = ACTIVE;
      this.downloads[node]++;
      this.startFlow(src, node, unit, this.partial.get(key) ?? 0);
    }
  }

  /** wired: whether the source holds the whole piece; if not, wait to be woken when it does. */
  private holdsPiece(src: number, unit: number, waiter: number): boolean {
    if (src === CACHE) return this.cacheHas(unit, waiter);
    const key = src * this.units + unit;
    if (this.state[key] === HELD) return true;
    const waiting = this.waitingOnPiece.get(key);
    if (!waiting) this.waitingOnPiece.set(key, [waiter]);
    else if (!waiting.includes(waiter)) waiting.push(waiter);
    return false;
  }

  /** wired: a dead source answers nothing; after the stall timeout the mirror drops it for the cache. */
  private noticeDeadSource(node: number, layer: number, src: number): void {
    const stream = node * this.layers + layer;
    if (this.deadSourcePending[stream]) return;
    this.deadSourcePending[stream] = 1;
    this.at(this.now + this.s.stallTimeoutS, () => {
      this.deadSourcePending[stream] = 0;
      if (this.streamSource[stream] !== src) return;
      this.streamSource[stream] = CACHE;
      this.scheduleReplan();
      this.tryStart(node);
    });
  }

  private startFlow(src: number, dest: number, unit: number, done: number): void {
    const links =
      src === UPSTREAM
        ? [this.cacheLink("upstream"), this.cacheLink("ingress")]
        : [
            ...(src === CACHE ? [this.cacheLink("nic"), this.cacheLink("storage")] : [this.link(src, "up")]),
            this.link(dest, "down"),
            this.link(dest, "disk"),
          ];
    this.flows.push({ src, dest, unit, size: this.unitBytes[unit], done, startDone: done, rate: 0, links });
    if (src !== UPSTREAM) this.uploads[src === CACHE ? this.totalNodes : src]++;
    this.ratesStale = true;
  }

  private complete(flow: Flow): void {
    this.account(flow, flow.size);
    if (flow.dest === CACHE) {
      this.cacheHolds[flow.unit] = 1;
      const waiting = [...this.waitingOnCache];
      this.waitingOnCache.clear();
      for (const node of waiting) this.tryStart(node);
      return;
    }
    const node = flow.dest;
    const key = node * this.units + flow.unit;
    if (this.strategy === "wired") {
      const layer = this.unitLayer[flow.unit];
      const stream = node * this.layers + layer;
      this.nextPiece[stream]++;
      this.waitSince[stream] = this.now;
      if (this.nextPiece[stream] === this.layerUnits(layer)) {
        const open = this.openStreams[node];
        open.splice(open.indexOf(layer), 1);
      }
    }
    this.uploadEnded(flow.src);
    this.state[key] = HELD;
    this.partial.delete(key);
    this.downloads[node]--;
    this.heldCount[node]++;
    this.holders[flow.unit].push(node);
    if (this.heldCount[node] === this.units) {
      this.warmAt[node] = this.now;
      this.result.warmCurve.push([this.now, this.result.warmCurve.at(-1)![1] + 1]);
    }
    this.tryStart(node);
    for (const child of this.children.get(key) ?? []) this.tryStart(child);
    const waiting = this.waitingOnPiece.get(key);
    if (waiting) {
      this.waitingOnPiece.delete(key);
      for (const waiter of waiting) this.tryStart(waiter);
    }
  }

  private loop(): void {
    const limit = 1e7;
    while (this.result.events < limit) {
      this.result.events++;
      if (this.ratesStale) {
        const rates = maxMinRates(
          this.capacities,
          this.flows.map((flow) => flow.links),
        );
        for (const [i, flow] of this.flows.entries()) flow.rate = rates[i];
        this.ratesStale = false;
      }
      let step = Number.POSITIVE_INFINITY;
      for (const flow of this.flows) {
        if (flow.rate > 0) step = Math.min(step, (flow.size - flow.done) / flow.rate);
      }
      const timer = this.timers[0];
      const untilTimer = timer ? Math.max(0, timer.at - this.now) : Number.POSITIVE_INFINITY;
      if (step === Number.POSITIVE_INFINITY && untilTimer === Number.POSITIVE_INFINITY) break;
      const dt = Math.min(step, untilTimer);
      this.now += dt;
      const finished: Flow[] = [];
      const slack = Math.max(this.s.quantumS, this.s.quantumRelative * this.now);
      for (const flow of this.flows) {
        flow.done = Math.min(flow.size, flow.done + flow.rate * dt);
        const left = flow.size - flow.done;
        if (left <= flow.size * 1e-12 || (flow.rate > 0 && left / flow.rate <= slack + 1e-12))
          finished.push(flow);
      }
      if (finished.length > 0) {
        const gone = new Set(finished);
        this.flows = this.flows.filter((flow) => !gone.has(flow));
        this.ratesStale = true;
        for (const flow of finished) this.complete(flow);
      }
      while (this.timers.length > 0 && this.timers[0].at <= this.now + slack + 1e-12) {
        this.timers.shift()!.run();
      }
    }
  }

  private finish(): RunResult {
    const times: number[] = [];
    let last = 0;
    let allWarm = true;
    for (let i = 0; i < this.totalNodes; i++) {
      if (!this.alive[i]) continue;
      if (!Number.isFinite(this.warmAt[i])) allWarm = false;
      last = Math.max(last, this.warmAt[i]);
      times.push(this.warmAt[i] - this.startAt[i]);
    }
    times.sort((a, b) => a - b);
    this.result.allWarmS = allWarm ? last : Number.POSITIVE_INFINITY;
    this.result.p50S = percentile(times, 0.5);
    this.result.p99S = percentile(times, 0.99);
    return this.result;
  }
}

function validateScenario(s: Scenario): void {
  const positive: [string, number][] = [
    ["nodes", s.nodes],
    ["zones", s.zones],
    ["nodeDownBps", s.nodeDownBps],
    ["nodeUpBps", s.nodeUpBps],
    ["nodeDiskWriteBps", s.nodeDiskWriteBps],
    ["peerServingBps", s.peerServingBps],
    ["downloadsPerNode", s.downloadsPerNode],
    ["cacheNicBps", s.cacheNicBps],
    ["cacheStorageReadBps", s.cacheStorageReadBps],
    ["upstreamBps", s.upstreamBps],
    ["cacheSlots", s.cacheSlots],
    ["peerServingConcurrency", s.peerServingConcurrency],
    ["cacheServingConcurrency", s.cacheServingConcurrency],
  ];
  for (const [name, value] of positive) {
    if (!(value > 0))
      throw new StowageError("InvalidArgument", `scenario.${name} must be positive, got ${value}`);
  }
  if (s.layerBytes.length === 0 || s.layerBytes.some((bytes) => !(bytes > 0))) {
    throw new StowageError(
      "InvalidArgument",
      "scenario.layerBytes must list at least one layer, each of a positive size",
    );
  }
  for (const [name, value] of [
    ["pieceBytes", s.pieceBytes],
    ["peerSlots", s.peerSlots],
    ["reactionDelayS", s.reactionDelayS],
    ["stallTimeoutS", s.stallTimeoutS],
    ["quantumS", s.quantumS],
    ["quantumRelative", s.quantumRelative],
    ["startJitterS", s.startJitterS],
  ] as const) {
    if (!(value >= 0))
      throw new StowageError("InvalidArgument", `scenario.${name} must be zero or more, got ${value}`);
  }
}
