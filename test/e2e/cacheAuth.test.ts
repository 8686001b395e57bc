import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { type Cluster, modelImage, startCluster, waitForCondition } from "./helpers.ts";

const cacheUser = { username: "stowage-controller", password: "cache-Pa55-only-in-env" };

let cluster: Cluster;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let controller: ControllerProcess;
let image: PushedImage;

beforeAll(async () => {
  [cluster, upstream, cache] = await Promise.all([
    startCluster(),
    startRegistry(),
    startRegistry({ auth: "htpasswd", users: [cacheUser] }),
  ]);
  const owner = new RegistryClient({ insecureHosts: [upstream.host] });
  image = await pushSinglePlatformImage(
    owner,
    { registry: upstream.host, repository: "models/guarded" },
    "v1",
  );
  await owner.close();
});

afterAll(async () => {
  await controller?.kill("SIGKILL");
  await Promise.all([cluster?.stop(), upstream?.stop(), cache?.stop()]);
});

describe("a cache registry that requires credentials", () => {
  it("is pushed to with STOWAGE_CACHE_USERNAME/PASSWORD from the environment, never logging the password", async () => {
    controller = await startControllerProcess({
      kubeconfig: cluster.api.kubeconfigPath,
      cacheRegistry: cache.url,
      args: ["--insecure-registry", upstream.host, "--log-level", "debug"],
      env: { STOWAGE_CACHE_USERNAME: cacheUser.username, STOWAGE_CACHE_PASSWORD: cacheUser.password },
    });
    await cluster.apply([modelImage("guarded", { image: `${upstream.host}/models/guarded:v1` })]);
    const mi = await waitForCondition(cluster, "guarded", "Ready", { status: "True" });
    expect(mi.status?.variants?.[0]?.cacheDigest).toBe(image.digest);
    const anonymous = await fetch(
      `${cache.url}/v2/${upstream.host.replace(":", "_")}/models/guarded/manifests/v1`,
      {
        method: "HEAD",
      },
    );
    expect(anonymous.status).toBe(401); // the push above really needed the credentials
    expect(controller.stderr()).not.toContain(cacheUser.password);
    expect(controller.stderr()).not.toContain(
      Buffer.from(`${cacheUser.username}:${cacheUser.password}`).toString("base64"),
    );
  });
});
