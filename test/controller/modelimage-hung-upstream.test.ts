/**
 * One upstream that accepts connections and never answers must not freeze every tenant: its
 * ModelImages may hold only part of the workers (the rest are parked without a worker), a sync
 * past the deadline is Synced=False UpstreamTimeout and retried, and deleting a hung ModelImage
 * cancels its sync instead of waiting for it.
 */
import { createServer, type Server, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryClient } from "../../src/oci/registry.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually } from "../kube/helpers.ts";
import {
  condition,
  createModelImage,
  createNamespaces,
  modelImages,
  startCluster,
  startController,
  waitForCondition,
} from "./modelimage-harness.ts";

/** A TCP server on loopback that accepts every connection and never sends a byte. */
interface HangingServer {
  host: string;
  /** Connections accepted so far. */
  accepted(): number;
  stop(): Promise<void>;
}

async function startHangingServer(): Promise<HangingServer> {
  const sockets = new Set<Socket>();
  let accepted = 0;
  const server: Server = createServer((socket) => {
    accepted++;
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
    socket.resume(); // read and drop the request; answer nothing
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("hanging server has no port");
  return {
    host: `127.0.0.1:${address.port}`,
    accepted: () => accepted,
    async stop() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

let cluster: Awaited<ReturnType<typeof startCluster>>;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let hanging: HangingServer;
let healthyImage: string;
const controllers: { stop(): Promise<void> }[] = [];
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  [cluster, upstream, cache, hanging] = await Promise.all([
    startCluster(),
    startRegistry(),
    startRegistry(),
    startHangingServer(),
  ]);
  const push = new RegistryClient({ insecureHosts: [upstream.host] });
  await pushSinglePlatformImage(push, { registry: upstream.host, repository: "models/healthy" }, "v1");
  await push.close();
  healthyImage = `${upstream.host}/models/healthy:v1`;
  await createNamespaces(cluster.client, "tenant-a", "tenant-b", "timeouts", "spread");
}, 120_000);

afterAll(async () => {
  for (const controller of controllers) await controller.stop().catch(() => {});
  for (const cleanup of cleanups) await cleanup().catch(() => {});
  await hanging?.stop();
  await Promise.all([cluster?.api.stop(), upstream?.stop(), cache?.stop()]);
  cluster?.client.close();
});

describe("ModelImage controller with an upstream that never answers", () => {
  it("syncs a healthy ModelImage while four others hang on one upstream, and deletes the hung ones", async () => {
    const controller = await startController(cluster.client, {
      cache: { registry: cache.host, insecure: true },
      insecureRegistries: [upstream.host, hanging.host],
      workers: 4, // the default
      maxConcurrentSyncs: 4,
      retainOnDelete: false, // a finalizer: deletion needs a worker of this controller
    });
    controllers.push(controller);
    for (let i = 1; i <= 4; i++) {
      await createModelImage(cluster.client, "tenant-a", `hung-${i}`, {
        image: `${hanging.host}/models/hung-${i}:v1`,
      });
    }
    // The hung syncs hold their workers before the healthy one arrives.
    await eventually("the hung upstream holds connections", async () => hanging.accepted() >= 2);
    const created = Date.now();
    await createModelImage(cluster.client, "tenant-b", "healthy", { image: healthyImage });
    await waitForCondition(cluster.client, "tenant-b", "healthy", "Synced", "True", undefined, 90_000);
    const waitedMs = Date.now() - created;
    // The figure for the note (the goal is under 30 s); not asserted: timings belong in bench/.
    console.info(`healthy ModelImage Synced ${waitedMs} ms after creation, with four hung on one upstream`);

    for (let i = 1; i <= 4; i++) {
      const hung = await modelImages(cluster.client).get(`hung-${i}`, "tenant-a");
      expect(condition(hung, "Synced")?.status).not.toBe("True");
    }
    for (let i = 1; i <= 4; i++) await modelImages(cluster.client).delete(`hung-${i}`, "tenant-a");
    await eventually(
      "every hung ModelImage is gone",
      async () => (await modelImages(cluster.client).list({ namespace: "tenant-a" })).items.length === 0,
      60_000,
    );
    await controller.stop(); // the next test runs its own
  }, 240_000);

  it("reports Synced=False UpstreamTimeout when a sync runs past its deadline, and tries again", async () => {
    const controller = await startController(cluster.client, {
      cache: { registry: cache.host, insecure: true },
      insecureRegistries: [hanging.host],
      namespaces: ["timeouts"],
      syncTimeoutMs: 2_000,
    });
    controllers.push(controller);
    await createModelImage(cluster.client, "timeouts", "slow", { image: `${hanging.host}/models/slow:v1` });
    const timedOut = await waitForCondition(
      cluster.client,
      "timeouts",
      "slow",
      "Synced",
      "False",
      "UpstreamTimeout",
      60_000,
    );
    expect(condition(timedOut, "Synced")?.message).toContain(`${hanging.host} did not answer`);
    expect(condition(timedOut, "Stalled")).toBeUndefined(); // retried, not given up
    const acceptedAtTimeout = hanging.accepted();
    await eventually(
      "the sync is tried again after the timeout",
      async () => hanging.accepted() > acceptedAtTimeout,
      60_000,
    );
    await controller.stop();
  }, 180_000);

  it("syncs a healthy ModelImage while four others hang on four different upstreams", async () => {
    const hosts = await Promise.all([1, 2, 3, 4].map(() => startHangingServer()));
    cleanups.push(() => Promise.all(hosts.map((host) => host.stop())).then(() => {}));
    const controller = await startController(cluster.client, {
      cache: { registry: cache.host, insecure: true },
      insecureRegistries: [upstream.host, ...hosts.map((host) => host.host)],
      namespaces: ["spread"],
      workers: 4, // the defaults: four workers, two per host, a 20 s manifest check
      maxConcurrentSyncs: 4,
    });
    controllers.push(controller);
    for (const [i, host] of hosts.entries()) {
      await createModelImage(cluster.client, "spread", `hung-${i + 1}`, {
        image: `${host.host}/models/hung:v1`,
      });
    }
    await eventually("every worker waits on a hung upstream", async () =>
      hosts.every((host) => host.accepted() >= 1),
    );
    const created = Date.now();
    await createModelImage(cluster.client, "spread", "healthy-first", { image: healthyImage });
    // Bounded by the check deadline: without it the hung checks hold every worker for the
    // transport's timeouts and retries (minutes).
    await waitForCondition(cluster.client, "spread", "healthy-first", "Synced", "True", undefined, 45_000);
    const firstWaitMs = Date.now() - created;
    const hung = await waitForCondition(
      cluster.client,
      "spread",
      "hung-1",
      "Synced",
      "False",
      "UpstreamTimeout",
    );
    expect(condition(hung, "Synced")?.message).toContain("did not answer the manifest check within 20s");

    // Now the four hosts are known slow and share two workers: a newcomer gets one of the others.
    const createdLater = Date.now();
    await createModelImage(cluster.client, "spread", "healthy-later", { image: healthyImage });
    await waitForCondition(cluster.client, "spread", "healthy-later", "Synced", "True", undefined, 45_000);
    const laterWaitMs = Date.now() - createdLater;
    console.info(
      `four hung upstreams on four hosts: a healthy ModelImage Synced ${firstWaitMs} ms after creation; one created after their first timeout, ${laterWaitMs} ms`,
    );
    await controller.stop();
  }, 240_000);
});
