/**
 * With retainOnDelete (the default) the cache keeps everything, so the ModelImage carries no
 * finalizer: deleting one after the controller is gone (helm uninstall first) must not leave it
 * Terminating forever. A finalizer left by an earlier retainOnDelete=false run is taken off.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryClient } from "../../src/oci/registry.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually } from "../kube/helpers.ts";
import {
  createNamespaces,
  modelImages,
  startCluster,
  startController,
  waitForCondition,
} from "./modelimage-harness.ts";

let cluster: Awaited<ReturnType<typeof startCluster>>;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let controller: Awaited<ReturnType<typeof startController>> | undefined;
let image: string;

beforeAll(async () => {
  [cluster, upstream, cache] = await Promise.all([startCluster(), startRegistry(), startRegistry()]);
  const push = new RegistryClient({ insecureHosts: [upstream.host] });
  await pushSinglePlatformImage(push, { registry: upstream.host, repository: "models/kept" }, "v1");
  await push.close();
  image = `${upstream.host}/models/kept:v1`;
  await createNamespaces(cluster.client, "ml");
  controller = await startController(cluster.client, {
    cache: { registry: cache.host, insecure: true },
    insecureRegistries: [upstream.host],
    retainOnDelete: true,
  });
}, 120_000);

afterAll(async () => {
  await controller?.stop();
  await Promise.all([cluster?.api.stop(), upstream?.stop(), cache?.stop()]);
  cluster?.client.close();
});

describe("ModelImage finalizer with retainOnDelete", () => {
  it("adds none, and takes off one an earlier retainOnDelete=false run left", async () => {
    await modelImages(cluster.client).create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "ModelImage",
      metadata: { name: "fresh", namespace: "ml" },
      spec: { image },
    });
    await modelImages(cluster.client).create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "ModelImage",
      metadata: { name: "legacy", namespace: "ml", finalizers: ["stowage.dev/cache-cleanup"] },
      spec: { image },
    });
    const fresh = await waitForCondition(cluster.client, "ml", "fresh", "Synced", "True");
    expect(fresh.metadata.finalizers ?? []).not.toContain("stowage.dev/cache-cleanup");
    await waitForCondition(cluster.client, "ml", "legacy", "Synced", "True");
    await eventually("the leftover finalizer is taken off", async () => {
      const legacy = await modelImages(cluster.client).get("legacy", "ml");
      return !(legacy.metadata.finalizers ?? []).includes("stowage.dev/cache-cleanup");
    });
  });

  it("lets a ModelImage be deleted at once when no controller runs any more", async () => {
    await controller?.stop();
    controller = undefined;
    await modelImages(cluster.client).delete("fresh", "ml");
    await modelImages(cluster.client).delete("legacy", "ml");
    expect(await modelImages(cluster.client).find("fresh", "ml")).toBeUndefined();
    expect(await modelImages(cluster.client).find("legacy", "ml")).toBeUndefined();
  });
});
