import { describe, expect, it } from "vitest";
import type { ModelImage } from "../../src/api/modelImage.ts";
import type { NodeCache } from "../../src/api/nodeCache.ts";
import { prewarmConfig } from "../../src/controller/prewarm/config.ts";
import type { Resolution } from "../../src/controller/prewarm/images.ts";
import type { PlannerNode } from "../../src/controller/prewarm/nodes.ts";
import { nodesInState, planPrewarm } from "../../src/controller/prewarm/plan.ts";
import { prewarmStatus } from "../../src/controller/prewarm/status.ts";
import type { Platform } from "../../src/oci/types.ts";

const digestFor = (arch: string) =>
  `sha256:${arch
    .padEnd(64, "0")
    .slice(0, 64)
    .replace(/[^0-9a-f]/g, "a")}`;
const amdDigest = digestFor("amd64");

const mi: ModelImage = {
  apiVersion: "stowage.dev/v1alpha1",
  kind: "ModelImage",
  metadata: { name: "llama", namespace: "ml" },
  spec: { variants: [{ name: "cpu", image: "docker.io/acme/llama:1", nodeSelector: { role: "cpu" } }] },
  status: { variants: [{ name: "cpu", cacheDigest: `sha256:${"f".repeat(64)}` }] },
};

function node(name: string, arch: string, ready = true): PlannerNode {
  return {
    metadata: { name, labels: { role: "cpu", "kubernetes.io/os": "linux", "kubernetes.io/arch": arch } },
    status: { conditions: [{ type: "Ready", status: ready ? "True" : "False" }] },
  };
}

/** The cache holds linux/amd64 only. */
const lookup = (_repository: string, _digest: string, platform: Platform): Resolution =>
  platform.architecture === "amd64"
    ? { ok: true, image: { digest: amdDigest, sizeBytes: 1000 } }
    : {
        ok: false,
        reason: "PlatformNotFound",
        message: `the cache holds no linux/${platform.architecture} image`,
      };

const heldBy = (name: string): NodeCache => ({
  apiVersion: "stowage.dev/v1alpha1",
  kind: "NodeCache",
  metadata: { name },
  spec: {
    nodeName: name,
    images: [
      {
        image: "docker.io/acme/llama:1",
        digest: amdDigest,
        requestedBy: [{ namespace: "ml", name: "llama", variant: "cpu" }],
      },
    ],
  },
});

const plan = (nodes: PlannerNode[], caches: NodeCache[] = []) =>
  planPrewarm({
    modelImages: [mi],
    nodes,
    nodeCaches: new Map(caches.map((nc) => [nc.metadata.name ?? "", nc])),
    lookup,
    config: prewarmConfig(),
    cacheEndpoint: "http://cache:5000",
  });

describe("planPrewarm (pure)", () => {
  it("skips a node whose platform the cache does not hold, saying so", () => {
    const result = plan([node("a", "amd64"), node("s", "s390x")]);
    expect(result.specs.get("a")?.images?.map((e) => e.digest)).toEqual([amdDigest]);
    expect(result.specs.has("s")).toBe(false);
    expect(result.modelImages.get("ml/llama")?.[0].decisions.find((d) => d.node === "s")).toMatchObject({
      state: "skipped",
      reason: "PlatformNotFound",
      message: "the cache holds no linux/s390x image",
    });
  });

  it("gives a NotReady node no new images but keeps what it already holds", () => {
    expect(plan([node("down", "amd64", false)]).specs.has("down")).toBe(false);
    const kept = plan([node("down", "amd64", false)], [heldBy("down")]);
    expect(kept.specs.get("down")?.images?.map((e) => e.digest)).toEqual([amdDigest]);
  });

  it("empties the spec of a NodeCache whose node no longer matches (the agent removes what it pulled)", () => {
    const other: PlannerNode = { ...node("x", "amd64"), metadata: { name: "x", labels: { role: "gpu" } } };
    expect(plan([other], [heldBy("x")]).specs.get("x")).toEqual({
      nodeName: "x",
      cacheEndpoint: "http://cache:5000",
      mirrorHosts: [],
      images: [],
    });
  });

  it("plans nothing for a ModelImage with prewarm disabled", () => {
    const disabled = { ...mi, spec: { ...mi.spec, prewarm: { enabled: false } } };
    const result = planPrewarm({
      modelImages: [disabled],
      nodes: [node("a", "amd64")],
      nodeCaches: new Map(),
      lookup,
      config: prewarmConfig(),
      cacheEndpoint: "http://cache:5000",
    });
    expect(result.specs.size).toBe(0);
  });

  it("holds nodes past maxConcurrentNodes back as one waiting group that status counts as desired", () => {
    const rollout = { ...mi, spec: { ...mi.spec, prewarm: { maxConcurrentNodes: 2 } } };
    const nodes = ["a", "b", "c", "d", "e"].map((name) => node(name, "amd64"));
    const result = planPrewarm({
      modelImages: [rollout],
      nodes,
      nodeCaches: new Map(),
      lookup,
      config: prewarmConfig(),
      cacheEndpoint: "http://cache:5000",
    });
    const [variant] = result.modelImages.get("ml/llama") ?? [];
    expect(nodesInState(variant, "planned")).toEqual(["a", "b"]);
    expect(variant.pending).toEqual({
      state: "waiting",
      reason: "RolloutWaiting",
      message: "waiting: 2 node(s) pulling (maxConcurrentNodes 2)",
      nodes: ["c", "d", "e"],
    });
    expect(variant.decisions.map((d) => d.node)).toEqual(["a", "b"]);
    expect([...result.specs.keys()].sort()).toEqual(["a", "b"]);
    const status = prewarmStatus(rollout, nodes, [], result);
    expect(status.variants.cpu).toMatchObject({ desired: 5, ready: 0, pulling: 2 });
  });

  it("groups the nodes an uncached variant will want as unresolved (NotCached), planning none", () => {
    const uncached = { ...mi, status: {} };
    const result = planPrewarm({
      modelImages: [uncached],
      nodes: [node("a", "amd64"), node("down", "amd64", false)],
      nodeCaches: new Map(),
      lookup,
      config: prewarmConfig(),
      cacheEndpoint: "http://cache:5000",
    });
    const [variant] = result.modelImages.get("ml/llama") ?? [];
    expect(variant).toMatchObject({ cached: false, decisions: [] });
    expect(nodesInState(variant, "unresolved")).toEqual(["a"]);
    expect(variant.pending?.reason).toBe("NotCached");
    expect(result.specs.size).toBe(0);
  });

  it("fits a node's disk budget by priority, counting a digest two ModelImages share once, and refuses the rest", () => {
    const withCapacity = (name: string, capacityBytes: number): NodeCache => ({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name },
      spec: { nodeName: name, images: [] },
      status: { imageFs: { capacityBytes } },
    });
    const sized = (digest: string, sizeBytes: number) => (): Resolution => ({
      ok: true,
      image: { digest, sizeBytes },
    });
    const model = (name: string, image: string, priority: number): ModelImage => ({
      ...mi,
      metadata: { name, namespace: "ml" },
      spec: { variants: [{ name: "cpu", image, nodeSelector: { role: "cpu" } }], prewarm: { priority } },
      status: {
        variants: [
          {
            name: "cpu",
            cacheDigest: `sha256:${name
              .padEnd(64, "0")
              .slice(0, 64)
              .replace(/[^0-9a-f]/g, "b")}`,
          },
        ],
      },
    });
    const big = digestFor("big");
    const small = digestFor("small");
    const result = planPrewarm({
      modelImages: [
        model("low", "docker.io/acme/big:1", 1),
        model("high", "docker.io/acme/small:1", 9),
        model("also", "docker.io/acme/small:1", 0),
      ],
      nodes: [node("a", "amd64")],
      nodeCaches: new Map([["a", withCapacity("a", 1000)]]),
      // default diskBudgetFraction 0.7: 700 bytes; small (600) fits once for both, big (200) no longer does
      lookup: (repository) => (repository.includes("big") ? sized(big, 200)() : sized(small, 600)()),
      config: prewarmConfig(),
      cacheEndpoint: "http://cache:5000",
    });
    expect(result.specs.get("a")?.images?.map((e) => [e.digest, e.requestedBy?.map((r) => r.name)])).toEqual([
      [small, ["also", "high"]],
    ]);
    expect(result.modelImages.get("ml/low")?.[0].decisions).toEqual([
      expect.objectContaining({ node: "a", state: "refused", reason: "QuotaExceeded" }),
    ]);
    expect(result.modelImages.get("ml/low")?.[0].decisions[0].message).toMatch(/600 bytes are planned/);
  });
});
