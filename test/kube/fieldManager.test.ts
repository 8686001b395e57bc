/**
 * Every write names its field manager: managedFields say which Stowage component wrote what,
 * whatever User-Agent the client sends (a proxy or wrapper may rewrite it).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeClient, type KubeObject, Resources } from "../../src/kube/client.ts";
import { Informer } from "../../src/kube/informer.ts";
import { createRuntimeMetrics } from "../../src/metrics.ts";
import { stowageVersion } from "../../src/util/version.ts";
import { createNamespace, startCluster, type TestCluster } from "./helpers.ts";

let cluster: TestCluster;
let admin: KubeClient;

beforeAll(async () => {
  ({ cluster, client: admin } = await startCluster());
  await createNamespace(admin, "managers");
});

afterAll(async () => {
  admin?.close();
  await cluster?.stop();
});

type ConfigMap = KubeObject & {
  data?: Record<string, string>;
  metadata: KubeObject["metadata"] & { managedFields?: { manager?: string; operation?: string }[] };
};

function managers(obj: ConfigMap): string[] {
  return [
    ...new Set((obj.metadata.managedFields ?? []).map((entry) => `${entry.operation} ${entry.manager}`)),
  ].sort();
}

describe("field manager", () => {
  it("names the given field manager on create, update and patch, not the User-Agent's product", async () => {
    const client = KubeClient.load({
      path: cluster.kubeconfigPath,
      userAgent: "curl/8.5.0",
      fieldManager: "stowage-controller",
    });
    const configMaps = client.resource<ConfigMap>(Resources.ConfigMap);
    const created = await configMaps.create({
      metadata: { name: "created", namespace: "managers" },
      data: { a: "1" },
    });
    expect(managers(created)).toEqual(["Update stowage-controller"]);
    const updated = await configMaps.update({ ...created, data: { a: "2", b: "1" } });
    expect(managers(updated)).toEqual(["Update stowage-controller"]);
    const patched = await configMaps.patch("created", { data: { c: "1" } }, { namespace: "managers" });
    expect(managers(patched)).toEqual(["Update stowage-controller"]);
    client.close();
  });

  it("defaults the field manager to the User-Agent's product, without its version", async () => {
    const client = KubeClient.load({
      path: cluster.kubeconfigPath,
      userAgent: `stowage-agent/${stowageVersion()}`,
    });
    expect(client.fieldManager).toBe("stowage-agent");
    const created = await client
      .resource<ConfigMap>(Resources.ConfigMap)
      .create({ metadata: { name: "defaulted", namespace: "managers" }, data: { a: "1" } });
    expect(managers(created)).toEqual(["Update stowage-agent"]);
    client.close();
  });

  it("keeps every manager's managedFields when an update is made from an informer's copy, which drops them", async () => {
    const kubectl = KubeClient.load({ path: cluster.kubeconfigPath, fieldManager: "kubectl-edit" });
    const stowage = KubeClient.load({ path: cluster.kubeconfigPath, fieldManager: "stowage-controller" });
    await kubectl
      .resource<ConfigMap>(Resources.ConfigMap)
      .create({ metadata: { name: "cached", namespace: "managers" }, data: { a: "1" } });
    const informer = new Informer<ConfigMap>({
      client: stowage,
      type: Resources.ConfigMap,
      namespace: "managers",
      metrics: createRuntimeMetrics(),
    });
    informer.start();
    try {
      await informer.waitForSync();
      const cached = informer.get("managers/cached");
      expect(cached?.data).toEqual({ a: "1" });
      expect(cached?.metadata.managedFields).toBeUndefined();
      const updated = await stowage
        .resource<ConfigMap>(Resources.ConfigMap)
        .update({ ...(cached as ConfigMap), data: { a: "1", b: "2" } });
      expect(managers(updated)).toEqual(["Update kubectl-edit", "Update stowage-controller"]);
    } finally {
      await informer.stop();
      kubectl.close();
      stowage.close();
    }
  });
});
