/**
 * A pull secret created or fixed after a ModelImage failed on it brings the ModelImage to Ready
 * within seconds: AuthConfigInvalid and AuthFailed are Stalled, so nothing else would sync it
 * again before its interval (10 minutes here). Nothing is queued by hand in these tests.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Resources } from "../../src/kube/client.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import {
  createModelImage,
  createNamespaces,
  startCluster,
  startController,
  waitForCondition,
} from "./modelimage-harness.ts";

let cluster: Awaited<ReturnType<typeof startCluster>>;
let privateUpstream: RunningRegistry;
let cache: RunningRegistry;
let controller: Awaited<ReturnType<typeof startController>>;

function pullSecret(name: string, password: string) {
  return {
    metadata: { name, namespace: "ml" },
    type: "kubernetes.io/dockerconfigjson",
    data: {
      ".dockerconfigjson": Buffer.from(
        JSON.stringify({ auths: { [privateUpstream.host]: { username: "ml", password } } }),
      ).toString("base64"),
    },
  };
}

beforeAll(async () => {
  [cluster, privateUpstream, cache] = await Promise.all([
    startCluster(),
    startRegistry({ auth: "htpasswd", users: [{ username: "ml", password: "right-password" }] }),
    startRegistry(),
  ]);
  const owner = new RegistryClient({
    insecureHosts: [privateUpstream.host],
    credentials: async () => [{ username: "ml", password: "right-password" }],
  });
  await pushSinglePlatformImage(
    owner,
    { registry: privateUpstream.host, repository: "models/private" },
    "v1",
  );
  await owner.close();
  await createNamespaces(cluster.client, "ml");
  controller = await startController(cluster.client, {
    cache: { registry: cache.host, insecure: true },
    insecureRegistries: [privateUpstream.host],
    pullSecretRecheckMs: 500,
  });
}, 120_000);

afterAll(async () => {
  await controller?.stop();
  await Promise.all([cluster?.api.stop(), privateUpstream?.stop(), cache?.stop()]);
  cluster?.client.close();
});

describe("pull secrets put right after a failure", () => {
  it("syncs a ModelImage as soon as its missing pull secret is created", async () => {
    await createModelImage(cluster.client, "ml", "waits-for-secret", {
      image: `${privateUpstream.host}/models/private:v1`,
      pullSecrets: [{ name: "created-later" }],
      sync: { interval: "10m" },
    });
    await waitForCondition(cluster.client, "ml", "waits-for-secret", "Stalled", "True", "AuthConfigInvalid");
    await cluster.client
      .resource(Resources.Secret)
      .create(pullSecret("created-later", "right-password") as never);
    await waitForCondition(cluster.client, "ml", "waits-for-secret", "Ready", "True", undefined, 30_000);
  });

  it("syncs a ModelImage as soon as its pull secret's wrong password is fixed", async () => {
    await cluster.client
      .resource(Resources.Secret)
      .create(pullSecret("fixed-later", "wrong-password") as never);
    await createModelImage(cluster.client, "ml", "wrong-password", {
      image: `${privateUpstream.host}/models/private:v1`,
      pullSecrets: [{ name: "fixed-later" }],
      sync: { interval: "10m" },
    });
    const failed = await waitForCondition(
      cluster.client,
      "ml",
      "wrong-password",
      "Stalled",
      "True",
      "AuthFailed",
    );
    expect(failed.status?.conditions?.find((c) => c.type === "Ready")?.status).toBe("False");
    const stored = await cluster.client.resource(Resources.Secret).get("fixed-later", "ml");
    await cluster.client
      .resource(Resources.Secret)
      .update({ ...stored, ...pullSecret("fixed-later", "right-password") } as never);
    await waitForCondition(cluster.client, "ml", "wrong-password", "Ready", "True", undefined, 30_000);
  });
});
