import { describe, expect, it } from "vitest";
import type { ModelImage, ModelImageSpec } from "../../src/api/modelImage.ts";
import type { NodeCache, NodeImageState } from "../../src/api/nodeCache.ts";
import { reportedStatus } from "../../src/controller/modelimage/reconciler.ts";
import {
  mapNodeCacheToModelImages,
  nodesColumn,
  type PrewarmPlan,
  prewarmStatus,
} from "../../src/controller/prewarm/index.ts";
import { cudaForDriver, nodeCudaDriver, parseCudaVersion } from "../../src/controller/prewarm/nodes.ts";
import { getCondition } from "../../src/kube/conditions.ts";

const d = (n: number) => `sha256:${String(n).repeat(64).slice(0, 64)}`;

function mi(spec: Partial<ModelImageSpec>, cached = true): ModelImage {
  return {
    apiVersion: "stowage.dev/v1alpha1",
    kind: "ModelImage",
    metadata: { name: "llama", namespace: "ml", generation: 2 },
    spec: {
      variants: [{ name: "cpu", image: "docker.io/acme/llama:1", nodeSelector: { role: "cpu" } }],
      ...spec,
    },
    status: cached ? { variants: [{ name: "cpu", cacheDigest: d(9) }] } : {},
  };
}

const node = (name: string) => ({
  metadata: { name, labels: { role: "cpu" } },
  status: { conditions: [{ type: "Ready", status: "True" }] },
});

function nodeCache(name: string, state?: NodeImageState): NodeCache {
  return {
    apiVersion: "stowage.dev/v1alpha1",
    kind: "NodeCache",
    metadata: { name },
    spec: {
      nodeName: name,
      images: [
        {
          image: "docker.io/acme/llama:1",
          digest: d(1),
          requestedBy: [{ namespace: "ml", name: "llama", variant: "cpu" }],
        },
      ],
    },
    ...(state ? { status: { images: [{ image: "docker.io/acme/llama:1", digest: d(1), state }] } } : {}),
  };
}

/** Five matching nodes: two Present, one Pulling, one skipped (CUDA), one refused (disk). */
const plan: PrewarmPlan = {
  specs: new Map(),
  modelImages: new Map([
    [
      "ml/llama",
      [
        {
          variant: "cpu",
          cached: true,
          decisions: [
            { node: "n1", state: "planned", digest: d(1) },
            { node: "n2", state: "planned", digest: d(1) },
            { node: "n3", state: "planned", digest: d(1) },
            { node: "n4", state: "skipped", reason: "CudaDriverTooOld", message: "node n4: driver too old" },
            { node: "n5", state: "refused", reason: "QuotaExceeded", message: "node n5: does not fit" },
          ],
        },
      ],
    ],
  ]),
};
const caches = [nodeCache("n1", "Present"), nodeCache("n2", "Present"), nodeCache("n3", "Pulling")];
const nodes = ["n1", "n2", "n3", "n4", "n5"].map(node);

describe("prewarmStatus (ModelImage status aggregation)", () => {
  it("counts desired, ready, pulling, failed and skipped nodes from the plan and the agents' status", () => {
    const status = prewarmStatus(mi({}), nodes, caches, plan);
    expect(status.variants).toEqual({ cpu: { desired: 4, ready: 2, pulling: 1, failed: 1, skipped: 1 } });
    expect(nodesColumn(status.variants)).toBe("2/4");
    expect(status.problems.map((p) => p.reason)).toEqual(["CudaDriverTooOld", "QuotaExceeded"]);
  });

  it("is Prewarmed only when every desired node is ready when minReadyNodes is unset", () => {
    const status = prewarmStatus(mi({}), nodes, caches, plan);
    expect(status.prewarmed).toMatchObject({
      type: "Prewarmed",
      status: "False",
      reason: "NodesPulling",
      observedGeneration: 2,
    });
    expect(status.prewarmed.message).toContain("2/4 nodes ready (1 pulling, 1 failed, 1 skipped)");
    expect(status.prewarmed.message).toContain("CudaDriverTooOld: node n4: driver too old");
  });

  it("is Prewarmed once minReadyNodes nodes are ready", () => {
    expect(prewarmStatus(mi({ prewarm: { minReadyNodes: 2 } }), nodes, caches, plan).prewarmed).toMatchObject(
      {
        status: "True",
        reason: "NodesWarm",
      },
    );
    expect(prewarmStatus(mi({ prewarm: { minReadyNodes: 3 } }), nodes, caches, plan).prewarmed.status).toBe(
      "False",
    );
  });

  it("reports Prewarmed True with reason PrewarmDisabled when prewarm is off", () => {
    const status = prewarmStatus(mi({ prewarm: { enabled: false } }), nodes, caches, plan);
    expect(status.prewarmed).toMatchObject({ status: "True", reason: "PrewarmDisabled" });
    expect(status.variants.cpu).toEqual({ desired: 0, ready: 0, pulling: 0, failed: 0, skipped: 0 });
  });

  it("waits for the cache before counting nodes", () => {
    const status = prewarmStatus(mi({}, false), nodes, caches, plan);
    expect(status.prewarmed).toMatchObject({ status: "False", reason: "Syncing" });
  });

  it("counts from NodeCache specs alone without a plan (every matching Ready node is desired)", () => {
    const status = prewarmStatus(mi({}), nodes, caches);
    expect(status.variants.cpu).toEqual({ desired: 5, ready: 2, pulling: 1, failed: 0, skipped: 0 });
  });

  it("maps a NodeCache to the ModelImages its spec images are requested by", () => {
    const nc = nodeCache("n1");
    nc.spec.images?.push({
      image: "x",
      digest: d(2),
      requestedBy: [
        { namespace: "ml", name: "llama", variant: "gpu" },
        { namespace: "other", name: "tools" },
      ],
    });
    expect(mapNodeCacheToModelImages(nc)).toEqual(["ml/llama", "other/tools"]);
  });
});

describe("CUDA awareness", () => {
  it("maps a driver version to the newest CUDA it supports and ignores the cuda.runtime labels", () => {
    expect(cudaForDriver(550, 54)).toEqual({ major: 12, minor: 4 });
    expect(cudaForDriver(535, 104)).toEqual({ major: 12, minor: 2 });
    expect(cudaForDriver(400, 0)).toBeUndefined();
    expect(
      nodeCudaDriver({ metadata: { labels: { "nvidia.com/cuda.runtime.major": "12" } } }),
    ).toBeUndefined();
    expect(parseCudaVersion("12.4.1")).toEqual({ major: 12, minor: 4 });
  });

  it("does not cap a driver from a branch newer than the table at the table's newest CUDA (a 590 driver is not judged too old for CUDA 13.1)", () => {
    const node = (major: string, minor: string) => ({
      metadata: {
        labels: {
          "nvidia.com/cuda.driver-version.major": major,
          "nvidia.com/cuda.driver-version.minor": minor,
        },
      },
    });
    expect(nodeCudaDriver(node("580", "82"))?.cuda).toEqual({ major: 13, minor: 0 });
    // A newer branch supports at least what the table knows; what more is not known here, so the
    // node is not skipped (as for a node with no driver labels).
    expect(nodeCudaDriver(node("590", "44"))).toBeUndefined();
    expect(nodeCudaDriver(node("600", "0"))).toBeUndefined();
  });
});

describe("the status a sync reports while nodes pull", () => {
  it("keeps Ready's and Reconciling's transition times when a sync finds nothing changed", () => {
    const object = mi({});
    const outcome = {
      variant: object.spec.variants![0],
      image: "docker.io/acme/llama:1",
      upstreamDigest: d(8),
      cacheDigest: d(9),
      noMatchingNodes: false,
    };
    const source = { nodeCaches: () => [nodeCache("a", "Pulling")], plan: () => undefined };
    const input = {
      outcomes: [outcome],
      nodes: [node("a")],
      prewarm: source,
      checkedAtResolutionMs: 1000,
    };
    const first = reportedStatus(object.status, object, {
      ...input,
      now: Date.parse("2026-12-05T09:00:00Z"),
    });
    expect(getCondition(first.conditions, "Ready")).toMatchObject({
      status: "False",
      reason: "NodesPulling",
    });
    expect(getCondition(first.conditions, "Reconciling")).toMatchObject({
      status: "True",
      reason: "NodesPulling",
    });

    const later = Date.parse("2026-12-05T09:10:00Z");
    const again = reportedStatus(first, { ...object, status: first }, { ...input, now: later });
    for (const type of ["Ready", "Reconciling", "Prewarmed", "Synced"])
      expect(getCondition(again.conditions, type)?.lastTransitionTime, type).toBe("2026-12-05T09:00:00Z");
  });
});
