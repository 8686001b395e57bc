import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeApiError, Resources } from "../../src/kube/client.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually } from "../kube/helpers.ts";
import {
  condition,
  createModelImage,
  createNamespaces,
  eventsFor,
  modelImages,
  startCluster,
  startController,
  waitForCondition,
} from "./modelimage-harness.ts";

/** Where nodes reach the cache (--cache-endpoint-for-nodes): another name of the cache. */
const NODE_CACHE_ENDPOINT_HOST = "stowage-cache.stowage-system.svc:5000";

let cluster: Awaited<ReturnType<typeof startCluster>>;
let upstream: RunningRegistry;
let privateUpstream: RunningRegistry;
let stoppedUpstream: RunningRegistry;
let cache: RunningRegistry;
let controller: Awaited<ReturnType<typeof startController>>;
let cacheDownController: Awaited<ReturnType<typeof startController>>;
let pushClient: RegistryClient;
let deadCache: string;

beforeAll(async () => {
  [cluster, upstream, cache, stoppedUpstream, privateUpstream] = await Promise.all([
    startCluster(),
    startRegistry(),
    startRegistry(),
    startRegistry(),
    startRegistry({ auth: "htpasswd", users: [{ username: "ml", password: "right-password" }] }),
  ]);
  pushClient = new RegistryClient({
    insecureHosts: [upstream.host, privateUpstream.host, stoppedUpstream.host],
    credentials: (registry) =>
      registry === privateUpstream.host ? { username: "ml", password: "right-password" } : undefined,
  });
  await pushSinglePlatformImage(pushClient, { registry: upstream.host, repository: "models/ok" }, "v1");
  await pushSinglePlatformImage(
    pushClient,
    { registry: privateUpstream.host, repository: "models/secret" },
    "v1",
  );
  await pushSinglePlatformImage(
    pushClient,
    { registry: stoppedUpstream.host, repository: "models/gone" },
    "v1",
  );
  deadCache = `127.0.0.1:${await freePort()}`;
  await createNamespaces(cluster.client, "ml", "cachedown");
  const insecureRegistries = [upstream.host, privateUpstream.host, stoppedUpstream.host];
  controller = await startController(cluster.client, {
    cache: { registry: cache.host, insecure: true },
    insecureRegistries,
    namespaces: ["ml"],
    cacheAliases: [NODE_CACHE_ENDPOINT_HOST],
  });
  cacheDownController = await startController(cluster.client, {
    cache: { registry: deadCache, insecure: true },
    insecureRegistries,
    namespaces: ["cachedown"],
    retainOnDelete: false,
    deletionTimeoutMs: 1500,
  });
}, 60_000);

afterAll(async () => {
  await Promise.all([controller?.stop(), cacheDownController?.stop()]);
  await Promise.all([
    cluster?.api.stop(),
    upstream?.stop(),
    cache?.stop(),
    privateUpstream?.stop(),
    stoppedUpstream?.stop(),
  ]);
  cluster?.client.close();
  await pushClient?.close();
});

describe("ModelImage reconciler failures", () => {
  it("stalls with ImageNotFound for a tag upstream does not have, naming the variant and image", async () => {
    await createModelImage(cluster.client, "ml", "typo", { image: `${upstream.host}/models/ok:v9` });
    const mi = await waitForCondition(cluster.client, "ml", "typo", "Stalled", "True", "ImageNotFound");
    expect(condition(mi, "Ready")).toMatchObject({ status: "False", reason: "ImageNotFound" });
    expect(condition(mi, "Stalled")?.message).toContain(`variant "default" (${upstream.host}/models/ok:v9)`);
  });

  it("stalls with InvalidSpec naming spec.sync.interval when the interval cannot be honoured, instead of Synced=True", async () => {
    const created = await createModelImage(cluster.client, "ml", "forever", {
      image: `${upstream.host}/models/ok:v1`,
      sync: { interval: "99999999999h" },
    }).catch((err: unknown) => err);
    if (created instanceof KubeApiError) {
      // The real apiserver's CEL duration() refuses it at apply, naming the field; the API double
      // accepts it, and so would a server with an older CRD: then the reconciler must stall.
      expect(created.code).toBe(422);
      expect(created.message).toContain("spec.sync.interval");
      return;
    }
    const mi = await waitForCondition(cluster.client, "ml", "forever", "Stalled", "True", "InvalidSpec");
    expect(condition(mi, "Stalled")?.message).toContain("spec.sync.interval");
    expect(condition(mi, "Synced")).toMatchObject({ status: "False", reason: "InvalidSpec" });
    expect(condition(mi, "Ready")).toMatchObject({ status: "False", reason: "InvalidSpec" });
  });

  it("stalls with InvalidSpec, not UpstreamUnavailable retried forever, for an image whose registry port is past 65535", async () => {
    const created = await createModelImage(cluster.client, "ml", "bad-port", {
      image: "127.0.0.1:99999/models/ok:v1",
    }).catch((err: unknown) => err);
    if (created instanceof KubeApiError) {
      // The CRD refuses ports outside 1-65535 at apply (on both API servers since it has a rule for
      // it); a server with an older CRD accepts it, and then the reconciler must stall.
      expect(created.code).toBe(422);
      expect(created.message).toContain("the registry port must be between 1 and 65535");
      return;
    }
    const mi = await waitForCondition(cluster.client, "ml", "bad-port", "Stalled", "True", "InvalidSpec");
    expect(condition(mi, "Stalled")?.message).toContain("spec.image");
    expect(condition(mi, "Stalled")?.message).toContain("99999");
    expect(condition(mi, "Ready")).toMatchObject({ status: "False", reason: "InvalidSpec" });
  });

  it("refuses a reference to the cache's own copy of another tenant's image (InvalidSpec), so it is never read with the cache's credentials", async () => {
    const cacheCopy = `${cache.host}/${privateUpstream.host.replace(":", "_")}/models/secret:v1`;
    await createModelImage(cluster.client, "ml", "deputy", { image: cacheCopy });
    const mi = await waitForCondition(cluster.client, "ml", "deputy", "Stalled", "True", "InvalidSpec");
    expect(condition(mi, "Stalled")?.message).toContain("names the Stowage cache itself");
    expect(condition(mi, "Ready")).toMatchObject({ status: "False", reason: "InvalidSpec" });
    expect(mi.status?.variants ?? []).toEqual([]);
  });

  it("refuses a reference through the cache's endpoint for nodes as naming the cache itself", async () => {
    await createModelImage(cluster.client, "ml", "deputy-endpoint", {
      variants: [{ name: "gpu", image: `${NODE_CACHE_ENDPOINT_HOST}/docker.io/library/busybox:1` }],
    });
    const mi = await waitForCondition(
      cluster.client,
      "ml",
      "deputy-endpoint",
      "Stalled",
      "True",
      "InvalidSpec",
    );
    expect(condition(mi, "Stalled")?.message).toContain("spec.variants[0].image");
    expect(condition(mi, "Stalled")?.message).toContain("name the upstream image instead");
  });

  it("reports UpstreamUnavailable for a stopped upstream and keeps retrying until it is back", async () => {
    await stoppedUpstream.stop();
    await createModelImage(cluster.client, "ml", "flaky", {
      image: `${stoppedUpstream.host}/models/gone:v1`,
    });
    const mi = await waitForCondition(
      cluster.client,
      "ml",
      "flaky",
      "Synced",
      "False",
      "UpstreamUnavailable",
    );
    expect(condition(mi, "Stalled")).toBeUndefined();
    expect(condition(mi, "Synced")?.message).toContain(stoppedUpstream.host);
    // Other ModelImages are not blocked meanwhile.
    await createModelImage(cluster.client, "ml", "neighbour", { image: `${upstream.host}/models/ok:v1` });
    await waitForCondition(cluster.client, "ml", "neighbour", "Ready", "True");
    await eventually("the failing object is retried with backoff", async () => {
      const m = await controller.runtimeMetrics.registry.getSingleMetric("workqueue_retries_total")?.get();
      return (m?.values.reduce((sum, v) => sum + v.value, 0) ?? 0) >= 2;
    });
  });

  it("fails with AuthFailed when the pull secret's password is wrong, and syncs once it is right", async () => {
    const secret = (password: string) => ({
      metadata: { name: "registry-creds", namespace: "ml" },
      type: "kubernetes.io/dockerconfigjson",
      data: {
        ".dockerconfigjson": Buffer.from(
          JSON.stringify({ auths: { [privateUpstream.host]: { username: "ml", password } } }),
        ).toString("base64"),
      },
    });
    await cluster.client.resource(Resources.Secret).create(secret("wrong-password") as never);
    await createModelImage(cluster.client, "ml", "private", {
      image: `${privateUpstream.host}/models/secret:v1`,
      pullSecrets: [{ name: "registry-creds" }],
    });
    const mi = await waitForCondition(cluster.client, "ml", "private", "Stalled", "True", "AuthFailed");
    expect(JSON.stringify(mi.status)).not.toContain("wrong-password");
    const failed = await eventsFor(cluster.client, "ml", "private");
    expect(JSON.stringify(failed)).not.toContain("wrong-password");

    const stored = await cluster.client.resource(Resources.Secret).get("registry-creds", "ml");
    await cluster.client
      .resource(Resources.Secret)
      .update({ ...stored, ...secret("right-password") } as never);
    controller.controller.enqueue("ml/private");
    await waitForCondition(cluster.client, "ml", "private", "Ready", "True");
  });

  it("reports CacheUnavailable, not UpstreamUnavailable, when the cache registry is down", async () => {
    await createModelImage(cluster.client, "cachedown", "blocked", {
      image: `${upstream.host}/models/ok:v1`,
    });
    const mi = await waitForCondition(
      cluster.client,
      "cachedown",
      "blocked",
      "Synced",
      "False",
      "CacheUnavailable",
    );
    expect(condition(mi, "Synced")?.message).toContain(deadCache);
    expect(condition(mi, "Stalled")).toBeUndefined();
    // The Event is recorded after the status write: it may land a moment later.
    await eventually("a SyncFailed Warning", async () =>
      (await eventsFor(cluster.client, "cachedown", "blocked")).some((e) => e.reason === "SyncFailed"),
    );
  });

  it("releases the finalizer of a deleted ModelImage after the bound when the cache stays unreachable, with a Warning", async () => {
    await waitForCondition(cluster.client, "cachedown", "blocked", "Synced", "False", "CacheUnavailable");
    await modelImages(cluster.client).delete("blocked", "cachedown");
    await eventually(
      "the object is gone",
      async () => (await modelImages(cluster.client).find("blocked", "cachedown")) === undefined,
      20_000,
    );
    const events = await eventsFor(cluster.client, "cachedown", "blocked");
    const warning = events.find((e) => e.type === "Warning" && e.reason === "CacheUnavailable");
    expect(warning?.note).toContain("released the finalizer");
  });
});
