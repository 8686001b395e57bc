import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { run as runCommand } from "../support/run.ts";

/** Colour stays off unless a test asks for it. */
const run = (command: string, args: string[], env: Record<string, string> = {}) =>
  runCommand(command, args, { NO_COLOR: "", ...env });

import { loadAllCrds } from "../../src/api/crds.ts";
import { type ModelImage, ModelImageResource } from "../../src/api/modelImage.ts";
import { type NodeCache, NodeCacheResource } from "../../src/api/nodeCache.ts";
import type { KubeClient } from "../../src/kube/client.ts";
import type { StatusReport } from "../../src/status/model.ts";
import { renderKubeconfig } from "../../testkit/apiserver/kubeconfig.ts";
import { startTestCluster, type TestCluster } from "../../testkit/cluster.ts";
import { k8sBin } from "../../testkit/k8sTools.ts";
import { freePort } from "../../testkit/ports.ts";
import { startCluster } from "../kube/helpers.ts";

const root = fileURLToPath(new URL("../..", import.meta.url));
const digest = (c: string) => `sha256:${c.repeat(64)}`;
const GiB = 1024 * 1024 * 1024;

const stowage = (args: string[], env?: Record<string, string>) =>
  run(process.execPath, [join(root, "bin/stowage.js"), "status", ...args], env);

let api: TestCluster;
let client: KubeClient;
let work: string;

async function createModelImage(mi: Omit<ModelImage, "apiVersion" | "kind">): Promise<void> {
  const resource = client.resource<ModelImage>(ModelImageResource);
  const { status, ...rest } = mi;
  await resource.create({ apiVersion: "stowage.dev/v1alpha1", kind: "ModelImage", ...rest } as ModelImage);
  if (status) await resource.patchStatus(mi.metadata.name!, { status }, mi.metadata.namespace);
}

async function createNodeCache(nc: Omit<NodeCache, "apiVersion" | "kind">): Promise<void> {
  const resource = client.resource<NodeCache>(NodeCacheResource);
  const { status, ...rest } = nc;
  await resource.create({ apiVersion: "stowage.dev/v1alpha1", kind: "NodeCache", ...rest } as NodeCache);
  if (status) await resource.patchStatus(nc.metadata.name!, { status });
}

const condition = (type: string, status: "True" | "False", reason: string, message = "") => ({
  type,
  status,
  reason,
  message,
  lastTransitionTime: "2026-01-01T10:00:00Z",
});

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "stowage-status-"));
  // RBAC on (the real apiserver always has it): a user granted nothing is refused for real.
  ({ cluster: api, client } = await startCluster({ crds: loadAllCrds() as never, rbac: true }));
  for (const ns of ["ml", "web"])
    await api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: ns } });

  // ml/llama3-serve: Ready; cuda on two GPU nodes (one present, one pulling, one skipped for its
  // driver), cpu on an arm64 node that failed.
  await createModelImage({
    metadata: { name: "llama3-serve", namespace: "ml" },
    spec: {
      variants: [
        {
          name: "cuda",
          image: "nvcr.io/nvidia/tritonserver:24.08-py3",
          nodeSelector: { "nvidia.com/gpu.present": "true" },
        },
        { name: "cpu", image: "ghcr.io/acme/llama-cpu:1.2", nodeSelector: { "kubernetes.io/arch": "arm64" } },
      ],
    },
    status: {
      observedGeneration: 1,
      conditions: [
        condition("Ready", "False", "NodesPulling", "1/3 nodes ready"),
        condition("Synced", "True", "UpToDate", "the cache holds the upstream digests"),
        condition(
          "Prewarmed",
          "False",
          "NodesPulling",
          "need 3 ready: 1/3 nodes ready (1 pulling, 1 failed, 1 skipped); QuotaExceeded: node cpu-2: ghcr.io/acme/llama-cpu:1.2 (5 bytes) does not fit the disk budget",
        ),
      ],
      variants: [
        {
          name: "cuda",
          image: "nvcr.io/nvidia/tritonserver:24.08-py3",
          sourceDigest: digest("a"),
          cacheDigest: digest("a"),
          platforms: ["linux/amd64"],
          sizeBytes: 2 * GiB,
          nodes: { desired: 2, ready: 1, pulling: 1, failed: 0, skipped: 1 },
        },
        {
          name: "cpu",
          image: "ghcr.io/acme/llama-cpu:1.2",
          sourceDigest: digest("b"),
          cacheDigest: digest("b"),
          platforms: ["linux/arm64"],
          sizeBytes: GiB,
          nodes: { desired: 1, ready: 0, pulling: 0, failed: 1, skipped: 1 },
        },
      ],
      digest: "2 digests",
      nodes: "1/3",
    },
  });
  // web/vllm: lagging upstream since a known time, no nodes.
  await createModelImage({
    metadata: { name: "vllm", namespace: "web" },
    spec: { image: "docker.io/vllm/vllm-openai:v0.6.3" },
    status: {
      conditions: [
        condition("Ready", "False", "UpstreamChanged", "upstream moved to sha256:cccc"),
        condition("Synced", "False", "UpstreamChanged", "upstream moved to sha256:cccc"),
      ],
      variants: [
        {
          name: "default",
          image: "docker.io/vllm/vllm-openai:v0.6.3",
          sourceDigest: digest("c"),
          cacheDigest: digest("d"),
          upstreamChangedAt: "2026-01-01T09:00:00Z",
        },
      ],
      lagSince: "2026-01-01T09:00:00Z",
    },
  });

  const requester = (variant: string) => [{ namespace: "ml", name: "llama3-serve", variant }];
  const cudaImage = {
    image: "nvcr.io/nvidia/tritonserver:24.08-py3",
    digest: digest("1"),
    sizeBytes: 2 * GiB,
    requestedBy: requester("cuda"),
  };
  // gpu-1 warmed with fan-out: part from the cache, part from gpu-3; gpu-2's agent gave up on gpu-3.
  await createNodeCache({
    metadata: { name: "gpu-1" },
    spec: { nodeName: "gpu-1", images: [cudaImage] },
    status: {
      images: [
        {
          image: cudaImage.image,
          digest: digest("1"),
          state: "Present",
          bytes: 2 * GiB,
          sources: [
            { source: "cache", bytes: GiB / 2 },
            { source: "gpu-3", bytes: (3 * GiB) / 2 },
          ],
        },
      ],
    },
  });
  await createNodeCache({
    metadata: { name: "gpu-2" },
    spec: { nodeName: "gpu-2", images: [cudaImage] },
    status: {
      images: [{ image: cudaImage.image, digest: digest("1"), state: "Pulling", bytes: GiB / 2 }],
      peerFailures: [{ node: "gpu-3", reason: "Stalled", since: "2026-01-01T10:30:00Z" }],
    },
  });
  await createNodeCache({
    metadata: { name: "cpu-1" },
    spec: {
      nodeName: "cpu-1",
      images: [
        {
          image: "ghcr.io/acme/llama-cpu:1.2",
          digest: digest("2"),
          sizeBytes: GiB,
          requestedBy: requester("cpu"),
        },
      ],
    },
    status: {
      images: [
        {
          image: "ghcr.io/acme/llama-cpu:1.2",
          digest: digest("2"),
          state: "Failed",
          reason: "PullFailed",
          message: "failed to unpack image on snapshotter overlayfs",
        },
      ],
    },
  });
  // The planner's Warning event for a node whose CUDA driver is too old (it is in no NodeCache spec).
  await client
    .resource({ group: "events.k8s.io", version: "v1", plural: "events", kind: "Event", namespaced: true })
    .create({
      apiVersion: "events.k8s.io/v1",
      kind: "Event",
      metadata: { name: "llama3-serve.cuda-old", namespace: "ml" },
      eventTime: "2026-01-01T10:00:00.000000Z",
      reportingController: "stowage.dev/controller",
      reportingInstance: "test",
      action: "Prewarm",
      type: "Warning",
      reason: "CudaDriverTooOld",
      note: "variant cuda: node gpu-old: NVIDIA driver 470.82 supports CUDA 11.4, the image needs CUDA 12.4",
      regarding: {
        apiVersion: "stowage.dev/v1alpha1",
        kind: "ModelImage",
        namespace: "ml",
        name: "llama3-serve",
      },
    } as never);
}, 60_000);

afterAll(async () => {
  client?.close();
  await api?.stop();
  await rm(work, { recursive: true, force: true });
});

describe("stowage status", () => {
  it("prints each ModelImage with its variants, digests and a node × variant matrix, without colour when not a TTY", async () => {
    const { code, stdout, stderr } = await stowage(["--kubeconfig", api.kubeconfigPath]);
    expect(stderr).toBe("");
    expect(code).toBe(0);
    expect(stdout).not.toContain("\u001b[");
    expect(stdout).toContain("ml/llama3-serve");
    expect(stdout).toContain("web/vllm");
    expect(stdout).toMatch(
      /cuda\s+nvcr\.io\/nvidia\/tritonserver:24\.08-py3\s+sha256:aaaaaaaaaa\s+sha256:aaaaaaaaaa\s+linux\/amd64\s+2\.0 GiB/,
    );
    const row = (node: string) => stdout.split("\n").find((l) => l.trim().startsWith(`${node} `)) ?? "";
    expect(row("gpu-1")).toMatch(/gpu-1\s+present\s+-/);
    expect(row("gpu-2")).toMatch(/gpu-2\s+pulling 25%\s+-/);
    expect(row("gpu-old")).toMatch(/gpu-old\s+skipped CudaDriverTooOld\s+-/);
    expect(row("cpu-1")).toMatch(/cpu-1\s+-\s+failed PullFailed/);
    expect(row("cpu-2")).toMatch(/cpu-2\s+-\s+skipped QuotaExceeded/);
    expect(stdout).toMatch(/web\/vllm .*lagging .* \(since 2026-01-01T09:00:00Z\)/);
  });

  it("colours states when asked to (as on a TTY) and never when NO_COLOR is set with --color=auto", async () => {
    const coloured = await stowage(["--kubeconfig", api.kubeconfigPath, "--color", "always"]);
    expect(coloured.code).toBe(0);
    expect(coloured.stdout).toContain("\u001b[32mpresent");
    expect(coloured.stdout).toContain("\u001b[31mfailed PullFailed");
    const auto = await stowage(["--kubeconfig", api.kubeconfigPath], { NO_COLOR: "1" });
    expect(auto.stdout).not.toContain("\u001b[");
  });

  it("gives scripts a stable JSON shape with -o json", async () => {
    const { code, stdout } = await stowage(["--kubeconfig", api.kubeconfigPath, "-o", "json"]);
    expect(code).toBe(0);
    const report = JSON.parse(stdout) as StatusReport;
    expect(report.kind).toBe("StowageStatus");
    expect(report.version).toBe("v1");
    expect(report.modelImages.map((m) => `${m.namespace}/${m.name}`)).toEqual([
      "ml/llama3-serve",
      "web/vllm",
    ]);
    const llama = report.modelImages[0];
    expect(llama.ready).toEqual({ status: "False", reason: "NodesPulling", message: "1/3 nodes ready" });
    expect(llama.synced?.reason).toBe("UpToDate");
    expect(llama.variants.map((v) => [v.name, v.cacheDigest, v.platforms])).toEqual([
      ["cuda", digest("a"), ["linux/amd64"]],
      ["cpu", digest("b"), ["linux/arm64"]],
    ]);
    expect(llama.cells).toEqual([
      expect.objectContaining({ node: "cpu-1", variant: "cpu", state: "failed", reason: "PullFailed" }),
      expect.objectContaining({ node: "cpu-2", variant: "cpu", state: "skipped", reason: "QuotaExceeded" }),
      expect.objectContaining({
        node: "gpu-1",
        variant: "cuda",
        state: "present",
        percent: 100,
        digest: digest("1"),
      }),
      expect.objectContaining({
        node: "gpu-2",
        variant: "cuda",
        state: "pulling",
        percent: 25,
        bytes: GiB / 2,
      }),
      expect.objectContaining({
        node: "gpu-old",
        variant: "cuda",
        state: "skipped",
        reason: "CudaDriverTooOld",
      }),
    ]);
    const vllm = report.modelImages[1];
    expect(vllm.lag?.since).toBe("2026-01-01T09:00:00Z");
    expect(vllm.lag?.seconds).toBeGreaterThan(0);
    expect(vllm.cells).toEqual([]);
  });

  it("shows where a warm node's bytes came from and the peers a node stopped reading from, in text and JSON", async () => {
    const text = await stowage(["--kubeconfig", api.kubeconfigPath]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(
      /NODE\s+VARIANT\s+BYTES BY SOURCE\n\s+gpu-1\s+cuda\s+cache 512 MiB, gpu-3 1\.5 GiB\n/,
    );
    expect(text.stdout).toMatch(
      /NODE\s+PEER FAILED\s+REASON\s+SINCE\n\s+gpu-2\s+gpu-3\s+Stalled\s+2026-01-01T10:30:00Z \(/,
    );
    // Only in the block of the ModelImage whose nodes they concern.
    expect(text.stdout.split("web/vllm")[1]).not.toMatch(/BYTES BY SOURCE|PEER FAILED/);

    const json = await stowage(["--kubeconfig", api.kubeconfigPath, "-o", "json"]);
    const report = JSON.parse(json.stdout) as StatusReport;
    expect(report.modelImages[0].cells.find((c) => c.node === "gpu-1")?.sources).toEqual([
      { source: "cache", bytes: GiB / 2 },
      { source: "gpu-3", bytes: (3 * GiB) / 2 },
    ]);
    expect(report.nodes).toEqual([
      { node: "gpu-2", peerFailures: [{ node: "gpu-3", reason: "Stalled", since: "2026-01-01T10:30:00Z" }] },
    ]);
  });

  it("shows only one namespace with -n", async () => {
    const { code, stdout } = await stowage(["--kubeconfig", api.kubeconfigPath, "-n", "web", "-o", "json"]);
    expect(code).toBe(0);
    const report = JSON.parse(stdout) as StatusReport;
    expect(report.modelImages.map((m) => m.name)).toEqual(["vllm"]);
  });

  it("runs as a kubectl plugin: `kubectl stowage status` with bin/ on PATH honours --kubeconfig and --context", async () => {
    const kubeconfig = join(work, "plugin-kubeconfig");
    // The current context points nowhere; only --context selects the cluster.
    const config = parse(api.kubeconfig) as { "current-context": string };
    const context = config["current-context"];
    await writeFile(kubeconfig, stringify({ ...config, "current-context": "missing" }));
    const kubectl = k8sBin("kubectl");
    const { code, stdout, stderr } = await run(
      kubectl,
      ["stowage", "status", "--kubeconfig", kubeconfig, "--context", context, "-n", "ml"],
      {
        PATH: [join(root, "bin"), dirname(kubectl), process.env.PATH].join(delimiter),
        HOME: work,
      },
    );
    expect(stderr).toBe("");
    expect(code).toBe(0);
    expect(stdout).toContain("ml/llama3-serve");
    expect(stdout).not.toContain("web/vllm");
  });

  it("exits 1 with one line when the ModelImage CRD is not installed", async () => {
    // Only the API is needed (real: etcd and kube-apiserver, no controllers).
    const bare = await startTestCluster({ controlPlane: { controllerManager: false, scheduler: false } });
    try {
      const { code, stdout, stderr } = await stowage(["--kubeconfig", bare.kubeconfigPath]);
      expect(code).toBe(1);
      expect(stdout).toBe("");
      expect(stderr.trimEnd().split("\n")).toHaveLength(1);
      expect(stderr).toContain("the ModelImage CRD (modelimages.stowage.dev) is not installed");
    } finally {
      await bare.stop();
    }
  });

  it("exits 1 with one line when the API server cannot be reached", async () => {
    const kubeconfig = join(work, "unreachable");
    await writeFile(kubeconfig, renderKubeconfig(`http://127.0.0.1:${await freePort()}`));
    const { code, stderr } = await stowage(["--kubeconfig", kubeconfig]);
    expect(code).toBe(1);
    expect(stderr.trimEnd().split("\n")).toHaveLength(1);
    expect(stderr).toMatch(
      /^stowage status: cannot reach the Kubernetes API server at http:\/\/127\.0\.0\.1:\d+/,
    );
  });

  it("exits 1 with one line when the user may not list ModelImages", async () => {
    // A ServiceAccount granted nothing.
    const kubeconfig = await api.serviceAccountKubeconfig("ml", "viewer", join(work, "forbidden"));
    const { code, stderr } = await stowage(["--kubeconfig", kubeconfig]);
    expect(code).toBe(1);
    expect(stderr.trimEnd().split("\n")).toHaveLength(1);
    expect(stderr).toContain(
      'forbidden: modelimages.stowage.dev is forbidden: User "system:serviceaccount:ml:viewer" cannot list resource "modelimages"',
    );
  });
});
