/**
 * The real `stowage controller` process against the real API server: SIGTERM during a slow copy
 * stops the work (the copy aborted, the Lease released, no ModelImage write after it) and exits 0
 * inside a pod's grace period; a leader-election namespace that does not exist ends the process
 * with a message saying so, instead of a controller that never leads and never says why.
 */
import { type AddressInfo, createServer, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ModelImage, ModelImageResource } from "../../src/api/modelImage.ts";
import { KubeClient, Resources } from "../../src/kube/client.ts";
import type { Lease } from "../../src/kube/leaderElection.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import {
  type ControllerProcess,
  type Exit,
  startControllerProcess,
} from "../../testkit/controllerProcess.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { type Cluster, eventually, startCluster } from "../e2e/helpers.ts";

/** A TCP server on loopback that accepts every connection and never answers. */
async function startHangingServer(): Promise<{ host: string; accepted(): number; stop(): Promise<void> }> {
  const sockets = new Set<Socket>();
  let accepted = 0;
  const server = createServer((socket) => {
    accepted++;
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
    socket.resume();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    host: `127.0.0.1:${port}`,
    accepted: () => accepted,
    async stop() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A pod's default terminationGracePeriodSeconds: the kubelet sends SIGKILL after it. */
const POD_GRACE_MS = 30_000;

let cluster: Cluster;
let client: KubeClient;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let proxy: FaultProxy;
const processes: ControllerProcess[] = [];

beforeAll(async () => {
  [cluster, upstream, cache] = await Promise.all([startCluster(), startRegistry(), startRegistry()]);
  client = KubeClient.load({ path: cluster.api.kubeconfigPath });
  const owner = new RegistryClient({ insecureHosts: [upstream.host] });
  await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "models/big" }, "v1", {
    layerSizes: [4 * 1024 * 1024, 4 * 1024 * 1024],
  });
  await owner.close();
  proxy = await startFaultProxy(upstream.url);
  await cluster.apply([{ apiVersion: "v1", kind: "Namespace", metadata: { name: "ml" } }]);
}, 180_000);

afterAll(async () => {
  await Promise.all(processes.map((p) => p.kill("SIGKILL")));
  await proxy?.stop();
  await Promise.all([cluster?.stop(), upstream?.stop(), cache?.stop()]);
  client?.close();
});

/** The process's exit, or undefined when it is still running after `ms`. */
async function exitWithin(
  proc: ControllerProcess,
  ms: number,
  signal?: NodeJS.Signals,
): Promise<Exit | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  try {
    return await Promise.race([signal ? proc.kill(signal) : proc.exited, late]);
  } finally {
    clearTimeout(timer);
  }
}

describe("the controller process on the real API server", () => {
  it("on SIGTERM during a slow copy aborts it, releases the Lease, writes no status after and exits 0 in the grace period", async () => {
    // 8 MiB of blobs at 64 KiB/s per connection: the copy is under way for minutes.
    proxy.addRule({
      match: { method: "GET", path: /\/blobs\// },
      times: Number.POSITIVE_INFINITY,
      action: { kind: "throttle", bytesPerSecond: 64 * 1024, latencyMs: 0 },
    });
    const controller = await startControllerProcess({
      kubeconfig: cluster.api.kubeconfigPath,
      cacheRegistry: cache.url,
      args: ["--insecure-registry", proxy.host, "--prewarm=false", "--shutdown-timeout", "10s"],
    });
    processes.push(controller);
    const objects = client.resource<ModelImage>(ModelImageResource);
    await objects.create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "ModelImage",
      metadata: { name: "big", namespace: "ml" },
      spec: { image: `${proxy.host}/models/big:v1` },
    });
    await eventually("the copy is under way", async () => {
      const mi = await objects.get("big", "ml");
      const reconciling = mi.status?.conditions?.find((c) => c.type === "Reconciling");
      return reconciling?.status === "True" && proxy.seen().some((r) => r.path.includes("/blobs/"));
    });
    const before = await objects.get("big", "ml");

    // Every write to the ModelImage from the SIGTERM on, as a watch sees it.
    const writes: string[] = [];
    const stopWatch = new AbortController();
    const watching = client
      .watch(
        "/apis/stowage.dev/v1alpha1/namespaces/ml/modelimages",
        { resourceVersion: before.metadata.resourceVersion, fieldSelector: "metadata.name=big" },
        (type, obj) => {
          if (type !== "BOOKMARK") writes.push(`${type} ${(obj as ModelImage).metadata?.resourceVersion}`);
        },
        { signal: stopWatch.signal },
      )
      .catch((err: Error) => writes.push(`watch failed: ${err.message}`));

    const signalled = Date.now();
    const exit = await exitWithin(controller, POD_GRACE_MS, "SIGTERM");
    // The figure for the note; the bound asserted is the pod's grace period.
    console.info(`controller exited ${Date.now() - signalled} ms after SIGTERM (--shutdown-timeout 10s)`);
    expect(exit, "still running after the pod's 30 s grace period").toEqual({ code: 0, signal: null });
    const logs = controller.logs().map((line) => line.msg);
    expect(logs).toContain("released the lease");

    const lease = await client.resource<Lease>(Resources.Lease).get("stowage-controller", "stowage-system");
    expect(lease.spec?.holderIdentity ?? "").toBe("");
    // The copy was aborted: nothing reached the cache, and the old process wrote no status since SIGTERM.
    const cacheReader = new RegistryClient({ insecureHosts: [cache.host] });
    const tags = await cacheReader
      .listTags({ registry: cache.host, repository: `${proxy.host.replace(":", "_")}/models/big` })
      .catch(() => []);
    await cacheReader.close();
    expect(tags).toEqual([]);
    stopWatch.abort();
    await watching;
    expect(writes).toEqual([]);
    expect((await objects.get("big", "ml")).metadata.resourceVersion).toBe(before.metadata.resourceVersion);
  }, 180_000);

  it("with its default flags keeps syncing other ModelImages while four hang on an upstream that never answers, and deletes them", async () => {
    const hanging = await startHangingServer();
    try {
      const controller = await startControllerProcess({
        kubeconfig: cluster.api.kubeconfigPath,
        cacheRegistry: cache.url,
        // Only what the test needs: the workers, deadlines and per-host limit are the defaults.
        args: ["--insecure-registry", hanging.host, "--insecure-registry", upstream.host, "--prewarm=false"],
        env: { STOWAGE_RETAIN_ON_DELETE: "false" }, // a finalizer: deletion needs this controller
      });
      processes.push(controller);
      await cluster.apply([{ apiVersion: "v1", kind: "Namespace", metadata: { name: "hung" } }]);
      const objects = client.resource<ModelImage>(ModelImageResource);
      for (let i = 1; i <= 4; i++) {
        await objects.create({
          apiVersion: "stowage.dev/v1alpha1",
          kind: "ModelImage",
          metadata: { name: `hung-${i}`, namespace: "hung" },
          spec: { image: `${hanging.host}/models/hung-${i}:v1` },
        });
      }
      await eventually("the hung upstream holds connections", async () => hanging.accepted() >= 2);
      const created = Date.now();
      await objects.create({
        apiVersion: "stowage.dev/v1alpha1",
        kind: "ModelImage",
        metadata: { name: "healthy", namespace: "hung" },
        spec: { image: `${upstream.host}/models/big:v1` },
      });
      await eventually(
        "the healthy ModelImage is Synced",
        async () =>
          (await objects.get("healthy", "hung")).status?.conditions?.some(
            (c) => c.type === "Synced" && c.status === "True",
          ),
        90_000,
      );
      console.info(`controller process: healthy ModelImage Synced ${Date.now() - created} ms after creation`);
      expect((await controller.health("/readyz")).status).toBe(200);
      for (let i = 1; i <= 4; i++) await objects.delete(`hung-${i}`, "hung");
      await eventually(
        "the hung ModelImages are deleted",
        async () => (await objects.list({ namespace: "hung" })).items.length === 1,
        60_000,
      );
      expect((await exitWithin(controller, POD_GRACE_MS, "SIGTERM"))?.code).toBe(0);
    } finally {
      await hanging.stop();
    }
  }, 240_000);

  it("exits 1 at once, naming the namespace, when the leader-election namespace does not exist", async () => {
    const controller = await startControllerProcess({
      kubeconfig: cluster.api.kubeconfigPath,
      cacheRegistry: cache.url,
      args: ["--prewarm=false", "--leader-election-namespace", "no-such-namespace"],
      waitReady: false,
    });
    processes.push(controller);
    const exit = await exitWithin(controller, 60_000);
    expect(exit, "still running: leader election stalls silently").toEqual({ code: 1, signal: null });
    const fatal = controller.logs().find((line) => line.level === "fatal");
    expect(fatal?.msg).toContain('namespace "no-such-namespace" does not exist');
    expect(fatal?.msg).toContain("--leader-election-namespace");
  }, 120_000);
});
