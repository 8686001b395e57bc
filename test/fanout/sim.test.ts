import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { runCli } from "../../sim/fanout/cli.ts";
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
    ]) {
      expect(text).toContain(row);
    }
    expect(text).toMatch(/(MET|NOT MET) +all nodes warm within 1\.5x/);
    expect(text).toMatch(/(MET|NOT MET) +cache egress at most 3 image copies/);
    expect(text).toMatch(/(MET|NOT MET) +a node failure mid fan-out/);
    const plot = await readFile(svg, "utf8");
    expect(plot.startsWith("<svg")).toBe(true);
    // Four strategies and the failure run.
    expect(plot.match(/<polyline /g)).toHaveLength(5);
  });

  it("refuses a bad option with the reason and the usage", async () => {
    const lines: string[] = [];
    const code = await runCli(["--nodes", "ten"], (line) => lines.push(line));
    expect(code).toBe(2);
    expect(lines[0]).toContain('--nodes must be a number of at least 1, got "ten"');
    expect(lines.join("\n")).toContain("usage: npm run sim:fanout");
  });
});
