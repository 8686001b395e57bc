/**
 * Real nodes (testkit/kubeletNode): two real kubelets, each with its own containerd, register
 * with the real control plane with their labels and go Ready side by side; a hostNetwork pod
 * selecting the GPU-labelled one is scheduled there, its container really runs (status Running,
 * its output through `kubectl logs`, i.e. apiserver → kubelet → CRI), and deleting the pod
 * removes the container and stops the pod's sandbox.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ControlPlane, startControlPlane } from "../../testkit/controlplane/index.ts";
import { kubectl } from "../../testkit/kubectl.ts";
import { BUSYBOX_IMAGE, type KubeletNode, startKubeletNode } from "../../testkit/kubeletNode.ts";
import { eventually } from "../support/eventually.ts";

let plane: ControlPlane;
let gpuNode: KubeletNode;
let cpuNode: KubeletNode;
let kubectlDir: string;

beforeAll(async () => {
  kubectlDir = await mkdtemp(join(tmpdir(), "kubelet-test-"));
  // The Node's Hostname address is its name, which does not resolve: logs go to the InternalIP.
  plane = await startControlPlane({ apiserverFlags: ["--kubelet-preferred-address-types=InternalIP"] });
  // Both at once, as nodes join a cluster; one that started is stopped by afterAll even when
  // the other failed.
  const [gpu, cpu] = await Promise.allSettled([
    startKubeletNode(plane, "gpu-node-1", { labels: { "nvidia.com/gpu.present": "true" } }),
    startKubeletNode(plane, "cpu-node-1", { labels: { "stowage.dev/pool": "cpu" } }),
  ]);
  if (gpu.status === "fulfilled") gpuNode = gpu.value;
  if (cpu.status === "fulfilled") cpuNode = cpu.value;
  for (const result of [gpu, cpu]) if (result.status === "rejected") throw result.reason;
}, 240_000);

afterAll(async () => {
  await Promise.all([gpuNode?.stop(), cpuNode?.stop()]);
  await plane?.stop();
  if (kubectlDir) await rm(kubectlDir, { recursive: true, force: true });
}, 120_000);

const run = (args: string[]) => kubectl(args, { kubeconfig: plane.kubeconfigPath, dir: kubectlDir });

describe("a real kubelet node", () => {
  it("registers the Node with its labels, the node's address and Ready, beside a second kubelet", async () => {
    for (const [node, labels] of [
      [gpuNode, { "nvidia.com/gpu.present": "true" }],
      [cpuNode, { "stowage.dev/pool": "cpu" }],
    ] as const) {
      const got = await plane.request("GET", `/api/v1/nodes/${node.name}`);
      expect(got.status).toBe(200);
      expect(got.body.metadata.labels).toMatchObject({ ...labels, "kubernetes.io/hostname": node.name });
      expect(got.body.status.addresses).toContainEqual({ type: "InternalIP", address: "127.0.0.1" });
      const ready = got.body.status.conditions.find((c: { type: string }) => c.type === "Ready");
      expect(ready).toMatchObject({ status: "True", reason: "KubeletReady" });
      expect(got.body.status.daemonEndpoints.kubeletEndpoint.Port).toBe(node.port);
    }
  });

  it("runs a hostNetwork pod selecting the GPU node, shows its logs, and removes its container on delete", async () => {
    const pod = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "gpu-job", namespace: "default" },
      spec: {
        nodeSelector: { "nvidia.com/gpu.present": "true" },
        hostNetwork: true,
        automountServiceAccountToken: false,
        terminationGracePeriodSeconds: 5,
        containers: [
          {
            name: "main",
            image: BUSYBOX_IMAGE,
            imagePullPolicy: "Never",
            command: [
              "/bin/sh",
              "-c",
              "echo hello from $(cat /proc/sys/kernel/hostname); trap 'exit 0' TERM; while true; do sleep 1; done",
            ],
          },
        ],
      },
    };
    const created = await plane.request("POST", "/api/v1/namespaces/default/pods", pod);
    expect(created.status).toBe(201);

    const running = await eventually(
      "the pod Running",
      async () => {
        const got = await plane.request("GET", "/api/v1/namespaces/default/pods/gpu-job");
        return got.body.status?.phase === "Running" ? got.body : undefined;
      },
      90_000,
    );
    expect(running.spec.nodeName).toBe(gpuNode.name);
    expect(running.status.containerStatuses[0]).toMatchObject({ name: "main", ready: true, started: true });
    const containerId = String(running.status.containerStatuses[0].containerID).replace("containerd://", "");
    expect(await gpuNode.runningTaskIds()).toContain(containerId);
    expect(await cpuNode.containerIds()).toEqual([]);

    const logs = await eventually("the container's output in kubectl logs", async () => {
      const result = await run(["logs", "gpu-job"]);
      return result.code === 0 && result.stdout.includes("hello from") ? result : undefined;
    });
    expect(logs.stdout).toMatch(/^hello from \S+\n/);

    const deleted = await run(["delete", "pod", "gpu-job", "--wait=true", "--timeout=60s"]);
    expect(deleted.code, deleted.stderr).toBe(0);
    // `kubectl delete --wait` returns once the kubelet confirmed the pod's termination, by then
    // its container is gone from containerd and its sandbox stopped (CRI removes the sandbox later).
    expect(await gpuNode.containerIds()).not.toContain(containerId);
    await eventually("no process of the pod left on the node", async () =>
      (await gpuNode.runningTaskIds()).length === 0 ? true : undefined,
    );
  });
});
