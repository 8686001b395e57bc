import { describe, expect, it } from "vitest";
import {
  type FanoutAssignment,
  type FanoutInput,
  type FanoutNode,
  type FanoutPlan,
  planFanout,
} from "../../src/controller/fanout/plan.ts";
import { StowageError } from "../../src/util/errors.ts";

const D1 = `sha256:${"1".repeat(64)}`;
const D2 = `sha256:${"2".repeat(64)}`;

function nodes(
  count: number,
  options: { wants?: string[]; zone?: (i: number) => string } = {},
): FanoutNode[] {
  return Array.from({ length: count }, (_, i) => ({
    name: `n${String(i).padStart(3, "0")}`,
    zone: options.zone?.(i),
    holds: [],
    wants: options.wants ?? [D1],
  }));
}

function input(nodeList: FanoutNode[], overrides: Partial<FanoutInput> = {}): FanoutInput {
  return {
    config: { peerSlots: 3, cacheSlots: 1 },
    blobs: [
      { digest: D1, sizeBytes: 1000, declared: true },
      { digest: D2, sizeBytes: 2000, declared: true },
    ],
    nodes: nodeList,
    ...overrides,
  };
}

function sourceName(a: FanoutAssignment): string {
  return a.source.kind === "cache" ? "cache" : a.source.node;
}

function of(plan: FanoutPlan, digest = D1): Map<string, FanoutAssignment> {
  return new Map(plan.assignments.filter((a) => a.digest === digest).map((a) => [a.node, a]));
}

function childrenCount(plan: FanoutPlan, digest = D1): Map<string, number> {
  const counts = new Map<string, number>();
  for (const a of of(plan, digest).values()) counts.set(sourceName(a), (counts.get(sourceName(a)) ?? 0) + 1);
  return counts;
}

/** Nodes whose source is `node`, and theirs, down the tree. */
function subtreeOf(plan: FanoutPlan, node: string, digest = D1): Set<string> {
  const byNode = of(plan, digest);
  const found = new Set<string>();
  let frontier = [node];
  while (frontier.length > 0) {
    const next: string[] = [];
    for (const a of byNode.values()) {
      if (a.source.kind === "peer" && frontier.includes(a.source.node) && !found.has(a.node)) {
        found.add(a.node);
        next.push(a.node);
      }
    }
    frontier = next;
  }
  return found;
}

describe("fan-out planner", () => {
  it("has the cache feed the first wave and each node feed at most k nodes of the next wave", () => {
    // 1 + 3 + 9 = 13 nodes: a full tree of three waves with k = 3 and one cache slot.
    const plan = planFanout(input(nodes(13)));
    const byNode = of(plan);
    expect(byNode.size).toBe(13);
    const waves = [1, 2, 3].map((wave) => [...byNode.values()].filter((a) => a.wave === wave));
    expect(waves.map((w) => w.length)).toEqual([1, 3, 9]);
    expect(waves[0].every((a) => a.source.kind === "cache")).toBe(true);
    for (const a of [...waves[1], ...waves[2]]) {
      expect(a.source.kind).toBe("peer");
      expect(byNode.get(sourceName(a))!.wave).toBe(a.wave - 1);
    }
    for (const [source, count] of childrenCount(plan)) {
      expect(count, source).toBeLessThanOrEqual(source === "cache" ? 1 : 3);
    }
  });

  it("spreads a wave over its parents before going a wave deeper", () => {
    // 1 + 3 + 4: the 4 third-wave nodes sit under 3 different second-wave parents.
    const plan = planFanout(input(nodes(8)));
    const third = [...of(plan).values()].filter((a) => a.wave === 3);
    expect(third).toHaveLength(4);
    expect(new Set(third.map(sourceName)).size).toBe(3);
  });

  it("honours a node's own peerSlots, and a node with 0 slots feeds nobody", () => {
    const list = nodes(10).map((node, i) => ({ ...node, peerSlots: i < 5 ? 0 : 1 }));
    const plan = planFanout(input(list, { config: { peerSlots: 3, cacheSlots: 2 } }));
    const counts = childrenCount(plan);
    for (const node of list) {
      expect(counts.get(node.name) ?? 0, node.name).toBeLessThanOrEqual(node.peerSlots!);
    }
    expect(of(plan).size).toBe(10);
  });

  it("gives the cache's slot to a node that can serve, so the cache feeds no more than its slots and the next pass changes nothing", () => {
    // n000 serves no peers and comes first in D1's order: it must not take the cache's only slot.
    const list = nodes(5).map((node) => (node.name === "n000" ? { ...node, peerSlots: 0 } : node));
    const once = planFanout(input(list, { config: { peerSlots: 2, cacheSlots: 1 } }));
    expect(childrenCount(once).get("cache")).toBe(1);
    expect(sourceName(of(once).get("n000") as FanoutAssignment)).not.toBe("cache");
    const twice = planFanout(
      input(list, { config: { peerSlots: 2, cacheSlots: 1 }, current: once.assignments }),
    );
    expect(twice.assignments).toEqual(once.assignments);
    expect(twice.replanned).toEqual([]);
  });

  it("gives each digest a different set of feeding nodes, so uploads are spread over the cluster", () => {
    const plan = planFanout(input(nodes(30, { wants: [D1, D2] })));
    const feeders = (digest: string) =>
      new Set([...childrenCount(plan, digest).keys()].filter((s) => s !== "cache"));
    const first = feeders(D1);
    const second = feeders(D2);
    const shared = [...first].filter((name) => second.has(name));
    expect(first.size).toBeGreaterThan(0);
    expect(shared.length).toBeLessThan(first.size / 2);
  });

  it("re-attaches a failed peer's children with their subtrees and changes no other assignment", () => {
    const list = nodes(40);
    const before = planFanout(input(list));
    // A second-wave node: it has a parent and a subtree of its own.
    const failed = [...of(before).values()].find(
      (a) => a.wave === 2 && subtreeOf(before, a.node).size > 1,
    )!.node;
    const children = [...of(before).values()].filter((a) => sourceName(a) === failed).map((a) => a.node);
    const grandchildren = [...subtreeOf(before, failed)].filter((name) => !children.includes(name));
    expect(children.length).toBeGreaterThan(0);
    expect(grandchildren.length).toBeGreaterThan(0);

    const after = planFanout(
      input(list, { current: before.assignments, unavailablePeers: [{ node: failed, reason: "Failed" }] }),
    );
    expect(after.replanned.map((r) => r.node).sort()).toEqual([...children].sort());
    expect(after.replanned.every((r) => r.reason === "PeerUnavailable")).toBe(true);
    for (const a of of(after).values()) {
      const previous = of(before).get(a.node)!;
      if (children.includes(a.node)) {
        expect(sourceName(a)).not.toBe(failed);
      } else {
        // Everything else, the failed node's own source and its grandchildren included, stays.
        expect(sourceName(a), a.node).toBe(sourceName(previous));
      }
    }
    for (const [source, count] of childrenCount(after)) {
      expect(count, source).toBeLessThanOrEqual(source === "cache" ? 1 : 3);
    }
  });

  it("treats a node that left the plan like a failed peer (PeerGone) and drops its own assignment", () => {
    const list = nodes(20);
    const before = planFanout(input(list));
    const gone = [...of(before).values()].find((a) => a.wave === 1)!.node;
    const after = planFanout(
      input(
        list.filter((node) => node.name !== gone),
        { current: before.assignments },
      ),
    );
    expect(of(after).has(gone)).toBe(false);
    const children = [...of(before).values()].filter((a) => sourceName(a) === gone).map((a) => a.node);
    expect(after.replanned.map((r) => r.node).sort()).toEqual(children.sort());
    expect(after.replanned.every((r) => r.reason === "PeerGone")).toBe(true);
    // Its old cache slot is free again: one of its children takes it.
    expect([...of(after).values()].filter((a) => a.source.kind === "cache").map((a) => a.node)).toHaveLength(
      1,
    );
  });

  it("keeps a stalled peer pulling but gives it no children", () => {
    const list = nodes(13);
    const before = planFanout(input(list));
    const stalled = [...of(before).values()].find((a) => a.wave === 2)!;
    const after = planFanout(
      input(list, {
        current: before.assignments,
        unavailablePeers: [{ node: stalled.node, reason: "Stalled" }],
      }),
    );
    expect(sourceName(of(after).get(stalled.node)!)).toBe(sourceName(stalled));
    expect(childrenCount(after).get(stalled.node) ?? 0).toBe(0);
  });

  it("prefers a source in the node's own zone", () => {
    const holders: FanoutNode[] = [
      { name: "a-holder", zone: "a", holds: [D1], wants: [D1] },
      { name: "b-holder", zone: "b", holds: [D1], wants: [D1] },
    ];
    const joiners: FanoutNode[] = ["b1", "b2", "a1"].map((name) => ({
      name,
      zone: name[0],
      holds: [],
      wants: [D1],
    }));
    const plan = planFanout(input([...holders, ...joiners]));
    expect(sourceName(of(plan).get("b1")!)).toBe("b-holder");
    expect(sourceName(of(plan).get("b2")!)).toBe("b-holder");
    expect(sourceName(of(plan).get("a1")!)).toBe("a-holder");
  });

  it("prefers the source with more serving rate per child among equally near ones", () => {
    const slow: FanoutNode = { name: "a-slow", holds: [D1], wants: [D1], servingBytesPerSecond: 100 };
    const fast: FanoutNode = { name: "b-fast", holds: [D1], wants: [D1], servingBytesPerSecond: 300 };
    const joiners = ["j1", "j2", "j3", "j4"].map((name) => ({ name, holds: [], wants: [D1] }));
    const counts = childrenCount(planFanout(input([slow, fast, ...joiners])));
    // Loads (children + 1) / rate: the fast one takes three before the slow one's first is worth it.
    expect(counts.get("b-fast")).toBe(3);
    expect(counts.get("a-slow")).toBe(1);
  });

  it("has a late joiner pull from a node that holds the blob, not the cache or a node still pulling", () => {
    const holder: FanoutNode = { name: "h", holds: [D1], wants: [D1] };
    const pulling: FanoutNode = { name: "p", holds: [], wants: [D1] };
    const current: FanoutAssignment[] = [{ node: "p", digest: D1, source: { kind: "cache" }, wave: 1 }];
    // "a-late" sorts first, so a name order could not be what puts it under the holder.
    const joiner: FanoutNode = { name: "a-late", holds: [], wants: [D1] };
    const plan = planFanout(
      input([holder, pulling, joiner], { config: { peerSlots: 3, cacheSlots: 2 }, current }),
    );
    expect(of(plan).get("a-late")).toMatchObject({ source: { kind: "peer", node: "h" }, wave: 1 });
    expect(of(plan).get("p")).toMatchObject({ source: { kind: "cache" }, wave: 1 });
    expect(plan.replanned).toEqual([]);
  });

  it("frees a finished node's slot for the next node and keeps its children under it", () => {
    const list = nodes(4); // the cache feeds one node, which feeds the other three
    const first = planFanout(input(list));
    const top = [...of(first).values()].find((a) => a.wave === 1)!.node;
    const progressed = list.map((node) => (node.name === top ? { ...node, holds: [D1] } : node));
    const plan = planFanout(
      input([...progressed, { name: "late", holds: [], wants: [D1] }], { current: first.assignments }),
    );
    expect(of(plan).has(top)).toBe(false);
    // The finished node's children keep it; it now counts as wave 0 so they are wave 1.
    for (const a of of(plan).values()) {
      if (a.node !== "late") expect(a).toMatchObject({ source: { kind: "peer", node: top }, wave: 1 });
    }
    // Its three slots are taken, so the newcomer gets the cache slot it no longer uses.
    expect(of(plan).get("late")!.source).toEqual({ kind: "cache" });
    expect(plan.replanned).toEqual([]);
  });

  it("falls back to the cache for a late joiner when every holder's slots are taken", () => {
    const holder: FanoutNode = { name: "h", holds: [D1], wants: [D1], peerSlots: 0 };
    const plan = planFanout(input([holder, { name: "late", holds: [], wants: [D1] }]));
    expect(of(plan).get("late")!.source).toEqual({ kind: "cache" });
  });

  it("gives the same plan when planning again from its own output (idempotent)", () => {
    const list = nodes(60, { wants: [D1, D2], zone: (i) => `z${i % 3}` }).map((node, i) =>
      i % 7 === 0 ? { ...node, holds: [D2] } : node,
    );
    const once = planFanout(input(list, { unavailablePeers: [{ node: "n007", reason: "Stalled" }] }));
    const twice = planFanout(
      input(list, { current: once.assignments, unavailablePeers: [{ node: "n007", reason: "Stalled" }] }),
    );
    expect(twice.assignments).toEqual(once.assignments);
    expect(twice.replanned).toEqual([]);
    // And the input order does not matter.
    const shuffled = planFanout(
      input([...list].reverse(), { unavailablePeers: [{ node: "n007", reason: "Stalled" }] }),
    );
    expect(shuffled.assignments).toEqual(once.assignments);
  });

  it("does not fan out undeclared (pull-through) or unknown digests", () => {
    const undeclared = `sha256:${"3".repeat(64)}`;
    const unknown = `sha256:${"4".repeat(64)}`;
    const plan = planFanout(
      input(nodes(3, { wants: [D1, undeclared, unknown] }), {
        blobs: [
          { digest: D1, sizeBytes: 1, declared: true },
          { digest: undeclared, sizeBytes: 1, declared: false },
        ],
      }),
    );
    expect(plan.assignments.every((a) => a.digest === D1)).toBe(true);
    expect(plan.skipped.filter((s) => s.digest === undeclared).map((s) => s.reason)).toEqual([
      "Undeclared",
      "Undeclared",
      "Undeclared",
    ]);
    expect(plan.skipped.filter((s) => s.digest === unknown).every((s) => s.reason === "UnknownDigest")).toBe(
      true,
    );
  });

  it("re-plans only the children beyond a lowered k (OverCapacity)", () => {
    const list = nodes(13);
    const before = planFanout(input(list));
    const after = planFanout(
      input(list, { config: { peerSlots: 2, cacheSlots: 1 }, current: before.assignments }),
    );
    expect(after.replanned.length).toBeGreaterThan(0);
    expect(after.replanned.every((r) => r.reason === "OverCapacity")).toBe(true);
    for (const [source, count] of childrenCount(after)) {
      expect(count, source).toBeLessThanOrEqual(source === "cache" ? 1 : 2);
    }
    const moved = new Set(after.replanned.map((r) => r.node));
    for (const a of of(after).values()) {
      if (!moved.has(a.node)) expect(sourceName(a)).toBe(sourceName(of(before).get(a.node)!));
    }
  });

  it("breaks a loop in the previous assignments instead of leaving its nodes without a source", () => {
    const list = nodes(2);
    const loop: FanoutAssignment[] = [
      { node: "n000", digest: D1, source: { kind: "peer", node: "n001" }, wave: 2 },
      { node: "n001", digest: D1, source: { kind: "peer", node: "n000" }, wave: 2 },
    ];
    const plan = planFanout(input(list, { current: loop }));
    expect(of(plan).size).toBe(2);
    expect(plan.replanned.map((r) => r.reason)).toEqual(["Cycle"]);
    expect([...of(plan).values()].some((a) => a.source.kind === "cache")).toBe(true);
  });

  it("refuses bad input with a reason", () => {
    const bad: [Partial<FanoutInput>, RegExp][] = [
      [{ config: { peerSlots: 3, cacheSlots: 0 } }, /cacheSlots must be at least 1/],
      [{ config: { peerSlots: -1, cacheSlots: 1 } }, /peerSlots must be a non-negative integer/],
      [{ nodes: [...nodes(1), ...nodes(1)] }, /node n000 is listed twice/],
      [{ blobs: [{ digest: D1, sizeBytes: -5, declared: true }] }, /has size -5/],
    ];
    for (const [overrides, message] of bad) {
      let caught: unknown;
      try {
        planFanout(input(nodes(2), overrides));
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(StowageError);
      expect((caught as StowageError).reason).toBe("InvalidArgument");
      expect((caught as StowageError).message).toMatch(message);
    }
  });
});
