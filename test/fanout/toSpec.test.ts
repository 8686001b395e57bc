import { describe, expect, it } from "vitest";
import type { NodeCacheImage } from "../../src/api/nodeCache.ts";
import { planFanout } from "../../src/controller/fanout/plan.ts";
import { fanoutSpecs, withFanout } from "../../src/controller/fanout/toSpec.ts";
import { StowageError } from "../../src/util/errors.ts";

const D1 = `sha256:${"1".repeat(64)}`;
const D2 = `sha256:${"2".repeat(64)}`;
const M1 = `sha256:${"a".repeat(64)}`;

function threeNodePlan() {
  // a holds D1; b and c want D1 and D2 (D2 held by nobody: the cache feeds the first wave).
  return planFanout({
    config: { peerSlots: 3, cacheSlots: 1 },
    blobs: [
      { digest: D1, sizeBytes: 250, declared: true },
      { digest: D2, sizeBytes: 100, declared: true },
    ],
    nodes: [
      { name: "a", holds: [D1], wants: [D1] },
      { name: "b", holds: [], wants: [D1, D2] },
      { name: "c", holds: [], wants: [D1, D2] },
    ],
  });
}

const options = {
  pieceBytes: 100,
  blobSizes: new Map([
    [D1, 250],
    [D2, 100],
  ]),
  endpoints: new Map([
    ["a", "http://10.0.0.1:5007"],
    ["b", "http://10.0.0.2:5007"],
    ["c", "http://10.0.0.3:5007"],
  ]),
};

describe("fan-out plan to NodeCache spec entries", () => {
  it("splits each assigned blob into pieces in offset order, the last one shorter, with the plan's source and wave", () => {
    const plan = threeNodePlan();
    const specs = fanoutSpecs(plan, options);
    expect([...specs.keys()].sort()).toEqual(["b", "c"]);
    for (const [node, spec] of specs) {
      for (const assignment of plan.assignments.filter((a) => a.node === node)) {
        const source = assignment.source.kind === "cache" ? "cache" : assignment.source.node;
        const pieces = spec.pieces.get(assignment.digest);
        const size = options.blobSizes.get(assignment.digest) as number;
        expect(pieces?.map((p) => [p.offset, p.length])).toEqual(
          size === 250
            ? [
                [0, 100],
                [100, 100],
                [200, 50],
              ]
            : [[0, 100]],
        );
        expect(new Set(pieces?.map((p) => `${p.source}/${p.wave}`))).toEqual(
          new Set([`${source}/${assignment.wave}`]),
        );
      }
    }
  });

  it("lists exactly the peers the pieces name and the peer-assigned digests for the token", () => {
    const specs = fanoutSpecs(threeNodePlan(), options);
    for (const spec of specs.values()) {
      const peerSources = new Set(
        [...spec.pieces.values()].flat().flatMap((p) => (p.source === "cache" ? [] : [p.source])),
      );
      expect(spec.peers.map((p) => p.node)).toEqual([...peerSources].sort());
      for (const peer of spec.peers) expect(peer.endpoint).toBe(options.endpoints.get(peer.node));
      const peerDigests = [...spec.pieces.entries()]
        .filter(([, pieces]) => pieces.some((p) => p.source !== "cache"))
        .map(([digest]) => digest)
        .sort();
      expect(spec.peerDigests).toEqual(peerDigests);
    }
    // D1 is held by a, so at least one receiver reads it from a peer.
    expect([...specs.values()].some((s) => s.peerDigests.includes(D1))).toBe(true);
  });

  it("puts each image's own blobs' pieces on that image and clears a stale fanout", () => {
    const specs = fanoutSpecs(threeNodePlan(), options);
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
    const plan = threeNodePlan();
    expect(() => fanoutSpecs(plan, { ...options, pieceBytes: 0 })).toThrow(
      /pieceBytes must be a positive integer/,
    );
    expect(() => fanoutSpecs(plan, { ...options, blobSizes: new Map([[D1, 250]]) })).toThrow(
      new RegExp(`no positive size for ${D2}`),
    );
    const err = (() => {
      try {
        fanoutSpecs(plan, { ...options, endpoints: new Map() });
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(StowageError);
    expect((err as Error).message).toMatch(/from a, which has no peer endpoint/);
  });
});
