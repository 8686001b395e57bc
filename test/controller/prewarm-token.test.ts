import { describe, expect, it } from "vitest";
import type { ModelImage } from "../../src/api/modelImage.ts";
import type { NodeCache } from "../../src/api/nodeCache.ts";
import { verifyNodeToken } from "../../src/cache/nodeToken.ts";
import { prewarmConfig } from "../../src/controller/prewarm/config.ts";
import type { ImageResolver, Resolution } from "../../src/controller/prewarm/images.ts";
import type { PlannerNode } from "../../src/controller/prewarm/nodes.ts";
import { planPrewarm } from "../../src/controller/prewarm/plan.ts";
import { createPrewarmReconciler } from "../../src/controller/prewarm/reconciler.ts";
import type { ObjectClient } from "../../src/kube/client.ts";
import type { EventRecorder } from "../../src/kube/events.ts";
import { silentLogger } from "../../src/util/log.ts";

const secret = Buffer.from("a-node-token-secret-of-at-least-32-bytes");
const digestA = `sha256:${"a".repeat(64)}`;
const digestB = `sha256:${"b".repeat(64)}`;

function modelImage(name: string, image: string, cacheDigest: string): ModelImage {
  return {
    apiVersion: "stowage.dev/v1alpha1",
    kind: "ModelImage",
    metadata: { name, namespace: "ml" },
    spec: { variants: [{ name: "cpu", image, nodeSelector: { role: "cpu" } }] },
    status: { variants: [{ name: "cpu", cacheDigest }] },
  };
}

function node(name: string): PlannerNode {
  return {
    metadata: {
      name,
      uid: `uid-${name}`,
      labels: { role: "cpu", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64" },
    },
    status: { conditions: [{ type: "Ready", status: "True" }] },
  };
}

/** By default the cache resolves an image's top-level digest to itself (single-platform images). */
const sameDigest = (digest: string) => digest;

/** The planner's reconciler over in-memory objects, with a clock the test moves. */
function plannerOver(
  modelImages: ModelImage[],
  nodes: PlannerNode[],
  ttlMs = 60 * 60_000,
  platformDigestOf: (digest: string) => string = sameDigest,
) {
  const resolver = {
    resolve: async (_repository: string, digest: string): Promise<Resolution> => ({
      ok: true,
      image: { digest: platformDigestOf(digest), sizeBytes: 1000 },
    }),
  } as unknown as ImageResolver;
  const stored = new Map<string, NodeCache>();
  let writes = 0;
  let now = Date.parse("2026-12-04T20:00:00Z");
  const nodeCacheClient = {
    create: async (nc: NodeCache) => {
      writes++;
      stored.set(nc.metadata.name ?? "", structuredClone(nc));
      return nc;
    },
    update: async (nc: NodeCache) => {
      writes++;
      stored.set(nc.metadata.name ?? "", structuredClone(nc));
      return nc;
    },
  } as unknown as ObjectClient<NodeCache>;
  const reconcile = createPrewarmReconciler({
    modelImages: () => modelImages,
    nodes: () => nodes,
    nodeCaches: () => [...stored.values()].map((nc) => structuredClone(nc)),
    nodeCacheClient,
    nodeClient: { patch: async () => ({}) } as unknown as ObjectClient<PlannerNode>,
    resolver,
    config: prewarmConfig({ nodeTokenSecret: secret, nodeTokenTtlMs: ttlMs, warmingTaint: false }),
    cacheEndpoint: "http://10.0.0.5:5002",
    events: { event: async () => {} } as unknown as EventRecorder,
    clock: { now: () => now, sleep: async () => {} },
    log: silentLogger(),
    onPlan: () => {},
  });
  return {
    stored,
    writes: () => writes,
    now: () => now,
    advance: (ms: number) => {
      now += ms;
    },
    pass: () => reconcile("cluster", { signal: new AbortController().signal } as never),
  };
}

describe("node tokens in NodeCache specs", () => {
  it("signs a token per node naming that node and exactly the digests planned there", async () => {
    const llama = modelImage("llama", "docker.io/acme/llama:1", digestA);
    const mistral = { ...modelImage("mistral", "ghcr.io/acme/mistral:2", digestB) };
    mistral.spec = {
      variants: [{ name: "cpu", image: "ghcr.io/acme/mistral:2", nodeSelector: { gpu: "yes" } }],
    };
    const gpu = node("gpu-1");
    gpu.metadata = { ...gpu.metadata, labels: { ...gpu.metadata?.labels, gpu: "yes" } };
    const planner = plannerOver([llama, mistral], [node("cpu-1"), gpu]);
    await planner.pass();

    const cpuToken = planner.stored.get("cpu-1")?.spec.pullToken;
    const gpuToken = planner.stored.get("gpu-1")?.spec.pullToken;
    expect(cpuToken).toBeDefined();
    expect(gpuToken).toBeDefined();
    const cpuClaims = verifyNodeToken(secret, cpuToken?.token ?? "", planner.now());
    const gpuClaims = verifyNodeToken(secret, gpuToken?.token ?? "", planner.now());
    expect(cpuClaims).toMatchObject({ node: "cpu-1", digests: [digestA] });
    expect(gpuClaims).toMatchObject({ node: "gpu-1", digests: [digestA, digestB] });
    expect(cpuClaims.exp * 1000).toBe(Date.parse(cpuToken?.expiresAt ?? ""));
    expect(cpuClaims.exp * 1000).toBe(planner.now() + 60 * 60_000);
    expect(() =>
      verifyNodeToken(
        Buffer.from("another-secret-another-secret-another"),
        cpuToken?.token ?? "",
        planner.now(),
      ),
    ).toThrow(/signature/);
  });

  it("keeps the token while it is young and re-signs it at half its life, before it expires", async () => {
    const planner = plannerOver([modelImage("llama", "docker.io/acme/llama:1", digestA)], [node("cpu-1")]);
    const first = await planner.pass();
    const issued = planner.stored.get("cpu-1")?.spec.pullToken;
    expect(planner.writes()).toBe(1);
    // The pass asks to run again by the time the token is due.
    expect(first && "requeueAfterMs" in first ? first.requeueAfterMs : undefined).toBeLessThanOrEqual(
      30 * 60_000,
    );

    planner.advance(29 * 60_000);
    await planner.pass();
    expect(planner.writes()).toBe(1);
    expect(planner.stored.get("cpu-1")?.spec.pullToken).toEqual(issued);

    planner.advance(2 * 60_000);
    await planner.pass();
    expect(planner.writes()).toBe(2);
    const renewed = planner.stored.get("cpu-1")?.spec.pullToken;
    expect(renewed?.token).not.toBe(issued?.token);
    expect(Date.parse(renewed?.expiresAt ?? "")).toBe(planner.now() + 60 * 60_000);
    expect(verifyNodeToken(secret, renewed?.token ?? "", planner.now()).digests).toEqual([digestA]);
  });

  it("re-signs the token at once when the planned digests change, and drops it when nothing is planned", async () => {
    const llama = modelImage("llama", "docker.io/acme/llama:1", digestA);
    const modelImages = [llama];
    const planner = plannerOver(modelImages, [node("cpu-1")]);
    await planner.pass();
    modelImages.push(modelImage("mistral", "ghcr.io/acme/mistral:2", digestB));
    planner.advance(60_000);
    await planner.pass();
    const token = planner.stored.get("cpu-1")?.spec.pullToken?.token ?? "";
    expect(verifyNodeToken(secret, token, planner.now()).digests).toEqual([digestA, digestB]);

    modelImages.length = 0;
    planner.advance(60_000);
    await planner.pass();
    expect(planner.stored.get("cpu-1")?.spec.images).toEqual([]);
    expect(planner.stored.get("cpu-1")?.spec.pullToken).toBeUndefined();
  });
});

describe("node tokens for images chosen from an index", () => {
  it("also grant the index the node's platform image was chosen from (upstream and cache digest), for the agent's pull by tag", async () => {
    const index = `sha256:${"1".repeat(64)}`;
    const filteredIndex = `sha256:${"2".repeat(64)}`;
    const child = `sha256:${"3".repeat(64)}`;
    const llama = modelImage("llama", "docker.io/acme/llama:1", filteredIndex);
    llama.status = { variants: [{ name: "cpu", sourceDigest: index, cacheDigest: filteredIndex }] };
    const other = modelImage("mistral", "ghcr.io/acme/mistral:2", digestB);
    other.spec = {
      variants: [{ name: "cpu", image: "ghcr.io/acme/mistral:2", nodeSelector: { role: "none" } }],
    };
    // The cache resolves the (filtered) index to this node's platform image.
    const planner = plannerOver([llama, other], [node("cpu-1")], undefined, (digest) =>
      digest === filteredIndex ? child : digest,
    );
    await planner.pass();
    expect(planner.stored.get("cpu-1")?.spec.images?.map((i) => i.digest)).toEqual([child]);
    const token = planner.stored.get("cpu-1")?.spec.pullToken?.token ?? "";
    expect(verifyNodeToken(secret, token, planner.now()).digests).toEqual(
      [index, filteredIndex, child].sort(),
    );
  });
});

describe("pull-through hosts", () => {
  it("writes the pull-through hosts into every NodeCache's mirrorHosts beside the declared images' hosts", () => {
    const existing: NodeCache = {
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "idle-1" },
      spec: { nodeName: "idle-1" },
    };
    const idle = node("idle-1");
    idle.metadata = {
      ...idle.metadata,
      labels: { "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64" },
    };
    const plan = planPrewarm({
      modelImages: [modelImage("llama", "nvcr.io/acme/llama:1", digestA)],
      nodes: [node("cpu-1"), idle],
      nodeCaches: new Map([["idle-1", existing]]),
      lookup: () => ({ ok: true, image: { digest: digestA, sizeBytes: 10 } }),
      config: prewarmConfig({ pullThroughHosts: ["docker.io", "ghcr.io"] }),
      cacheEndpoint: "http://10.0.0.5:5002",
    });
    expect(plan.specs.get("cpu-1")?.mirrorHosts).toEqual(["docker.io", "ghcr.io", "nvcr.io"]);
    expect(plan.specs.get("idle-1")?.mirrorHosts).toEqual(["docker.io", "ghcr.io"]);
  });
});
