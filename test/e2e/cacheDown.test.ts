import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { type Cluster, condition, modelImage, startCluster, waitForCondition } from "./helpers.ts";

let cluster: Cluster;
let upstream: RunningRegistry;
let cache: RunningRegistry | undefined;
let controller: ControllerProcess;
let image: PushedImage;

beforeAll(async () => {
  [cluster, upstream] = await Promise.all([startCluster(), startRegistry()]);
  const owner = new RegistryClient({ insecureHosts: [upstream.host] });
  image = await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "models/small" }, "v1");
  await owner.close();
});

afterAll(async () => {
  await controller?.kill("SIGTERM");
  await Promise.all([cluster?.stop(), upstream?.stop(), cache?.stop()]);
});

describe("cache registry down when the controller starts", () => {
  it("reports CacheUnavailable, then becomes Ready once the cache is up, without a restart", async () => {
    const cachePort = await freePort();
    controller = await startControllerProcess({
      kubeconfig: cluster.api.kubeconfigPath,
      cacheRegistry: `http://127.0.0.1:${cachePort}`,
      args: ["--insecure-registry", upstream.host],
    });
    await cluster.apply([modelImage("small", { image: `${upstream.host}/models/small:v1` })]);

    const down = await waitForCondition(cluster, "small", "Ready", {
      status: "False",
      reason: "CacheUnavailable",
    });
    expect(condition(down, "Ready")?.message).toContain(`127.0.0.1:${cachePort}`);
    expect(condition(down, "Stalled")?.status).not.toBe("True"); // retried, not waiting for a person

    cache = await startRegistry({ port: cachePort });
    const ready = await waitForCondition(cluster, "small", "Ready", { status: "True" });
    expect(ready.status?.variants?.[0]?.cacheDigest).toBe(image.digest);
    const head = await fetch(`${cache.url}/v2/${upstream.host.replace(":", "_")}/models/small/manifests/v1`, {
      method: "HEAD",
      headers: { accept: "application/vnd.oci.image.manifest.v1+json" },
    });
    expect(head.headers.get("docker-content-digest")).toBe(image.digest);
    expect(controller.logs().filter((line) => line.msg === "controller ready")).toHaveLength(1);
  });
});
