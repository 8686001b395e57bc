import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { runCli, scenarioFromArgs } from "../../sim/fanout/cli.ts";
import { defaultScenario, type Scenario, simulate } from "../../sim/fanout/sim.ts";
import { StowageError } from "../../src/util/errors.ts";

const GBps = 1e9;

/** One 1 GB layer, 1 GB/s everywhere, no jitter or quantum: answers computable by hand. */
function tiny(overrides: Partial<Scenario>): Scenario {
  return {
    ...defaultScenario(),
    nodes: 1,
    zones: 1,
    layerBytes: [1e9],
    pieceBytes: 0,
    nodeDownBps: GBps,
    nodeUpBps: GBps,
    nodeDiskWriteBps: 100 * GBps,
    cacheNicBps: GBps,
    cacheStorageReadBps: 100 * GBps,
    upstreamBps: GBps,
    peerSlots: 1,
    cacheSlots: 1,
    peerServingConcurrency: 1,
    cacheServingConcurrency: 1,
    downloadsPerNode: 1,
    reactionDelayS: 0,
    stallTimeoutS: 1,
    quantumS: 0,
    quantumRelative: 0,
    startJitterS: 0,
    ...overrides,
  };
}

const copies = (r: { cacheEgressBytes: number; imageBytes: number }) => r.cacheEgressBytes / r.imageBytes;

describe("fan-out simulator", () => {
  it("star: four nodes on one saturated cache NIC each take four times as long as one alone", () => {
    const alone = simulate(tiny({ nodeDownBps: 10 * GBps }), "star");
    const four = simulate(tiny({ nodes: 4, nodeDownBps: 10 * GBps }), "star");
    expect(alone.allWarmS).toBeCloseTo(1, 9);
    expect(four.allWarmS).toBeCloseTo(4, 9);
    expect(four.p50S).toBeCloseTo(4, 9);
    expect(copies(four)).toBeCloseTo(4, 9);
  });

  it("star: the node's own NIC bounds it when the cache is faster", () => {
    // Cache 10 GB/s, nodes 1 GB/s: four nodes at once take as long as one.
    const four = simulate(tiny({ nodes: 4, cacheNicBps: 10 * GBps }), "star");
    expect(four.allWarmS).toBeCloseTo(1, 9);
  });

  it("planned: with k = 1 the second node waits for the first to hold the whole layer", () => {
    const result = simulate(tiny({ nodes: 2 }), "planned");
    // cache -> first node: 1 s; first node -> second node: 1 s more. One copy left the cache.
    expect(result.allWarmS).toBeCloseTo(2, 9);
    expect(copies(result)).toBeCloseTo(1, 9);
    expect(result.planCalls).toBe(1);
  });

  it("planned: pieces let the second node pull while the first is still pulling", () => {
    // Four 250 MB pieces: the first node has piece i at 0.25(i+1) s, the second gets it 0.25 s later.
    const result = simulate(tiny({ nodes: 2, pieceBytes: 0.25e9 }), "planned");
    expect(result.allWarmS).toBeCloseTo(1.25, 9);
    expect(copies(result)).toBeCloseTo(1, 9);
  });

  it("random peer: a node that joins later takes the layer from the node that holds it", () => {
    const result = simulate(tiny({ joins: [{ count: 1, atS: 5 }] }), "random");
    expect(result.allWarmS).toBeCloseTo(6, 9);
    expect(copies(result)).toBeCloseTo(1, 9);
  });

  it("a cold cache fetches each layer from the upstream once, however many nodes ask", () => {
    // Upstream 0.5 GB/s: the cache holds the layer at 2 s; two nodes then share its 1 GB/s NIC.
    const result = simulate(tiny({ nodes: 2, cacheWarm: false, upstreamBps: 0.5 * GBps }), "star");
    expect(result.upstreamBytes).toBeCloseTo(1e9, 0);
    expect(result.allWarmS).toBeCloseTo(4, 9);
  });

  it("planned: late joiners pull from peers, so cache egress stays at one copy", () => {
    const result = simulate(
      tiny({ nodes: 6, peerSlots: 2, joins: [{ count: 6, atS: 20 }], layerBytes: [0.5e9, 0.5e9] }),
      "planned",
    );
    expect(Number.isFinite(result.allWarmS)).toBe(true);
    expect(result.allWarmS).toBeGreaterThan(20);
    expect(copies(result)).toBeCloseTo(1, 9);
    expect(result.warmCurve.at(-1)![1]).toBe(12);
  });

  it("planned: a node failing mid fan-out re-plans only the pairs it was feeding and every other node gets warm", () => {
    const scenario = tiny({
      nodes: 30,
      peerSlots: 2,
      downloadsPerNode: 2,
      peerServingConcurrency: 2,
      layerBytes: [0.4e9, 0.4e9, 0.2e9],
      pieceBytes: 0.1e9,
    });
    const baseline = simulate(scenario, "planned");
    const result = simulate(
      { ...scenario, failures: [{ node: "busiest", atS: baseline.allWarmS / 3 }] },
      "planned",
    );
    expect(result.failureReplans).toHaveLength(1);
    const replan = result.failureReplans[0];
    expect(replan.fedByFailed).toBeGreaterThan(0);
    expect(replan.replanned).toBeGreaterThan(0);
    expect(replan.replanned).toBeLessThanOrEqual(replan.fedByFailed);
    expect(replan.outsideSubtree).toBe(0);
    expect(Number.isFinite(result.allWarmS)).toBe(true);
    expect(result.warmCurve.at(-1)![1]).toBe(29);
  });

  it("tree per blob (the first wiring): the second node of a k = 1 chain follows the first one piece behind, piece by piece", () => {
    // Four 250 MB pieces of one blob: the first node reads them from the cache, one after the
    // other, holding piece i at 0.25(i+1) s; the second node's stream asks its source for piece
    // i once it has piece i-1 and the source holds all of piece i: 0.25 s later each time.
    const result = simulate(tiny({ nodes: 2, pieceBytes: 0.25e9 }), "wired");
    expect(result.allWarmS).toBeCloseTo(1.25, 9);
    expect(copies(result)).toBeCloseTo(1, 9);
    expect(result.planCalls).toBe(1);
    // The second node's stream opened at 0 and waited 0.25 s for the first piece.
    expect(result.longestPieceWaitS).toBeCloseTo(0.25, 9);
  });

  it("tree per blob (the first wiring): a source feeding two nodes the same blob splits its uplink between the two streams", () => {
    // k = 2: the cache feeds one node (pieces at 0.25, 0.5, 0.75, 1 s); it feeds the two others
    // at 0.5 GB/s each, so each piece takes them 0.5 s: piece 0 over [0.25, 0.75], piece 1 (held
    // at 0.5) over [0.75, 1.25], then [1.25, 1.75] and [1.75, 2.25].
    const result = simulate(
      tiny({ nodes: 3, peerSlots: 2, peerServingConcurrency: 2, pieceBytes: 0.25e9 }),
      "wired",
    );
    expect(result.allWarmS).toBeCloseTo(2.25, 9);
    expect(copies(result)).toBeCloseTo(1, 9);
    expect(result.p50S).toBeCloseTo(2.25, 9);
  });

  it("tree per blob (the first wiring): a source at its serving concurrency makes the other stream wait for a whole piece", () => {
    // The same tree, but the source serves one request at a time: its two children take turns,
    // piece by piece, each piece at the full 1 GB/s (0.25 s): the source's uplink carries the
    // eight pieces one after the other from 0.25 s, the last ending at 2.25 s, and one child's
    // stream always waits for the other's piece to end.
    const result = simulate(
      tiny({ nodes: 3, peerSlots: 2, peerServingConcurrency: 1, pieceBytes: 0.25e9 }),
      "wired",
    );
    expect(result.allWarmS).toBeCloseTo(2.25, 9);
    // The child that went first ends a piece earlier: 2 s.
    expect(result.warmCurve).toEqual([
      [0, 0],
      [1, 1],
      [expect.closeTo(2, 9), 2],
      [expect.closeTo(2.25, 9), 3],
    ]);
  });

  it("tree per blob (the first wiring): a node streams at most its download slots of blobs at a time, in manifest order", () => {
    // Two 0.5 GB blobs in two pieces each, two nodes, k = 1: the planner roots each blob's tree
    // at a different node. With one slot, the node fed blob 1 by the cache opens it only after
    // its blob 0 (fed by the other node, which reads it from the cache) is complete: 0.75 s, and
    // the other node's blob 1 follows 0.25 s behind: 1.5 s.
    const one = simulate(tiny({ nodes: 2, layerBytes: [0.5e9, 0.5e9], pieceBytes: 0.25e9 }), "wired");
    expect(one.allWarmS).toBeCloseTo(1.5, 9);
    // With two slots both blobs stream at once and every link is shared by two: 1.25 s.
    const two = simulate(
      tiny({
        nodes: 2,
        layerBytes: [0.5e9, 0.5e9],
        pieceBytes: 0.25e9,
        downloadsPerNode: 2,
        cacheServingConcurrency: 2,
      }),
      "wired",
    );
    expect(two.allWarmS).toBeCloseTo(1.25, 9);
    expect(copies(one)).toBeCloseTo(1, 9);
    expect(copies(two)).toBeCloseTo(1, 9);
  });

  it("tree per blob (the first wiring): with one cache slot the cache sends one copy of the image to thirty nodes", () => {
    const result = simulate(
      tiny({
        nodes: 30,
        zones: 3,
        peerSlots: 3,
        downloadsPerNode: 3,
        peerServingConcurrency: 3,
        cacheServingConcurrency: 4,
        layerBytes: [0.4e9, 0.3e9, 0.2e9, 0.1e9],
        pieceBytes: 0.05e9,
        startJitterS: 0.5,
      }),
      "wired",
    );
    expect(result.warmCurve.at(-1)![1]).toBe(30);
    expect(copies(result)).toBeCloseTo(1, 9);
    expect(result.planCalls).toBe(1);
  });

  it("tree per blob (the first wiring): a node failing mid fan-out re-plans only the blobs it fed, its children's open streams finish from the cache", () => {
    const scenario = tiny({
      nodes: 30,
      peerSlots: 2,
      downloadsPerNode: 2,
      peerServingConcurrency: 2,
      layerBytes: [0.4e9, 0.4e9, 0.2e9],
      pieceBytes: 0.1e9,
    });
    const baseline = simulate(scenario, "wired");
    expect(copies(baseline)).toBeCloseTo(1, 9);
    const result = simulate(
      { ...scenario, failures: [{ node: "busiest", atS: baseline.allWarmS / 3 }] },
      "wired",
    );
    expect(result.failureReplans).toHaveLength(1);
    const replan = result.failureReplans[0];
    expect(replan.fedByFailed).toBeGreaterThan(0);
    expect(replan.replanned).toBeGreaterThan(0);
    expect(replan.replanned).toBeLessThanOrEqual(replan.fedByFailed);
    expect(replan.outsideSubtree).toBe(0);
    expect(result.warmCurve.at(-1)![1]).toBe(29);
    // The streams the failed node fed fetch the rest of their blob from the cache: more than
    // one copy left the cache, but far from one per orphaned stream's whole blob.
    expect(copies(result)).toBeGreaterThan(1);
    expect(result.allWarmS).toBeGreaterThan(baseline.allWarmS);
  });

  it("refuses a scenario that cannot run, with the field named", () => {
    expect(() => simulate(tiny({ nodes: 0 }), "star")).toThrow(StowageError);
    expect(() => simulate(tiny({ layerBytes: [] }), "star")).toThrow(/layerBytes/);
  });
});

describe("npm run sim:fanout", () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it("prints one table of the strategies, the goals, and writes the plot", async () => {
    dir = await mkdtemp(join(tmpdir(), "stowage-sim-"));
    const svg = join(dir, "plot.svg");
    const lines: string[] = [];
    const code = await runCli(
      ["--nodes", "12", "--image-gb", "1", "--piece-mib", "128", "--svg", svg],
      (line) => lines.push(line),
    );
    expect(code).toBe(0);
    const text = lines.join("\n");
    for (const row of [
      "star: every node",
      "random peer",
      "planned tree, whole layers",
      "planned tree, 128 MiB pieces",
      "planned tree per blob, pieces in order (first wiring)",
    ]) {
      expect(text).toContain(row);
    }
    // The goals twice: on the piece mode and on the tree-per-blob mode, each under its own heading.
    const pieceGoals = text.indexOf("goals (issue 15), planned tree, 128 MiB pieces");
    const wiredGoals = text.indexOf(
      "goals (issue 15), planned tree per blob, pieces in order (first wiring)",
    );
    expect(pieceGoals).toBeGreaterThan(0);
    expect(wiredGoals).toBeGreaterThan(pieceGoals);
    for (const section of [text.slice(pieceGoals, wiredGoals), text.slice(wiredGoals)]) {
      expect(section).toMatch(/(MET|NOT MET) +all nodes warm within 1\.5x/);
      expect(section).toMatch(/(MET|NOT MET) +cache egress at most 3 image copies/);
      expect(section).toMatch(/(MET|NOT MET) +a node failure mid fan-out/);
    }
    expect(text.slice(wiredGoals)).toContain("(node, blob) pairs");
    const plot = await readFile(svg, "utf8");
    expect(plot.startsWith("<svg")).toBe(true);
    // Five strategies and the failure runs of the piece and tree-per-blob modes.
    expect(plot.match(/<polyline /g)).toHaveLength(7);
  });

  it("runs only the modes asked for", async () => {
    dir = await mkdtemp(join(tmpdir(), "stowage-sim-"));
    const lines: string[] = [];
    const code = await runCli(
      ["--nodes", "12", "--image-gb", "1", "--modes", "star,wired", "--svg", join(dir, "plot.svg")],
      (line) => lines.push(line),
    );
    expect(code).toBe(0);
    const text = lines.join("\n");
    expect(text).toContain("star: every node");
    expect(text).toContain("(first wiring)");
    expect(text).not.toContain("random peer");
    expect(text).not.toContain("planned tree, whole layers");
    expect(text).not.toContain("MiB pieces ");
    expect(text).toMatch(/goals \(issue 15\), planned tree per blob/);
  });

  it("takes a fixed time quantum in ms instead of the default relative one", () => {
    const { scenario } = scenarioFromArgs(["--quantum-ms", "0.5"]);
    expect(scenario.quantumS).toBeCloseTo(0.0005, 12);
    expect(scenario.quantumRelative).toBe(0);
    expect(scenarioFromArgs([]).scenario.quantumRelative).toBeGreaterThan(0);
  });

  it("refuses a bad option with the reason and the usage", async () => {
    const lines: string[] = [];
    const code = await runCli(["--nodes", "ten"], (line) => lines.push(line));
    expect(code).toBe(2);
    expect(lines[0]).toContain('--nodes must be a number of at least 1, got "ten"');
    expect(lines.join("\n")).toContain("usage: npm run sim:fanout");
    const modes: string[] = [];
    expect(await runCli(["--modes", "star,tree"], (line) => modes.push(line))).toBe(2);
    expect(modes[0]).toContain('--modes must list some of star,random,layers,pieces,wired, got "star,tree"');
  });
});
