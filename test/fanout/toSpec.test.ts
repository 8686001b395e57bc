import { describe, expect, it } from "vitest";
import type { NodeCacheImage } from "../../src/api/nodeCache.ts";
import { planFanout } from "../../src/controller/fanout/plan.ts";
import {
  assignmentsOfSpec,
  fanoutSpecs,
  pieceId,
  pieceLayout,
  withFanout,
} from "../../src/controller/fanout/toSpec.ts";
import { StowageError } from "../../src/util/errors.ts";

const D1 = `sha256:${"1".repeat(64)}`;
const D2 = `sha256:${"2".repeat(64)}`;
const M1 = `sha256:${"a".repeat(64)}`;

const layout = pieceLayout(
  [
    { digest: D1, size: 250 },
    { digest: D2, size: 100 },
  ],
  100,
);
const endpoints = new Map([
  ["a", "http://10.0.0.1:5007"],
  ["b", "http://10.0.0.2:5007"],
  ["c", "http://10.0.0.3:5007"],
  ["d", "http://10.0.0.4:5007"],
]);
const pieces = (digest: string) => layout.byBlob.get(digest) ?? [];

function fourNodePlan() {
  // a holds D1; b, c and d want D1 and D2 (D2 held by nobody: the cache feeds its first wave).
  return planFanout({
    config: { peerSlots: 1, cacheSlots: 1 },
    blobs: layout.units,
    nodes: [
      { name: "a", holds: pieces(D1), wants: pieces(D1) },
      ...["b", "c", "d"].map((name) => ({ name, holds: [], wants: [...pieces(D1), ...pieces(D2)] })),
    ],
  });
}

describe("fan-out plan to NodeCache spec entries", () => {
  it("cuts each blob into pieces in offset order, the last one shorter, each a unit of its own for the planner", () => {
    expect(layout.byBlob.get(D1)).toEqual([pieceId(D1, 0), pieceId(D1, 100), pieceId(D1, 200)]);
    expect([...layout.pieces.values()].map((p) => [p.digest, p.offset, p.length])).toEqual([
      [D1, 0, 100],
      [D1, 100, 100],
      [D1, 200, 50],
      [D2, 0, 100],
    ]);
    expect(layout.units.map((u) => u.sizeBytes)).toEqual([100, 100, 50, 100]);
  });

  it("gives every wanted piece its own source and wave, so one blob's pieces come from several nodes", () => {
    const plan = fourNodePlan();
    const specs = fanoutSpecs(plan, { layout, endpoints });
    expect([...specs.keys()].sort()).toEqual(["b", "c", "d"]);
    for (const [node, spec] of specs) {
      expect(spec.pieces.get(D1)?.map((p) => [p.offset, p.length])).toEqual([
        [0, 100],
        [100, 100],
        [200, 50],
      ]);
      for (const piece of [...spec.pieces.values()].flat()) {
        const assignment = plan.assignments.find(
          (a) => a.node === node && a.digest === pieceId(piece.digest, piece.offset),
        );
        expect(piece.source).toBe(
          assignment?.source.kind === "peer" ? assignment.source.node : assignment ? "cache" : "none",
        );
        expect(piece.wave).toBe(assignment?.wave);
      }
    }
    // With k = 1 the pieces' trees are chains in different orders: some node reads D1 from two sources.
    const mixed = [...specs.values()].some((s) => new Set(s.pieces.get(D1)?.map((p) => p.source)).size > 1);
    expect(mixed).toBe(true);
  });

  it("lists exactly the peers the pieces name and the blobs read from peers, for the token", () => {
    const specs = fanoutSpecs(fourNodePlan(), { layout, endpoints });
    for (const spec of specs.values()) {
      const peerSources = new Set(
        [...spec.pieces.values()].flat().flatMap((p) => (p.source === "cache" ? [] : [p.source])),
      );
      expect(spec.peers.map((p) => p.node)).toEqual([...peerSources].sort());
      for (const peer of spec.peers) expect(peer.endpoint).toBe(endpoints.get(peer.node));
      const peerDigests = [...spec.pieces.entries()]
        .filter(([, list]) => list.some((p) => p.source !== "cache"))
        .map(([digest]) => digest)
        .sort();
      expect(spec.peerDigests).toEqual(peerDigests);
    }
  });

  it("reads the written pieces back as the planner's current plan, and the plan is the same from them", () => {
    const plan = fourNodePlan();
    const specs = fanoutSpecs(plan, { layout, endpoints });
    const images = (node: string): NodeCacheImage[] => [
      {
        image: "docker.io/acme/llama:1",
        digest: M1,
        fanout: [...(specs.get(node)?.pieces.values() ?? [])].flat(),
      },
    ];
    const current = ["b", "c", "d"].flatMap((node) => assignmentsOfSpec(node, images(node), layout));
    expect(current.map((a) => `${a.node} ${a.digest}`).sort()).toEqual(
      plan.assignments.map((a) => `${a.node} ${a.digest}`).sort(),
    );
    // A piece size that changed since the spec was written is not carried over.
    expect(assignmentsOfSpec("b", images("b"), pieceLayout([{ digest: D1, size: 250 }], 125))).toEqual([]);
    const again = planFanout({
      config: { peerSlots: 1, cacheSlots: 1 },
      blobs: layout.units,
      nodes: [
        { name: "a", holds: pieces(D1), wants: pieces(D1) },
        ...["b", "c", "d"].map((name) => ({ name, holds: [], wants: [...pieces(D1), ...pieces(D2)] })),
      ],
      current,
    });
    expect(again.assignments).toEqual(plan.assignments);
  });

  it("puts each image's own blobs' pieces on that image and clears a stale fanout", () => {
    const specs = fanoutSpecs(fourNodePlan(), { layout, endpoints });
    const images: NodeCacheImage[] = [
      { image: "docker.io/acme/llama:1", digest: M1 },
      {
        image: "docker.io/acme/other:1",
        digest: `sha256:${"b".repeat(64)}`,
        fanout: [{ digest: D2, offset: 0, length: 1, source: "cache", wave: 1 }],
      },
    ];
    const blobs = new Map([
      [M1, [D1, D2]],
      [images[1].digest, [`sha256:${"9".repeat(64)}`]],
    ]);
    const out = withFanout(images, specs.get("b"), (image) => blobs.get(image.digest) ?? []);
    expect(out[0].fanout?.map((p) => [p.digest, p.offset])).toEqual([
      [D1, 0],
      [D1, 100],
      [D1, 200],
      [D2, 0],
    ]);
    expect(out[1]).not.toHaveProperty("fanout");
    expect(withFanout(images, undefined, () => [D1])[1]).not.toHaveProperty("fanout");
  });

  it("refuses a non-positive piece size, a blob without a size and a peer without an endpoint, saying which", () => {
    expect(() => pieceLayout([{ digest: D1, size: 250 }], 0)).toThrow(
      /pieceBytes must be a positive integer/,
    );
    expect(() => pieceLayout([{ digest: D2, size: 0 }], 100)).toThrow(
      new RegExp(`no positive size for ${D2}`),
    );
    const err = (() => {
      try {
        fanoutSpecs(fourNodePlan(), { layout, endpoints: new Map() });
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(StowageError);
    expect((err as Error).message).toMatch(/which has no peer endpoint/);
  });
});
