import { describe, expect, it } from "vitest";
import type { ModelImage } from "../../src/api/modelImage.ts";
import type { NodeCache } from "../../src/api/nodeCache.ts";
import { buildReport } from "../../src/status/model.ts";
import { formatAge, renderText } from "../../src/status/render.ts";

const digest = (c: string) => `sha256:${c.repeat(64)}`;
const takenAt = Date.parse("2026-01-01T12:00:00Z");

function modelImage(status?: ModelImage["status"]): ModelImage {
  return {
    apiVersion: "stowage.dev/v1alpha1",
    kind: "ModelImage",
    metadata: { name: "vllm", namespace: "default" },
    spec: { image: "vllm/vllm-openai:v0.6.3" },
    status,
  };
}

function nodeCache(node: string, state: string, extra: Record<string, unknown> = {}): NodeCache {
  return {
    apiVersion: "stowage.dev/v1alpha1",
    kind: "NodeCache",
    metadata: { name: node },
    spec: {
      nodeName: node,
      images: [
        {
          image: "docker.io/vllm/vllm-openai:v0.6.3",
          digest: digest("1"),
          sizeBytes: 1000,
          requestedBy: [{ namespace: "default", name: "vllm" }],
        },
      ],
    },
    status: {
      images: [{ image: "docker.io/vllm/vllm-openai:v0.6.3", digest: digest("1"), state, ...extra } as never],
    },
  };
}

describe("status report (pure)", () => {
  it("reports a ModelImage the controller has not observed yet as Ready Unknown with the normalised image", () => {
    const report = buildReport({ takenAt, modelImages: [modelImage()], nodeCaches: [], events: [] });
    const [mi] = report.modelImages;
    expect(mi.ready).toEqual({ status: "Unknown", reason: "NotObserved", message: "" });
    expect(mi.variants).toEqual([
      { name: "default", image: "docker.io/vllm/vllm-openai:v0.6.3", platforms: [] },
    ]);
    expect(mi.lag).toBeUndefined();
  });

  it("measures lag from the earliest upstreamChangedAt when lagSince is not set", () => {
    const report = buildReport({
      takenAt,
      modelImages: [
        modelImage({
          variants: [
            { name: "default", upstreamChangedAt: "2026-01-01T11:00:00Z", cacheDigest: digest("a") },
          ],
        }),
      ],
      nodeCaches: [],
      events: [],
    });
    expect(report.modelImages[0].lag).toEqual({ since: "2026-01-01T11:00:00Z", seconds: 3600 });
  });

  it("maps node states to cells: a requester without a variant is the single variant, percent from bytes, removing kept", () => {
    const report = buildReport({
      takenAt,
      modelImages: [modelImage()],
      nodeCaches: [
        nodeCache("a", "Pulling", { bytes: 333 }),
        nodeCache("b", "Removing"),
        {
          ...nodeCache("c", "Present"),
          status: undefined,
        },
      ],
      events: [],
    });
    expect(report.modelImages[0].cells).toEqual([
      expect.objectContaining({ node: "a", variant: "default", state: "pulling", percent: 33 }),
      expect.objectContaining({ node: "b", variant: "default", state: "removing" }),
      expect.objectContaining({ node: "c", variant: "default", state: "pending" }),
    ]);
    const text = renderText(report, { colour: false });
    expect(text).toMatch(/a\s+pulling 33%/);
    expect(text).toMatch(/c\s+pending/);
  });

  it("marks a node pulling or queued again after the kubelet evicted the image", () => {
    const report = buildReport({
      takenAt,
      modelImages: [modelImage()],
      nodeCaches: [
        nodeCache("a", "Pulling", { bytes: 420, reason: "Evicted" }),
        nodeCache("b", "Pending", { reason: "Evicted" }),
        nodeCache("c", "Pulling", { bytes: 420 }),
      ],
      events: [],
    });
    const text = renderText(report, { colour: false });
    expect(text).toMatch(/a\s+pulling 42% \(evicted\)/);
    expect(text).toMatch(/b\s+pending \(evicted\)/);
    expect(text).toMatch(/c\s+pulling 42%\n/);
  });

  it("shows where a present image's bytes came from, the cache first, and each node's peer failures with their age", () => {
    const GiB = 1024 ** 3;
    const sources = [
      { source: "cache", bytes: GiB },
      { source: "gpu-2", bytes: 3 * GiB },
    ];
    const warm = nodeCache("gpu-1", "Present", { sources });
    warm.status = {
      ...warm.status,
      peerFailures: [
        { node: "gpu-3", reason: "Stalled", since: "2026-01-01T11:58:00Z" },
        { node: "gpu-2", reason: "Failed", since: "2026-01-01T11:00:00Z" },
      ],
    };
    // Sources of an image not (or no longer) present are not shown: they describe a finished pull.
    const pulling = nodeCache("gpu-4", "Pulling", { bytes: 10, sources });
    const report = buildReport({
      takenAt,
      modelImages: [modelImage()],
      nodeCaches: [warm, pulling, nodeCache("gpu-5", "Present")],
      events: [],
    });
    const cells = report.modelImages[0].cells;
    expect(cells.find((c) => c.node === "gpu-1")?.sources).toEqual(sources);
    expect(cells.find((c) => c.node === "gpu-4")?.sources).toBeUndefined();
    expect(cells.find((c) => c.node === "gpu-5")?.sources).toBeUndefined();
    expect(report.nodes).toEqual([
      {
        node: "gpu-1",
        peerFailures: [
          { node: "gpu-2", reason: "Failed", since: "2026-01-01T11:00:00Z" },
          { node: "gpu-3", reason: "Stalled", since: "2026-01-01T11:58:00Z" },
        ],
      },
    ]);

    const text = renderText(report, { colour: false });
    expect(text).toMatch(
      /NODE\s+VARIANT\s+BYTES BY SOURCE\n\s+gpu-1\s+default\s+cache 1\.0 GiB, gpu-2 3\.0 GiB\n/,
    );
    expect(text).not.toMatch(/gpu-[45]\s+default\s+cache/);
    expect(text).toMatch(/gpu-1\s+gpu-2\s+Failed\s+2026-01-01T11:00:00Z \(1h ago\)/);
    expect(text).toMatch(/gpu-1\s+gpu-3\s+Stalled\s+2026-01-01T11:58:00Z \(2m ago\)/);
    expect(renderText(report, { colour: true })).toContain("\u001b[31mFailed\u001b[0m");

    // Without fan-out, nothing of it is shown.
    const plain = buildReport({
      takenAt,
      modelImages: [modelImage()],
      nodeCaches: [nodeCache("a", "Present")],
      events: [],
    });
    expect(plain.nodes).toBeUndefined();
    expect(renderText(plain, { colour: false })).not.toMatch(/BYTES BY SOURCE|PEER FAILED/);
  });

  it("ignores NodeCache entries requested by another ModelImage of the same name in another namespace", () => {
    const other = nodeCache("a", "Present");
    other.spec.images![0].requestedBy = [{ namespace: "ml", name: "vllm" }];
    const report = buildReport({ takenAt, modelImages: [modelImage()], nodeCaches: [other], events: [] });
    expect(report.modelImages[0].cells).toEqual([]);
  });

  it("colours every cell of a node that holds two variants, keeping the columns aligned", () => {
    const mi = modelImage();
    mi.spec = {
      variants: [
        { name: "big", image: "acme/m:1" },
        { name: "small", image: "acme/m:2" },
      ],
    };
    const both = nodeCache("node-1", "Present");
    both.spec.images = [
      {
        image: "docker.io/acme/m:1",
        digest: digest("1"),
        requestedBy: [{ namespace: "default", name: "vllm", variant: "big" }],
      },
      {
        image: "docker.io/acme/m:2",
        digest: digest("2"),
        requestedBy: [{ namespace: "default", name: "vllm", variant: "small" }],
      },
    ];
    both.status = {
      images: [
        { image: "docker.io/acme/m:1", digest: digest("1"), state: "Present" },
        { image: "docker.io/acme/m:2", digest: digest("2"), state: "Present" },
      ],
    };
    const report = buildReport({ takenAt, modelImages: [mi], nodeCaches: [both], events: [] });
    const coloured = renderText(report, { colour: true });
    const row = coloured.split("\n").find((l) => l.includes("node-1")) ?? "";
    expect(row).toBe("  node-1  \u001b[32mpresent\u001b[0m  \u001b[32mpresent\u001b[0m");
    // Without the escape codes it is the plain table.
    const plain = renderText(report, { colour: false });
    expect(coloured.replace(new RegExp(`${String.fromCharCode(27)}\\[\\d+m`, "g"), "")).toBe(plain);
  });

  it("says so when there are no ModelImages, and writes ages the kubectl way", () => {
    expect(
      renderText(buildReport({ takenAt, modelImages: [], nodeCaches: [], events: [] }), { colour: false }),
    ).toBe("No ModelImages found.\n");
    expect([45, 720, 3 * 3600 + 300, 2 * 86400 + 4 * 3600].map(formatAge)).toEqual([
      "45s",
      "12m",
      "3h5m",
      "2d4h",
    ]);
  });
});
