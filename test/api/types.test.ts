import { describe, expect, it } from "vitest";
import { loadCrd } from "../../src/api/crds.ts";
import {
  API_VERSION,
  KIND,
  type ModelImage,
  ModelImageResource,
  type ModelImageSpec,
  type ModelImageStatus,
} from "../../src/api/modelImage.ts";
import { drift, type Schema } from "./schemaDrift.ts";

/** Every optional field made required, all the way down, so the samples below must fill in everything the types have. */
type Complete<T> = T extends (infer Item)[]
  ? Complete<Item>[]
  : T extends object
    ? { [K in keyof T]-?: Complete<T[K]> }
    : T;

// tsc checks these against the types: a field the types lack is an excess property, a field the
// types have and the sample lacks is a missing property. The test below checks them against the CRD.
const completeSpec: Complete<ModelImageSpec> = {
  image: "ghcr.io/acme/llama-cpu:1.2",
  variants: [
    {
      name: "cuda",
      image: "nvcr.io/nvidia/tritonserver:24.08-py3",
      nodeSelector: { "nvidia.com/gpu.present": "true" },
      platforms: ["linux/amd64"],
    },
  ],
  pullSecrets: [{ name: "ngc" }],
  sync: { interval: "10m", platforms: ["auto"], allPlatforms: false, referrers: true },
  suspend: false,
  prewarm: {
    enabled: true,
    minReadyNodes: 1,
    maxConcurrentNodes: 4,
    holdPods: true,
    holdTimeout: "15m",
    priority: 10,
  },
};

const completeStatus: Complete<ModelImageStatus> = {
  observedGeneration: 3,
  conditions: [
    {
      type: "Ready",
      status: "True",
      observedGeneration: 3,
      lastTransitionTime: "2026-11-26T20:00:00Z",
      reason: "Ready",
      message: "cached and warm on 5/8 nodes",
    },
  ],
  variants: [
    {
      name: "cuda",
      image: "nvcr.io/nvidia/tritonserver:24.08-py3",
      cacheImage: "stowage-cache.stowage.svc:5000/nvcr.io/nvidia/tritonserver:24.08-py3",
      sourceDigest: `sha256:${"0f973b6045".padEnd(64, "a")}`,
      cacheDigest: `sha256:${"0f973b6045".padEnd(64, "a")}`,
      platforms: ["linux/amd64"],
      sizeBytes: 21474836480,
      syncedAt: "2026-11-26T20:00:00Z",
      lastCheckedAt: "2026-11-26T20:10:00Z",
      upstreamChangedAt: "2026-11-26T20:10:00Z",
      nodes: { desired: 8, ready: 5, pulling: 2, failed: 1, skipped: 0 },
    },
  ],
  digest: "sha256:0f973b6045",
  nodes: "5/8",
  lagSince: "2026-11-26T20:10:00Z",
};

const crd = loadCrd("stowage.dev_modelimages");
const version = (crd.spec.versions as { name: string; schema: { openAPIV3Schema: Schema } }[])[0];
const root = version.schema.openAPIV3Schema;

describe("ModelImage types and CRD", () => {
  it("declares every spec field the CRD has, and no other", () => {
    expect(drift(root.properties?.spec as Schema, completeSpec, "spec")).toEqual([]);
  });

  it("declares every status field the CRD has, and no other", () => {
    expect(drift(root.properties?.status as Schema, completeStatus, "status")).toEqual([]);
  });

  it("notices a field the types have and the CRD lacks (the check itself works)", () => {
    const withExtra = { ...completeSpec, sync: { ...completeSpec.sync, jitter: "1m" } };
    expect(drift(root.properties?.spec as Schema, withExtra, "spec")).toEqual(["+spec.sync.jitter"]);
    const { suspend: _dropped, ...withoutSuspend } = completeSpec;
    expect(drift(root.properties?.spec as Schema, withoutSuspend, "spec")).toEqual(["-spec.suspend"]);
  });

  it("names the resource the same way in the constants and the CRD", () => {
    const names = crd.spec.names as Record<string, unknown>;
    expect(crd.metadata?.name).toBe(`${ModelImageResource.plural}.${ModelImageResource.group}`);
    expect(crd.spec.group).toBe(ModelImageResource.group);
    expect(version.name).toBe(ModelImageResource.version);
    expect(names.kind).toBe(KIND);
    expect(names.plural).toBe(ModelImageResource.plural);
    expect(names.shortNames).toEqual(["mi"]);
    expect(crd.spec.scope).toBe(ModelImageResource.namespaced ? "Namespaced" : "Cluster");
    const typed: ModelImage = {
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: { name: "x" },
      spec: completeSpec,
    };
    expect(typed.apiVersion).toBe(`${crd.spec.group}/${version.name}`);
  });
});
