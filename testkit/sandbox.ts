/**
 * The local sandbox `npm run demo` runs (and tests can reuse): the Kubernetes API test double,
 * an "upstream" registry seeded with a synthetic model image (a CUDA linux/amd64 and a CPU
 * linux/arm64 manifest in one index), the cache registry, the real `stowage controller`
 * process and, when containerd can run here (root, /usr/bin/containerd), one containerd per
 * sandbox node with a real `stowage agent` beside it. Without containerd it runs mirror-only
 * and says why (`runtime.why`); a caller that needs nodes asks for them (`containerd: true`) and
 * gets an error instead of that fallback. Everything listens on 127.0.0.1 and lives in one temp
 * dir; `stop()` ends every process and removes it.
 *
 * Nodes: `gpu-node-1` (amd64, NVIDIA driver 550.54 = CUDA 12.4: takes the `cuda` variant),
 * `cpu-node-arm64` (arm64: takes the `cpu` variant) and `gpu-node-old` (a Node object only: its
 * driver supports CUDA 11.4, older than the image's 12.4, so the planner must skip it — no
 * containerd needed). The arm64 node's containerd runs on this amd64 host: containerd 1.6.20's
 * CRI PullImage of the arm64 child manifest BY DIGEST fetches and unpacks it (checked here: the
 * image id is the arm64 config), so the node holds the arm64 bytes it would run; pulling the
 * index by tag would pick amd64 instead, which is why the agent pulls by digest.
 */
import type { ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadAllCrds } from "../src/api/crds.ts";
import { KubeClient } from "../src/kube/client.ts";
import { formatReference, parseReference } from "../src/oci/reference.ts";
import { RegistryClient } from "../src/oci/registry.ts";
import { startAgentNode } from "./agentNode.ts";
import { type ApiBackend, startTestCluster, type TestCluster } from "./cluster.ts";
import { type RunningContainerd, startContainerd } from "./containerd.ts";
import { type ControllerProcess, startControllerProcess } from "./controllerProcess.ts";
import { pushMultiArchIndex } from "./images.ts";
import { registerNode } from "./nodes.ts";
import { type RunningRegistry, startRegistry } from "./registry.ts";

const MiB = 1024 * 1024;
const CONTAINERD_BINARY = "/usr/bin/containerd";

/** examples/modelimage-llama.yaml's variant images, without their registry host. */
export const EXAMPLE_IMAGES: Record<string, string> = {
  cuda: "nvidia/tritonserver:24.08-py3",
  cpu: "acme/llama-cpu:1.2",
};

export interface SandboxImage {
  variant: string;
  reference: string;
  digest: string;
}

export interface SandboxNodeSpec {
  name: string;
  arch: "amd64" | "arm64";
  /** The ModelImage variant this node should end up holding; undefined = the planner must skip it. */
  expectedVariant?: string;
  labels: Record<string, string>;
  /** Whether a containerd + agent run for it (a skipped node needs neither). */
  runtime: boolean;
}

export const SANDBOX_NODES: SandboxNodeSpec[] = [
  {
    name: "gpu-node-1",
    arch: "amd64",
    expectedVariant: "cuda",
    runtime: true,
    labels: {
      "nvidia.com/gpu.present": "true",
      // GPU feature discovery labels carry the DRIVER version: 550.54 supports CUDA 12.4.
      "nvidia.com/cuda.driver.major": "550",
      "nvidia.com/cuda.driver.minor": "54",
    },
  },
  {
    name: "cpu-node-arm64",
    arch: "arm64",
    expectedVariant: "cpu",
    runtime: true,
    labels: {},
  },
  {
    name: "gpu-node-old",
    arch: "amd64",
    runtime: false,
    labels: {
      "nvidia.com/gpu.present": "true",
      // Driver 470.82 supports CUDA 11.4 only.
      "nvidia.com/cuda.driver.major": "470",
      "nvidia.com/cuda.driver.minor": "82",
    },
  },
];

export interface SandboxNode extends SandboxNodeSpec {
  containerd?: RunningContainerd;
  agent?: ChildProcess;
  agentLog?: string;
}

export interface SandboxOptions {
  /**
   * "auto" (default): containerd nodes when containerd can start here, else mirror-only (with
   * `runtime.why`); true: nodes, or an error saying why they cannot run; false: mirror-only.
   */
  containerd?: "auto" | boolean;
  /** Progress lines while starting. */
  say?: (line: string) => void;
  /** The API server: the project's test double (default, fast) or the real control plane built from tools/k8s. */
  apiServer?: ApiBackend;
}

export interface Sandbox {
  dir: string;
  kubeconfigPath: string;
  api: TestCluster;
  client: KubeClient;
  upstream: RunningRegistry;
  cache: RunningRegistry;
  controller: ControllerProcess;
  /** The upstream images per example variant (`127.0.0.1:PORT/acme/llama-cpu:1.2`) and their index digest. */
  images: SandboxImage[];
  /** Layer bytes of the synthetic index (both platforms, shared base once). */
  imageBytes: number;
  /** Every sandbox Node object; those with `containerd` have an agent. */
  nodes: SandboxNode[];
  /** Whether the controller process runs the pre-warm planner (NodeCache specs for nodes). */
  prewarmPlanner: boolean;
  /** Whether containerd nodes run, and if not, why. */
  runtime: { available: boolean; why?: string };
  logsDir: string;
  stop(): Promise<void>;
}

export async function startSandbox(options: SandboxOptions = {}): Promise<Sandbox> {
  const say = options.say ?? (() => {});
  const dir = await mkdtemp(join(tmpdir(), "stowage-sandbox-"));
  const logsDir = join(dir, "logs");
  await mkdir(logsDir);
  const cleanups: (() => Promise<unknown>)[] = [];
  const stop = async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const api = await startTestCluster({
      backend: options.apiServer ?? "double",
      crds: loadAllCrds() as never,
    });
    cleanups.push(() => api.stop());
    const kubeconfigPath = join(dir, "kubeconfig");
    await writeFile(kubeconfigPath, api.kubeconfig, { mode: 0o600 });
    const client = KubeClient.load({ path: kubeconfigPath });
    cleanups.push(async () => client.close());
    const apiLabel = `API server (${api.backend === "double" ? "test double" : "real kube-apiserver"})`;
    say(`${apiLabel.padEnd(26)}${api.url}`);

    const upstream = await startRegistry();
    cleanups.push(() => upstream.stop());
    const cache = await startRegistry();
    cleanups.push(() => cache.stop());
    say(`upstream registry         ${upstream.url}`);
    say(`cache registry            ${cache.url}`);

    // The example's two images (examples/modelimage-llama.yaml), on the sandbox upstream: both
    // hold the same synthetic index, so each variant mirrors only its nodes' platform from it.
    const registryClient = new RegistryClient({ insecureHosts: [upstream.host] });
    const layerSizes = [24 * MiB, 6 * MiB];
    const sharedBaseSize = 16 * MiB;
    const images: SandboxImage[] = [];
    for (const [variant, path] of Object.entries(EXAMPLE_IMAGES)) {
      const source = parseReference(`${upstream.host}/${path}`);
      const seeded = await pushMultiArchIndex(
        registryClient,
        { registry: source.registry, repository: source.repository },
        source.tag ?? "latest",
        { cuda: true, layerSizes, sharedBaseSize, seed: "stowage-demo" },
      );
      images.push({ variant, reference: formatReference(source), digest: seeded.digest });
    }
    await registryClient.close();
    const bytes = sharedBaseSize + 2 * layerSizes.reduce((a, b) => a + b, 0);
    say(
      `seeded ${images.map((i) => i.reference).join(" and ")}: one index, CUDA 12.4 linux/amd64 + CPU linux/arm64/v8, ~${Math.round(bytes / MiB)} MiB of layers`,
    );

    for (const namespace of ["stowage-system"]) {
      await api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: namespace } });
    }

    // Decided before the controller starts: a mirror-only run has no nodes to pre-warm, so its
    // controller runs without the planner (with it, Ready would wait for nodes that never come).
    const runtime = await runtimeAvailability(options.containerd ?? "auto");
    const controller = await startControllerProcess({
      kubeconfig: kubeconfigPath,
      cacheRegistry: cache.url,
      args: [
        "--insecure-registry",
        upstream.host,
        "--leader-elect=false",
        ...(runtime.available ? [] : ["--prewarm=false"]),
      ],
      echo: false,
    });
    cleanups.push(() => controller.kill("SIGTERM"));
    say(
      `stowage controller        pid ${controller.pid}, metrics http://127.0.0.1:${controller.healthPort}/metrics`,
    );

    // Without the pre-warm planner nothing would reach the nodes: its ready line says whether it
    // runs (off when the NodeCache CRD is not served, which the sandbox always installs).
    const ready = await controller.waitForLog((line) => line.msg === "controller ready");
    const prewarmPlanner = ready.prewarm === true;
    if (runtime.available && !prewarmPlanner)
      throw new Error(
        "the controller runs no pre-warm planner (ready line: prewarm false): nodes would stay cold",
      );
    const nodes: SandboxNode[] = [];
    if (runtime.available) {
      for (const spec of SANDBOX_NODES) {
        const node: SandboxNode = { ...spec };
        nodes.push(node);
        await registerNode(client, nodeObject(spec));
        if (!spec.runtime) {
          say(
            `node ${spec.name.padEnd(15)} ${spec.arch}, NVIDIA driver 470.82 = CUDA 11.4 (no runtime: the planner must skip it)`,
          );
          continue;
        }
        const agentNode = await startAgentNode(spec.name, { kubeconfig: kubeconfigPath, logsDir });
        cleanups.push(() => agentNode.stop());
        node.containerd = agentNode.containerd;
        node.agent = agentNode.agent;
        node.agentLog = agentNode.logFile;
        say(
          `node ${spec.name.padEnd(15)} ${spec.arch}, containerd ${node.containerd.snapshotter} + stowage agent (log ${node.agentLog})`,
        );
      }
    } else {
      say(
        `MIRROR-ONLY: no containerd nodes (${runtime.why}); controller and cache only, nothing is pre-pulled`,
      );
    }

    return {
      dir,
      kubeconfigPath,
      api,
      client,
      upstream,
      cache,
      controller,
      images,
      imageBytes: bytes,
      nodes,
      runtime,
      prewarmPlanner,
      logsDir,
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * Why containerd nodes cannot run on this machine (not root, no /usr/bin/containerd), or
 * undefined when they can: what decides whether the demo must show nodes.
 */
export function nodesUnavailableHere(): string | undefined {
  if (!existsSync(CONTAINERD_BINARY)) return `${CONTAINERD_BINARY} is not installed`;
  if (process.getuid?.() !== 0) return "containerd needs root (snapshotter mounts)";
  return undefined;
}

/**
 * Whether containerd nodes run: root and the binary, then ("auto") one containerd that starts.
 * Required nodes (`true`) skip that probe: a containerd that fails to start fails the sandbox.
 */
async function runtimeAvailability(wanted: "auto" | boolean): Promise<{ available: boolean; why?: string }> {
  if (wanted === false) return { available: false, why: "disabled (--no-nodes)" };
  const unavailable = nodesUnavailableHere();
  if (unavailable && wanted === true) throw new Error(`sandbox nodes were required, but ${unavailable}`);
  if (unavailable) return { available: false, why: unavailable };
  if (wanted === true) return { available: true };
  try {
    const probe = await startContainerd();
    await probe.dispose();
    return { available: true };
  } catch (err) {
    return {
      available: false,
      why: `containerd does not start here: ${(err as Error).message.split("\n")[0]}`,
    };
  }
}

function nodeObject(spec: SandboxNodeSpec) {
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name: spec.name,
      labels: {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": spec.arch,
        ...spec.labels,
      },
    },
    spec: {},
    status: {
      conditions: [
        {
          type: "Ready",
          status: "True",
          reason: "KubeletReady",
          message: "sandbox node",
          lastHeartbeatTime: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
          lastTransitionTime: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
        },
      ],
      nodeInfo: { architecture: spec.arch, operatingSystem: "linux" },
    },
  };
}
