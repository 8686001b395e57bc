/**
 * Pre-warm end to end with REAL containerd: the sandbox (testkit/sandbox.ts: API double, upstream +
 * cache registries, `stowage controller`, containerd nodes with `stowage agent`), the example
 * ModelImage applied with kubectl, and each node's images checked over CRI on its own socket.
 * containerd needs root: without it this file fails loudly (it never passes without checking).
 */

import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments, stringify } from "yaml";
import { type NodeCache, NodeCacheResource } from "../../src/api/nodeCache.ts";
import { Resources } from "../../src/kube/client.ts";
import { parseReference } from "../../src/oci/reference.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type AgentNode, startAgentNode } from "../../testkit/agentNode.ts";
import { apiBackend } from "../../testkit/cluster.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { pushMultiArchIndex } from "../../testkit/images.ts";
import { registerNode } from "../../testkit/nodes.ts";
import { type Sandbox, startSandbox } from "../../testkit/sandbox.ts";
import { criHas, criRepoDigests, type KubectlRun, kubectl, waitFor } from "./prewarm-node.ts";

const EXAMPLE = fileURLToPath(new URL("../../examples/modelimage-llama.yaml", import.meta.url));
const MiB = 1024 * 1024;
const WARMING_TAINT = "stowage.dev/warming";

interface Condition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
}

let sandbox: Sandbox;
let late: AgentNode | undefined;
let quotaController: ControllerProcess | undefined;
/** Upstream access-log length when the ModelImage became Synced. */
let upstreamRequestsAtSynced = 0;

const k = async (args: string[]): Promise<string> => {
  const run: KubectlRun = await kubectl(sandbox.kubeconfigPath, sandbox.dir, args);
  if (run.code !== 0) throw new Error(`kubectl ${args.join(" ")} failed (${run.code}): ${run.stderr}`);
  return run.stdout;
};
const getJson = async <T>(args: string[]): Promise<T> => JSON.parse(await k([...args, "-o", "json"])) as T;
const nodeCache = async (node: string): Promise<NodeCache | undefined> => {
  const run = await kubectl(sandbox.kubeconfigPath, sandbox.dir, ["get", "nodecache", node, "-o", "json"]);
  return run.code === 0 ? (JSON.parse(run.stdout) as NodeCache) : undefined;
};
const modelImage = (name = "llama3-serve") =>
  getJson<{ status?: { conditions?: Condition[]; nodes?: string } }>(["get", "mi", "-n", "ml", name]);
const condition = (conds: Condition[] | undefined, type: string) => conds?.find((c) => c.type === type);
const socketOf = (node: string): string => {
  const socket = sandbox.nodes.find((n) => n.name === node)?.containerd?.socketPath;
  if (!socket) throw new Error(`sandbox node ${node} runs no containerd`);
  return socket;
};
/** The pull reference the agent uses: the spec image's name @ the mirrored digest. */
const refOf = (image: string, digest: string): string => {
  const ref = parseReference(image);
  return `${ref.registry}/${ref.repository}@${digest}`;
};
/** The single image a node's NodeCache spec holds, once the planner wrote it. */
const plannedImage = (node: string) =>
  waitFor(`a NodeCache spec image for ${node}`, async () => {
    const images = (await nodeCache(node))?.spec.images ?? [];
    return images.length === 1 ? images[0] : undefined;
  });
const isBlobGet = (r: { method: string; path: string }) =>
  r.method === "GET" && /\/blobs\/sha256:/.test(r.path);

/** examples/modelimage-llama.yaml pointed at the sandbox upstream (as `npm run demo` does). */
async function exampleFor(): Promise<string> {
  const docs = parseAllDocuments(await readFile(EXAMPLE, "utf8")).map((d) => d.toJS());
  for (const doc of docs) {
    if (doc?.kind !== "ModelImage") continue;
    for (const variant of doc.spec.variants) {
      const image = sandbox.images.find((i) => i.variant === variant.name);
      if (!image) throw new Error(`the sandbox has no image for variant ${variant.name}`);
      variant.image = image.reference;
    }
    delete doc.spec.pullSecrets;
  }
  const file = join(sandbox.dir, "modelimage-llama.yaml");
  await writeFile(file, docs.map((d) => stringify(d)).join("---\n"));
  return file;
}

describe("pre-warm onto real containerd nodes", () => {
  beforeAll(async () => {
    sandbox = await startSandbox({ apiServer: apiBackend() });
    if (!sandbox.runtime.available) {
      // Never a silent pass: these tests exist to exercise containerd. CI runs as root.
      throw new Error(
        `real containerd nodes cannot run here (${sandbox.runtime.why}); run as root with /usr/bin/containerd${process.env.CI === "true" ? " — CI must" : ""}`,
      );
    }
    await k(["apply", "-f", await exampleFor()]);
    await waitFor(
      "the ModelImage to be Synced",
      async () => {
        const mi = await modelImage();
        return condition(mi.status?.conditions, "Synced")?.status === "True" ? true : undefined;
      },
      120_000,
    );
    upstreamRequestsAtSynced = (await sandbox.upstream.requests()).length;
  }, 180_000);

  afterAll(async () => {
    await late?.stop().catch(() => {});
    await quotaController?.kill("SIGTERM").catch(() => {});
    await sandbox?.stop();
  }, 60_000);

  it("puts exactly its variant on each node, pulled from the cache, and skips the old-driver GPU node with CudaDriverTooOld", async () => {
    const cuda = await plannedImage("gpu-node-1");
    const cpu = await plannedImage("cpu-node-arm64");
    expect(cuda.digest).not.toBe(cpu.digest);
    expect(await nodeCache("gpu-node-old")).toBeUndefined();

    const columns = await waitFor(
      "kubectl get mi to show NODES 2/2 and READY True",
      async () => {
        const table = await k(["get", "mi", "-n", "ml", "llama3-serve"]);
        const [header, row] = table.trimEnd().split("\n");
        // Cells start where their header starts (kubectl aligns them); DIGEST may hold a space.
        const at = (name: string) => row.slice(header.indexOf(name)).split(/\s+/)[0];
        if (at("NODES") === "2/2" && at("READY") === "True") return { nodes: at("NODES") };
        throw new Error(`${table}\n${JSON.stringify((await modelImage()).status)}`);
      },
      120_000,
    );
    expect(columns.nodes).toBe("2/2");

    // Each node holds its variant (CRI ImageStatus on its own socket) and not the other one.
    expect(await criHas(socketOf("gpu-node-1"), refOf(cuda.image, cuda.digest))).toBe(true);
    expect(await criHas(socketOf("cpu-node-arm64"), refOf(cpu.image, cpu.digest))).toBe(true);
    expect(await criHas(socketOf("gpu-node-1"), refOf(cpu.image, cpu.digest))).toBe(false);
    expect(await criHas(socketOf("cpu-node-arm64"), refOf(cuda.image, cuda.digest))).toBe(false);
    const gpuDigests = await criRepoDigests(socketOf("gpu-node-1"));
    const cpuDigests = await criRepoDigests(socketOf("cpu-node-arm64"));
    expect(gpuDigests.some((d) => d.endsWith(`@${cuda.digest}`))).toBe(true);
    expect(gpuDigests.some((d) => d.endsWith(`@${cpu.digest}`))).toBe(false);
    expect(cpuDigests.some((d) => d.endsWith(`@${cpu.digest}`))).toBe(true);
    expect(cpuDigests.some((d) => d.endsWith(`@${cuda.digest}`))).toBe(false);

    // From the cache: no upstream blob GET since Synced; the cache served both manifests' blobs.
    const upstreamSince = (await sandbox.upstream.requests()).slice(upstreamRequestsAtSynced);
    expect(upstreamSince.filter(isBlobGet)).toEqual([]);
    const cacheRequests = await sandbox.cache.requests();
    expect(
      cacheRequests.some((r) => r.method === "GET" && r.path.endsWith(`/manifests/${cuda.digest}`)),
    ).toBe(true);
    expect(cacheRequests.some((r) => r.method === "GET" && r.path.endsWith(`/manifests/${cpu.digest}`))).toBe(
      true,
    );
    expect(cacheRequests.filter((r) => isBlobGet(r) && r.status === 200).length).toBeGreaterThan(0);

    const mi = await modelImage();
    expect(condition(mi.status?.conditions, "Ready")?.status).toBe("True");
    const prewarmed = condition(mi.status?.conditions, "Prewarmed")?.message ?? "";
    const events = await getJson<{ items: { reason?: string; message?: string; note?: string }[] }>([
      "get",
      "events",
      "-n",
      "ml",
    ]);
    const skips = [
      ...prewarmed.split("; "),
      ...events.items
        .filter((e) => e.reason === "CudaDriverTooOld")
        .map((e) => `CudaDriverTooOld: ${e.message ?? e.note}`),
    ];
    expect(skips.some((s) => s.startsWith("CudaDriverTooOld: ") && s.includes("gpu-node-old"))).toBe(true);
  }, 150_000);

  it("warms a GPU node added later with no user action, keeping its warming taint until the image is Present", async () => {
    const name = "gpu-node-2";
    const now = new Date().toISOString().replace(/\.\d+Z$/, "Z");
    const node = {
      apiVersion: "v1",
      kind: "Node",
      metadata: {
        name,
        labels: {
          "kubernetes.io/hostname": name,
          "kubernetes.io/os": "linux",
          "kubernetes.io/arch": "amd64",
          "nvidia.com/gpu.present": "true",
          "nvidia.com/cuda.driver.major": "550",
          "nvidia.com/cuda.driver.minor": "54",
        },
      },
      spec: { taints: [{ key: WARMING_TAINT, value: "true", effect: "NoSchedule" }] },
      status: {
        conditions: [
          {
            type: "Ready",
            status: "True",
            reason: "KubeletReady",
            lastHeartbeatTime: now,
            lastTransitionTime: now,
          },
        ],
        nodeInfo: { architecture: "amd64", operatingSystem: "linux" },
      },
    };
    // A kubelet registers the object, then its status: for a moment the node exists and is not Ready.
    await registerNode(sandbox.client, node);
    const tainted = async () => {
      const got = (await sandbox.client.resource(Resources.Node).get(name)) as {
        spec?: { taints?: { key: string }[] };
      };
      return (got.spec?.taints ?? []).some((t) => t.key === WARMING_TAINT);
    };
    const presentOn = async () => {
      const nc = await sandbox.client.resource<NodeCache>(NodeCacheResource).find(name);
      const digest = nc?.spec.images?.[0]?.digest;
      return !!digest && nc?.status?.images?.find((s) => s.digest === digest)?.state === "Present";
    };

    // Its runtime is not up yet: the planner plans the image (the ModelImage counts the node) but the
    // image cannot be Present, so the taint must stay.
    const image = await plannedImage(name);
    const cuda = await plannedImage("gpu-node-1");
    expect(image.digest).toBe(cuda.digest);
    await waitFor("the ModelImage to count the new node as desired", async () =>
      (await modelImage()).status?.nodes === "2/3" ? true : undefined,
    );
    expect(await presentOn()).toBe(false);
    expect(await tainted()).toBe(true);

    // Now its containerd and agent start, with no change to any Stowage object.
    late = await startAgentNode(name, { kubeconfig: sandbox.kubeconfigPath, logsDir: sandbox.logsDir });
    // Node first, then NodeCache: an untainted node must already show the image Present.
    const observations: { tainted: boolean; present: boolean }[] = [];
    let taintGoneAt = 0;
    await waitFor(
      `the warming taint to leave ${name}`,
      async () => {
        const isTainted = await tainted();
        observations.push({ tainted: isTainted, present: await presentOn() });
        if (isTainted) return undefined;
        taintGoneAt = Date.now();
        return true;
      },
      120_000,
      50,
    );
    expect(observations.filter((o) => !o.present && !o.tainted)).toEqual([]);

    const status = (await nodeCache(name))?.status?.images?.find((s) => s.digest === image.digest);
    expect(status?.state).toBe("Present");
    // Present (the agent's finishedAt, whole seconds) came no later than we saw the taint gone.
    expect(Date.parse(status?.finishedAt ?? "")).toBeLessThanOrEqual(taintGoneAt);
    expect(await criHas(late.containerd.socketPath, refOf(image.image, image.digest))).toBe(true);
    await waitFor("kubectl get mi to count the new node ready", async () =>
      (await modelImage()).status?.nodes === "3/3" ? true : undefined,
    );
  }, 150_000);

  it("removes the image from a node whose selecting label is removed (the agent pulled it)", async () => {
    const node = "gpu-node-1";
    const cuda = await plannedImage(node);
    const socket = socketOf(node);
    expect(await criHas(socket, refOf(cuda.image, cuda.digest))).toBe(true);
    await k(["label", "node", node, "nvidia.com/gpu.present-"]);
    await waitFor(
      `the agent on ${node} to remove ${cuda.digest}`,
      async () => ((await criHas(socket, refOf(cuda.image, cuda.digest))) ? undefined : true),
      90_000,
    );
    expect((await criRepoDigests(socket)).some((d) => d.endsWith(`@${cuda.digest}`))).toBe(false);
    // The other nodes keep theirs.
    expect(await criHas(late!.containerd.socketPath, refOf(cuda.image, cuda.digest))).toBe(true);
  }, 120_000);

  it("refuses an image over the disk budget with QuotaExceeded and never pulls it", async () => {
    // A new image only this test asks for, on the sandbox upstream.
    const source = parseReference(`${sandbox.upstream.host}/acme/too-big:1.0`);
    const client = new RegistryClient({ insecureHosts: [sandbox.upstream.host] });
    await pushMultiArchIndex(client, { registry: source.registry, repository: source.repository }, "1.0", {
      layerSizes: [2 * MiB],
      seed: "stowage-prewarm-quota",
    });
    await client.close();

    // The controller again, with a budget no image fits.
    await sandbox.controller.kill("SIGTERM");
    quotaController = await startControllerProcess({
      kubeconfig: sandbox.kubeconfigPath,
      cacheRegistry: sandbox.cache.url,
      args: [
        "--insecure-registry",
        sandbox.upstream.host,
        "--leader-elect=false",
        "--disk-budget-fraction",
        "0.0000001",
      ],
      echo: false,
    });

    const manifest = {
      apiVersion: "stowage.dev/v1alpha1",
      kind: "ModelImage",
      metadata: { name: "too-big", namespace: "ml" },
      spec: {
        variants: [
          {
            name: "cpu",
            image: `${sandbox.upstream.host}/acme/too-big:1.0`,
            nodeSelector: { "kubernetes.io/arch": "arm64" },
          },
        ],
        prewarm: { enabled: true },
      },
    };
    const file = join(sandbox.dir, "too-big.yaml");
    await writeFile(file, stringify(manifest));
    await k(["apply", "-f", file]);

    const message = await waitFor(
      "QuotaExceeded for cpu-node-arm64 in the ModelImage status or events",
      async () => {
        const mi = await modelImage("too-big");
        const prewarmed = condition(mi.status?.conditions, "Prewarmed")?.message ?? "";
        const events = await getJson<{
          items: {
            reason?: string;
            message?: string;
            note?: string;
            involvedObject?: { name?: string };
            regarding?: { name?: string };
          }[];
        }>(["get", "events", "-n", "ml"]);
        const event = events.items.find(
          (e) => e.reason === "QuotaExceeded" && (e.regarding?.name ?? e.involvedObject?.name) === "too-big",
        );
        const text = `${prewarmed} ${event?.message ?? event?.note ?? ""}`;
        return /QuotaExceeded/.test(text) && text.includes("cpu-node-arm64") ? text : undefined;
      },
      120_000,
    );
    expect(message).toContain("cpu-node-arm64");

    const mi = await modelImage("too-big");
    const synced = condition(mi.status?.conditions, "Synced");
    expect(synced?.status).toBe("True");
    const nc = await nodeCache("cpu-node-arm64");
    const digests = (nc?.spec.images ?? []).map((i) => i.image);
    expect(digests.some((i) => i.includes("too-big"))).toBe(false);
    const held = await criRepoDigests(socketOf("cpu-node-arm64"));
    expect(held.some((d) => d.includes("too-big"))).toBe(false);
  }, 150_000);
});
