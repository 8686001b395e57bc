import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { type Cluster, getModelImage, modelImage, startCluster, waitForCondition } from "./helpers.ts";

let cluster: Cluster;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let controller: ControllerProcess;

beforeAll(async () => {
  [cluster, upstream, cache] = await Promise.all([startCluster(), startRegistry(), startRegistry()]);
  const owner = new RegistryClient({ insecureHosts: [upstream.host] });
  await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "models/scoped" }, "v1");
  await owner.close();
});

afterAll(async () => {
  await controller?.kill("SIGKILL");
  await Promise.all([cluster?.stop(), upstream?.stop(), cache?.stop()]);
});

describe("a controller configured from the environment, watching one namespace, without leader election", () => {
  it("reconciles ModelImages in its namespace only and takes no Lease", async () => {
    controller = await startControllerProcess({
      kubeconfig: cluster.api.kubeconfigPath,
      cacheRegistry: cache.url,
      args: ["--leader-elect=false", "--namespace", "watched"],
      env: { STOWAGE_INSECURE_REGISTRY: `http://${upstream.host}` },
    });
    const image = `${upstream.host}/models/scoped:v1`;
    await cluster.apply([
      { apiVersion: "v1", kind: "Namespace", metadata: { name: "watched" } },
      { apiVersion: "v1", kind: "Namespace", metadata: { name: "ignored" } },
      modelImage("outside", { image }, "ignored"),
      modelImage("inside", { image }, "watched"),
    ]);
    await waitForCondition(cluster, "inside", "Ready", { status: "True" }, "watched");
    // A later object in the watched namespace finishing means the earlier one outside had its chance.
    await cluster.apply([modelImage("inside-later", { image }, "watched")]);
    await waitForCondition(cluster, "inside-later", "Ready", { status: "True" }, "watched");
    const outside = await getModelImage(cluster, "outside", "ignored");
    expect(outside.status?.conditions ?? []).toEqual([]);
    const leases = await cluster.kubectl(["get", "lease", "-n", "stowage-system", "-o", "name"]);
    expect(leases.stdout.trim()).toBe("");
    const ready = controller.logs().find((line) => line.msg === "controller ready");
    expect(ready?.leaderElection).toBe("off");
    expect(ready?.namespaces).toEqual(["watched"]);
  });

  it("stops gracefully on SIGINT and exits 0", async () => {
    const exit = await controller.kill("SIGINT");
    expect(exit.code).toBe(0);
    expect(controller.logs().some((line) => line.msg === "controller stopped")).toBe(true);
  });
});
