import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { type Cluster, eventually, modelImage, startCluster, waitForCondition } from "./helpers.ts";

const leaseFlags = ["--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "500ms"];

let cluster: Cluster;
let upstream: RunningRegistry;
let cache: RunningRegistry;
const replicas: ControllerProcess[] = [];

/** Sum of every sample of a metric in Prometheus text (0 when absent). */
function metricTotal(text: string, name: string): number {
  return text
    .split("\n")
    .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0);
}

async function holder(): Promise<string> {
  return cluster.kubectlOk([
    "get",
    "lease",
    "stowage-controller",
    "-n",
    "stowage-system",
    "-o",
    "jsonpath={.spec.holderIdentity}",
  ]);
}

function startReplica(identity: string): Promise<ControllerProcess> {
  return startControllerProcess({
    kubeconfig: cluster.api.kubeconfigPath,
    cacheRegistry: cache.url,
    identity,
    args: ["--insecure-registry", upstream.host, ...leaseFlags],
  }).then((replica) => {
    replicas.push(replica);
    return replica;
  });
}

beforeAll(async () => {
  [cluster, upstream, cache] = await Promise.all([startCluster(), startRegistry(), startRegistry()]);
  const owner = new RegistryClient({ insecureHosts: [upstream.host] });
  await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "models/first" }, "v1");
  await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "models/second" }, "v1");
  await owner.close();
});

afterAll(async () => {
  await Promise.all(replicas.map((replica) => replica.kill("SIGKILL")));
  await Promise.all([cluster?.stop(), upstream?.stop(), cache?.stop()]);
});

describe("two controller replicas", () => {
  it("lets only the leader sync, and hands over to the standby when the leader is killed", async () => {
    const leader = await startReplica("replica-a");
    await leader.waitForLog((line) => line.msg === "became leader");
    const standby = await startReplica("replica-b");
    const standbyLine = await standby.waitForLog((line) => String(line.msg).startsWith("standby"));
    expect(standbyLine.holder).toBe("replica-a");
    expect(await holder()).toBe("replica-a");

    await cluster.apply([modelImage("first", { image: `${upstream.host}/models/first:v1` })]);
    await waitForCondition(cluster, "first", "Ready", { status: "True" });

    const leaderMetrics = (await leader.health("/metrics")).body;
    const standbyMetrics = (await standby.health("/metrics")).body;
    expect(metricTotal(leaderMetrics, "leader_election_master_status")).toBe(1);
    expect(metricTotal(standbyMetrics, "leader_election_master_status")).toBe(0);
    expect(metricTotal(leaderMetrics, "stowage_sync_total")).toBeGreaterThan(0);
    expect(metricTotal(standbyMetrics, "stowage_sync_total")).toBe(0);
    expect(standby.logs().some((line) => line.msg === "became leader")).toBe(false);

    await leader.kill("SIGKILL");
    await standby.waitForLog((line) => line.msg === "became leader", 30_000);
    await eventually("the Lease held by replica-b", async () => (await holder()) === "replica-b", 30_000);

    await cluster.apply([modelImage("second", { image: `${upstream.host}/models/second:v1` })]);
    await waitForCondition(cluster, "second", "Ready", { status: "True" });
    const newLeaderMetrics = (await standby.health("/metrics")).body;
    expect(metricTotal(newLeaderMetrics, "leader_election_master_status")).toBe(1);
    expect(metricTotal(newLeaderMetrics, "stowage_sync_total")).toBeGreaterThan(0);
  }, 90_000);

  it("releases the Lease on SIGTERM and exits 0", async () => {
    const current = replicas.find((replica) => replica.identity === "replica-b");
    expect(current).toBeDefined();
    const exit = await current?.kill("SIGTERM");
    expect(exit?.code).toBe(0);
    expect(await holder()).toBe("");
    expect(current?.logs().some((line) => line.msg === "released the lease")).toBe(true);
  });
});
