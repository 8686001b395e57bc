import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadCrd } from "../../src/api/crds.ts";
import { type ModelImage, ModelImageResource } from "../../src/api/modelImage.ts";
import { KubeClient, Resources } from "../../src/kube/client.ts";
import { getCondition } from "../../src/kube/conditions.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { startTestCluster, type TestCluster } from "../../testkit/cluster.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { type PushedIndex, pushMultiArchIndex } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually } from "../kube/helpers.ts";
import { createNode, findNodeCache, report } from "./prewarm-harness.ts";

let cluster: TestCluster;
let client: KubeClient;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let pushed: PushedIndex;
const processes: ControllerProcess[] = [];

beforeAll(async () => {
  [cluster, upstream, cache] = await Promise.all([
    startTestCluster({
      crds: [loadCrd("stowage.dev_modelimages") as never, loadCrd("stowage.dev_nodecaches") as never],
    }),
    startRegistry(),
    startRegistry(),
  ]);
  client = KubeClient.load({ path: cluster.kubeconfigPath });
  const push = new RegistryClient({ insecureHosts: [upstream.host] });
  pushed = await pushMultiArchIndex(push, { registry: upstream.host, repository: "acme/llama" }, "1.0");
  await push.close();
  await client.resource(Resources.Namespace).create({ metadata: { name: "ml" } });
  await createNode(client, "proc-1", { arch: "arm64", labels: { pool: "cpu" } });
}, 60_000);

afterAll(async () => {
  await Promise.all(processes.map((p) => p.kill("SIGTERM")));
  await Promise.all([cluster?.stop(), upstream?.stop(), cache?.stop()]);
  client?.close();
});

describe("stowage controller with the pre-warm planner", () => {
  it("plans the node's image into its NodeCache and reports the ModelImage Ready once the agent has it", async () => {
    const controller = await startControllerProcess({
      kubeconfig: cluster.kubeconfigPath,
      cacheRegistry: cache.url,
      args: [
        "--leader-elect=false",
        "--insecure-registry",
        upstream.host,
        "--cache-endpoint-for-nodes",
        "http://10.1.2.3:5000",
        "--disk-budget-fraction",
        "0.5",
      ],
    });
    processes.push(controller);
    expect(controller.logs().find((l) => l.msg === "controller ready")?.prewarm).toBe(true);
    await client.resource<ModelImage>(ModelImageResource).create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "ModelImage",
      metadata: { name: "llama", namespace: "ml" },
      spec: {
        variants: [{ name: "cpu", image: `${upstream.host}/acme/llama:1.0`, nodeSelector: { pool: "cpu" } }],
      },
    });
    await eventually(
      "NodeCache planned",
      async () => ((await findNodeCache(client, "proc-1"))?.spec.images?.length ?? 0) === 1,
    );
    const nc = await findNodeCache(client, "proc-1");
    expect(nc?.spec.cacheEndpoint).toBe("http://10.1.2.3:5000");
    expect(nc?.spec.images?.[0].digest).toBe(pushed.images[1].manifest.digest); // arm64

    await report(client, "proc-1", { [pushed.images[1].manifest.digest]: "Present" });
    let mi: ModelImage | undefined;
    await eventually("Ready", async () => {
      mi = await client.resource<ModelImage>(ModelImageResource).get("llama", "ml");
      return getCondition(mi.status?.conditions, "Ready")?.status === "True";
    });
    expect(mi?.status?.nodes).toBe("1/1");
    expect(getCondition(mi?.status?.conditions, "Prewarmed")?.reason).toBe("NodesWarm");
    const metrics = await controller.health("/metrics");
    expect(metrics.body).toContain('stowage_prewarm_nodes{namespace="ml",name="llama",state="ready"} 1');
  });

  it("mirrors without pre-warming, and says why, when the NodeCache CRD is not installed", async () => {
    const bare = await startTestCluster({
      crds: [loadCrd("stowage.dev_modelimages") as never],
      // Only the API is needed (real: etcd and kube-apiserver, no controllers).
      controlPlane: { controllerManager: false, scheduler: false },
    });
    try {
      const controller = await startControllerProcess({
        kubeconfig: bare.kubeconfigPath,
        cacheRegistry: cache.url,
        args: ["--leader-elect=false"],
      });
      processes.push(controller);
      expect(controller.logs().find((l) => l.msg === "controller ready")?.prewarm).toBe(false);
      expect(
        controller
          .logs()
          .some((l) => l.msg.includes("NodeCache CRD (nodecaches.stowage.dev) is not installed")),
      ).toBe(true);
      await controller.kill("SIGTERM");
    } finally {
      await bare.stop();
    }
  });

  it("refuses a disk budget fraction outside (0, 1] with exit code 2", async () => {
    const controller = await startControllerProcess({
      kubeconfig: cluster.kubeconfigPath,
      cacheRegistry: cache.url,
      args: ["--disk-budget-fraction", "1.5"],
      waitReady: false,
    });
    processes.push(controller);
    expect((await controller.exited).code).toBe(2);
    expect(controller.stderr()).toContain("--disk-budget-fraction must be a number above 0 and at most 1");
  });
});
