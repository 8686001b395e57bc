/**
 * The StowageNodeAgentDown alert reads stowage_nodecache_heartbeat_age_seconds{node}: the real
 * controller process must export it from its NodeCache informer on /metrics, drop a node's series
 * once its NodeCache is gone, and export nothing when pre-warm is off (no NodeCache CRD).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type NodeCache, NodeCacheResource } from "../../src/api/nodeCache.ts";
import { KubeClient } from "../../src/kube/client.ts";
import { formatTime } from "../../src/kube/time.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { type Cluster, eventually, startCluster } from "./helpers.ts";

let cluster: Cluster;
let client: KubeClient;
let cache: RunningRegistry;
const processes: ControllerProcess[] = [];

beforeAll(async () => {
  [cluster, cache] = await Promise.all([
    startCluster({ crds: ["stowage.dev_modelimages", "stowage.dev_nodecaches"] }),
    startRegistry(),
  ]);
  client = KubeClient.load({ path: cluster.api.kubeconfigPath });
});

afterAll(async () => {
  await Promise.all(processes.map((p) => p.kill("SIGTERM")));
  await Promise.all([cluster?.stop(), cache?.stop()]);
  client?.close();
});

/** The value of the node's heartbeat-age sample, or undefined when the series is absent. */
function heartbeatAge(metrics: string, node: string): number | undefined {
  const prefix = `stowage_nodecache_heartbeat_age_seconds{node="${node}"} `;
  const line = metrics.split("\n").find((l) => l.startsWith(prefix));
  return line === undefined ? undefined : Number(line.slice(prefix.length));
}

describe("stowage controller's node agent heartbeat metric", () => {
  it("exports the seconds since a NodeCache's heartbeat and drops the node's series once the NodeCache is deleted", async () => {
    const controller = await startControllerProcess({
      kubeconfig: cluster.api.kubeconfigPath,
      cacheRegistry: cache.url,
      args: ["--leader-elect=false"],
    });
    processes.push(controller);
    expect(controller.logs().find((l) => l.msg === "controller ready")?.prewarm).toBe(true);

    const nodeCaches = client.resource<NodeCache>(NodeCacheResource);
    await nodeCaches.create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "gpu-7" },
      spec: { nodeName: "gpu-7" },
    });
    // An agent that last reported five minutes ago.
    await nodeCaches.patchStatus("gpu-7", {
      status: { heartbeatTime: formatTime(Date.now() - 300_000) },
    });

    let age: number | undefined;
    await eventually("heartbeat age exported from the stale heartbeat", async () => {
      age = heartbeatAge((await controller.health("/metrics")).body, "gpu-7");
      return age !== undefined && age >= 300;
    });
    // Seconds, not milliseconds, and measured from heartbeatTime rather than from creation.
    expect(age).toBeLessThan(3600);
    const metrics = (await controller.health("/metrics")).body;
    expect(metrics).toContain('stowage_nodecache_images{node="gpu-7",state="Present"} 0');

    // A fresh heartbeat brings the age back down.
    await nodeCaches.patchStatus("gpu-7", { status: { heartbeatTime: formatTime(Date.now()) } });
    await eventually("heartbeat age follows the refreshed heartbeat", async () => {
      const fresh = heartbeatAge((await controller.health("/metrics")).body, "gpu-7");
      return fresh !== undefined && fresh < 300;
    });

    await nodeCaches.delete("gpu-7");
    await eventually("series gone with the NodeCache", async () => {
      const body = (await controller.health("/metrics")).body;
      return heartbeatAge(body, "gpu-7") === undefined && !body.includes('node="gpu-7"');
    });
  });

  it("exports no heartbeat series when the NodeCache CRD is not installed", async () => {
    const bare = await startCluster({ crds: ["stowage.dev_modelimages"] });
    try {
      const controller = await startControllerProcess({
        kubeconfig: bare.api.kubeconfigPath,
        cacheRegistry: cache.url,
        args: ["--leader-elect=false"],
      });
      processes.push(controller);
      expect(controller.logs().find((l) => l.msg === "controller ready")?.prewarm).toBe(false);
      const metrics = await controller.health("/metrics");
      expect(metrics.status).toBe(200);
      expect(metrics.body).toContain("stowage_"); // the controller's own metrics are there
      expect(metrics.body).not.toContain("stowage_nodecache_heartbeat_age_seconds");
      await controller.kill("SIGTERM");
    } finally {
      await bare.stop();
    }
  });
});
