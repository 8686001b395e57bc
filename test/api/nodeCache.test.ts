import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadCrd } from "../../src/api/crds.ts";
import { API_VERSION } from "../../src/api/modelImage.ts";
import {
  countImages,
  diskUsedColumn,
  NODE_CACHE_KIND,
  type NodeCache,
  NodeCacheResource,
  type NodeCacheSpec,
  type NodeCacheStatus,
} from "../../src/api/nodeCache.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { Kubectl, startCluster } from "../kube/helpers.ts";
import { drift, type Schema } from "./schemaDrift.ts";

type Complete<T> = T extends (infer Item)[]
  ? Complete<Item>[]
  : T extends object
    ? { [K in keyof T]-?: Complete<T[K]> }
    : T;

const digest = `sha256:${"ab".repeat(32)}`;

const completeSpec: Complete<NodeCacheSpec> = {
  nodeName: "gpu-node-1",
  cacheEndpoint: "http://10.0.0.5:5000",
  mirrorHosts: ["docker.io", "nvcr.io"],
  images: [
    {
      image: "docker.io/acme/llama:1.0",
      digest,
      cacheRepository: "docker.io/acme/llama",
      sizeBytes: 123,
      priority: 0,
      requestedBy: [{ namespace: "ml", name: "llama3-serve", variant: "cuda" }],
      fanout: [
        { digest, offset: 0, length: 64, source: "cache", wave: 1 },
        { digest, offset: 64, length: 59, source: "gpu-node-2", wave: 2 },
      ],
    },
  ],
  pullToken: { token: "stwn1.e30.c2ln", expiresAt: "2026-11-26T21:00:00Z" },
  peers: [{ node: "gpu-node-2", endpoint: "http://10.0.0.7:5007" }],
  peerToken: { token: "stwp1.e30.c2ln", expiresAt: "2026-11-26T21:00:00Z" },
};

const completeStatus: Complete<NodeCacheStatus> = {
  agentVersion: "0.1.0",
  heartbeatTime: "2026-11-26T20:00:00Z",
  containerdConfigPath: "/etc/containerd/certs.d",
  imageFs: { capacityBytes: 100 * 2 ** 30, usedBytes: 12 * 2 ** 30, availableBytes: 88 * 2 ** 30 },
  counts: { images: 1, present: 1, pulling: 0, failed: 0 },
  diskUsed: "12 GiB / 100 GiB",
  images: [
    {
      image: "docker.io/acme/llama:1.0",
      digest,
      state: "Present",
      reason: "Pulled",
      message: "pulled in 12s",
      bytes: 456,
      startedAt: "2026-11-26T19:59:48Z",
      finishedAt: "2026-11-26T20:00:00Z",
      ownedByAgent: true,
      pinned: false,
      sources: [
        { source: "cache", bytes: 64 },
        { source: "gpu-node-2", bytes: 59 },
      ],
    },
  ],
  peerFailures: [{ node: "gpu-node-3", reason: "Stalled", since: "2026-11-26T19:59:50Z" }],
  conditions: [
    {
      type: "Ready",
      status: "True",
      observedGeneration: 1,
      lastTransitionTime: "2026-11-26T20:00:00Z",
      reason: "Ready",
      message: "agent running",
    },
  ],
};

const crd = loadCrd("nodecaches.stowage.dev");
const version = (crd.spec.versions as { name: string; schema: { openAPIV3Schema: Schema } }[])[0];
const root = version.schema.openAPIV3Schema;

describe("NodeCache types and CRD", () => {
  it("declares every spec and status field the CRD has, and no other", () => {
    expect(drift(root.properties?.spec as Schema, completeSpec, "spec")).toEqual([]);
    expect(drift(root.properties?.status as Schema, completeStatus, "status")).toEqual([]);
  });

  it("names the resource the same way in the constants and the CRD (cluster-scoped, nc, category stowage)", () => {
    const names = crd.spec.names as Record<string, unknown>;
    expect(crd.metadata.name).toBe(`${NodeCacheResource.plural}.${NodeCacheResource.group}`);
    expect(names.kind).toBe(NODE_CACHE_KIND);
    expect(names.shortNames).toEqual(["nc"]);
    expect(names.categories).toEqual(["stowage"]);
    expect(crd.spec.scope).toBe("Cluster");
    expect(version.name).toBe(NodeCacheResource.version);
  });

  it("counts images for the printer columns and formats disk use for people", () => {
    expect(
      countImages([
        { image: "a", digest: "1", state: "Present" },
        { image: "b", digest: "2", state: "Pulling" },
        { image: "c", digest: "3", state: "Pending" },
        { image: "d", digest: "4", state: "Failed" },
      ]),
    ).toEqual({ images: 4, present: 1, pulling: 2, failed: 1 });
    expect(diskUsedColumn({ usedBytes: 12 * 2 ** 30, capacityBytes: 100 * 2 ** 30 })).toBe(
      "12 GiB / 100 GiB",
    );
    expect(diskUsedColumn({ usedBytes: 1536 })).toBe("1.5 KiB");
  });
});

describe("the NodeCache CRD with the API server and the built kubectl", () => {
  let server: TestCluster;
  let kubectl: Kubectl;

  beforeAll(async () => {
    ({ cluster: server } = await startCluster({ crds: [crd] }));
    kubectl = new Kubectl(server.kubeconfigPath);
  });

  afterAll(async () => {
    kubectl?.cleanup();
    await server?.stop();
  });

  it("stores a full spec, takes the agent's status on /status only, and prints the columns", async () => {
    const nc: NodeCache = {
      apiVersion: API_VERSION,
      kind: NODE_CACHE_KIND,
      metadata: { name: "gpu-node-1" },
      spec: completeSpec,
    };
    const applied = await kubectl.apply([nc as never]);
    expect(applied.stderr).toBe("");
    expect(applied.code).toBe(0);
    const statusBody = JSON.stringify({ status: completeStatus });
    const patched = await kubectl.run([
      "patch",
      "nodecache",
      "gpu-node-1",
      "--subresource=status",
      "--type=merge",
      "-p",
      statusBody,
    ]);
    expect(patched.stderr).toBe("");
    expect(patched.code).toBe(0);
    const got = await kubectl.run(["get", "nc", "gpu-node-1", "-o", "json"]);
    expect(got.code, got.stderr).toBe(0);
    const stored = JSON.parse(got.stdout) as NodeCache;
    expect(stored.spec).toEqual(completeSpec);
    expect(stored.status).toEqual(completeStatus);

    const table = await kubectl.run(["get", "stowage"]);
    expect(table.stderr).toBe("");
    expect(table.code).toBe(0);
    const [header, row] = table.stdout.trim().split("\n");
    expect(header.split(/\s{2,}/)).toEqual([
      "NAME",
      "NODE",
      "IMAGES",
      "PRESENT",
      "PULLING",
      "FAILED",
      "DISK USED",
      "AGE",
    ]);
    expect(row).toMatch(/^gpu-node-1\s+gpu-node-1\s+1\s+1\s+0\s+0\s+12 GiB \/ 100 GiB\s+/);
  });

  it.each([
    ["a port past 65535", "http://10.0.0.5:70000", "the port must be between 1 and 65535"],
    ["port 0", "https://cache.example:0/", "the port must be between 1 and 65535"],
    ["a scheme other than http(s)", "ftp://10.0.0.5:5000", "must be an http:// or https:// URL"],
    ["a URL with a query", "http://10.0.0.5:5000/?x=1", "must be an http:// or https:// URL"],
  ])("refuses a cacheEndpoint with %s, naming the field", async (_what, cacheEndpoint, message) => {
    const nc = {
      apiVersion: API_VERSION,
      kind: NODE_CACHE_KIND,
      metadata: { name: "bad-endpoint" },
      spec: { nodeName: "bad-endpoint", cacheEndpoint },
    };
    const refused = await kubectl.apply([nc]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain("spec.cacheEndpoint");
    expect(refused.stderr).toContain(message);
  });

  it("accepts cacheEndpoints with ports 1 and 65535, an IPv6 address and no port", async () => {
    for (const [i, cacheEndpoint] of [
      "http://10.0.0.5:1",
      "https://cache.example:65535/",
      "http://[fd00::5]:5000",
      "https://cache.example",
    ].entries()) {
      const nc = {
        apiVersion: API_VERSION,
        kind: NODE_CACHE_KIND,
        metadata: { name: `good-endpoint-${i}` },
        spec: { nodeName: `good-endpoint-${i}`, cacheEndpoint },
      };
      const applied = await kubectl.apply([nc]);
      expect({ cacheEndpoint, code: applied.code, stderr: applied.stderr }).toEqual({
        cacheEndpoint,
        code: 0,
        stderr: "",
      });
    }
  });

  it("refuses an image state the agent contract does not know", async () => {
    const bad = await kubectl.run([
      "patch",
      "nodecache",
      "gpu-node-1",
      "--subresource=status",
      "--type=merge",
      "-p",
      JSON.stringify({ status: { images: [{ image: "x", digest, state: "Downloading" }] } }),
    ]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain("Unsupported value");
  });
});
