import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeClient, type KubeObject, Resources } from "../../src/kube/client.ts";
import { Informer } from "../../src/kube/informer.ts";
import { createRuntimeMetrics } from "../../src/metrics.ts";
import { startApiServer } from "../../testkit/apiserver/index.ts";
import { freePort } from "../../testkit/ports.ts";
import { FakeClock } from "./fakeClock.ts";
import { type ApiServer, createNamespace, eventually, metricSum, rvByKey, startCluster } from "./helpers.ts";

interface ConfigMap extends KubeObject {
  data?: Record<string, string>;
}

let server: ApiServer;
let client: KubeClient;

beforeAll(async () => {
  ({ server, client } = await startCluster({ historyLimit: 40, bookmarkIntervalMs: 100 }));
});

afterAll(async () => {
  await server?.stop();
});

/** Records what handlers saw: per key the last state, and per uid the add/delete sequence. */
function recordEvents(informer: Informer<ConfigMap>) {
  const lastSeen = new Map<string, ConfigMap | undefined>();
  const liveUids = new Set<string>();
  let duplicateAdds = 0;
  let deletesOfUnknown = 0;
  const key = (o: ConfigMap) => `${o.metadata?.namespace}/${o.metadata?.name}`;
  informer.addEventHandler({
    add: (o) => {
      const uid = o.metadata?.uid ?? "";
      if (liveUids.has(uid)) duplicateAdds++;
      liveUids.add(uid);
      lastSeen.set(key(o), o);
    },
    update: (_old, o) => lastSeen.set(key(o), o),
    delete: (o) => {
      if (!liveUids.delete(o.metadata?.uid ?? "")) deletesOfUnknown++;
      lastSeen.set(key(o), undefined);
    },
  });
  return {
    lastSeen,
    counts: () => ({ duplicateAdds, deletesOfUnknown }),
  };
}

describe("informer", () => {
  it("ends with the server's state after dropped watches and 410s during concurrent churn, without duplicate adds", async () => {
    await createNamespace(client, "churn");
    const configMaps = client.resource<ConfigMap>(Resources.ConfigMap);
    for (let i = 0; i < 10; i++)
      await configMaps.create({ metadata: { name: `seed-${i}`, namespace: "churn" } });
    const metrics = createRuntimeMetrics();
    const informer = new Informer<ConfigMap>({
      client,
      type: Resources.ConfigMap,
      namespace: "churn",
      metrics,
      backoff: { initialMs: 10, maxMs: 200 },
    });
    const seen = recordEvents(informer);
    informer.start();
    await informer.waitForSync();
    expect(informer.list()).toHaveLength(10);

    let churning = true;
    const disruptions = (async () => {
      let round = 0;
      while (churning) {
        if (round++ % 2 === 0) server.dropWatches();
        else server.compact();
        await new Promise((resolve) => setTimeout(resolve, 40));
      }
    })();
    const writers = Array.from({ length: 3 }, async (_, writer) => {
      for (let i = 0; i < 40; i++) {
        const name = `cm-${writer}-${i}`;
        await configMaps.create({ metadata: { name, namespace: "churn" }, data: { v: "0" } });
        await configMaps.patch(name, { data: { v: "1" } }, { namespace: "churn" });
        if (i % 3 === 0) await configMaps.delete(name, "churn");
        if (i % 5 === 0) {
          // Delete and recreate under the same name: a new uid.
          await configMaps.delete(`seed-${(writer * 3 + i) % 10}`, "churn").catch(() => {});
          await configMaps
            .create({
              metadata: { name: `seed-${(writer * 3 + i) % 10}`, namespace: "churn" },
              data: { w: `${writer}` },
            })
            .catch(() => {});
        }
      }
    });
    await Promise.all(writers);
    churning = false;
    await disruptions;

    const serverList = await (await client.typed()).core.listNamespacedConfigMap({ namespace: "churn" });
    const expected = rvByKey(serverList.items as KubeObject[]);
    await eventually("the informer cache matches the server", () => {
      const cached = rvByKey(informer.list());
      return cached.size === expected.size && [...expected].every(([k, rv]) => cached.get(k) === rv);
    });
    for (const [key, rv] of expected) expect(seen.lastSeen.get(key)?.metadata?.resourceVersion).toBe(rv);
    for (const [key, last] of seen.lastSeen) if (!expected.has(key)) expect(last).toBeUndefined();
    expect(seen.counts()).toEqual({ duplicateAdds: 0, deletesOfUnknown: 0 });
    expect(
      await metricSum(metrics, "stowage_informer_restarts_total", { resource: "configmaps" }),
    ).toBeGreaterThan(0);
    await informer.stop();
  });

  it("reports objects that vanished while it was not watching as deleted when a 410 forces a relist", async () => {
    await createNamespace(client, "relist");
    const configMaps = client.resource<ConfigMap>(Resources.ConfigMap);
    await configMaps.create({ metadata: { name: "stays", namespace: "relist" } });
    await configMaps.create({ metadata: { name: "goes", namespace: "relist" } });
    const metrics = createRuntimeMetrics();
    // Pages of one object: the relist follows continue tokens.
    const informer = new Informer<ConfigMap>({
      client,
      type: Resources.ConfigMap,
      namespace: "relist",
      metrics,
      pageSize: 1,
    });
    const deleted: string[] = [];
    const added: string[] = [];
    informer.addEventHandler({
      add: (o) => added.push(o.metadata?.name ?? ""),
      delete: (o) => deleted.push(o.metadata?.name ?? ""),
    });
    informer.start();
    await informer.waitForSync();
    await informer.stop();

    await configMaps.delete("goes", "relist");
    await configMaps.create({ metadata: { name: "new", namespace: "relist" } });
    server.compact();
    server.resetRequestLog();
    informer.start();
    await eventually(
      "the relist removed the deleted object",
      () => informer.get("relist/goes") === undefined,
    );
    expect(deleted).toEqual(["goes"]);
    expect(added.sort()).toEqual(["goes", "new", "stays"]);
    expect(informer.keys().sort()).toEqual(["relist/new", "relist/stays"]);
    const calls = server.requestLog().filter((r) => r.path.includes("/namespaces/relist/configmaps"));
    expect(calls.filter((r) => r.verb === "list")).toHaveLength(2);
    await informer.stop();
  });

  it("resumes from a bookmark's resourceVersion after a drop instead of relisting when history was compacted", async () => {
    await createNamespace(client, "quiet");
    await createNamespace(client, "busy");
    const configMaps = client.resource<ConfigMap>(Resources.ConfigMap);
    await configMaps.create({ metadata: { name: "first", namespace: "quiet" } });
    const informer = new Informer<ConfigMap>({
      client,
      type: Resources.ConfigMap,
      namespace: "quiet",
      metrics: createRuntimeMetrics(),
    });
    informer.start();
    await informer.waitForSync();
    // Changes elsewhere move the server's resourceVersion past anything this watch sees.
    let latest = "";
    for (let i = 0; i < 60; i++) {
      latest = (await configMaps.create({ metadata: { name: `other-${i}`, namespace: "busy" } })).metadata
        ?.resourceVersion as string;
    }
    await eventually(
      "a bookmark carries the informer to the latest resourceVersion",
      () => informer.resourceVersion === latest,
    );
    server.compact();
    server.resetRequestLog();
    server.dropWatches();
    await configMaps.create({ metadata: { name: "second", namespace: "quiet" } });
    await eventually(
      "the resumed watch delivers the new object",
      () => informer.get("quiet/second") !== undefined,
    );
    const verbs = server
      .requestLog()
      .filter((r) => r.path.includes("/namespaces/quiet/configmaps"))
      .map((r) => r.verb);
    expect(verbs).not.toContain("list");
    await informer.stop();
  });

  it("retries with growing backoff on its clock while the API server is down, and syncs once it is up", async () => {
    const port = await freePort();
    const kubeconfigPath = join(mkdtempSync(join(tmpdir(), "stowage-informer-")), "kubeconfig");
    writeFileSync(kubeconfigPath, server.kubeconfig.replace(new URL(server.url).host, `127.0.0.1:${port}`));
    const clock = new FakeClock();
    const metrics = createRuntimeMetrics();
    const informer = new Informer({
      client: KubeClient.load({ path: kubeconfigPath }),
      type: Resources.Namespace,
      clock,
      metrics,
      backoff: { initialMs: 100, maxMs: 400 },
    });
    informer.start();
    const delays: number[] = [];
    for (let i = 0; i < 4; i++) {
      await eventually("the informer waits out a backoff", () => clock.pendingSleeps().length === 1);
      delays.push(clock.pendingSleeps()[0]);
      await clock.advance(delays.at(-1)!);
    }
    expect(delays).toEqual([100, 200, 400, 400]);
    expect(informer.hasSynced()).toBe(false);
    const second = await startApiServer({ port });
    try {
      await eventually("the informer waits out a backoff", () => clock.pendingSleeps().length === 1);
      await clock.advance(clock.pendingSleeps()[0]);
      await informer.waitForSync();
      expect(informer.get("default")).toBeDefined();
      expect(await metricSum(metrics, "stowage_informer_restarts_total", { resource: "namespaces" })).toBe(5);
      await informer.stop();
    } finally {
      await second.stop();
    }
  });

  it("keeps only objects matching its label and field selectors", async () => {
    await createNamespace(client, "selectors");
    const configMaps = client.resource<ConfigMap>(Resources.ConfigMap);
    await configMaps.create({ metadata: { name: "a1", namespace: "selectors", labels: { app: "a" } } });
    await configMaps.create({ metadata: { name: "b1", namespace: "selectors", labels: { app: "b" } } });
    const byLabel = new Informer<ConfigMap>({
      client,
      type: Resources.ConfigMap,
      namespace: "selectors",
      labelSelector: "app=a",
      metrics: createRuntimeMetrics(),
    });
    const byField = new Informer<ConfigMap>({
      client,
      type: Resources.ConfigMap,
      fieldSelector: "metadata.name=b2",
      metrics: createRuntimeMetrics(),
    });
    byLabel.start();
    byField.start();
    await Promise.all([byLabel.waitForSync(), byField.waitForSync()]);
    await configMaps.create({ metadata: { name: "a2", namespace: "selectors", labels: { app: "a" } } });
    await configMaps.create({ metadata: { name: "b2", namespace: "selectors", labels: { app: "b" } } });
    await eventually("watch events arrive", () => byLabel.list().length === 2 && byField.list().length === 1);
    // A later object proves the non-matching ones were filtered rather than still in flight.
    await configMaps.create({ metadata: { name: "a3", namespace: "selectors", labels: { app: "a" } } });
    await eventually("a3 arrives", () => byLabel.get("selectors/a3") !== undefined);
    expect(byLabel.keys().sort()).toEqual(["selectors/a1", "selectors/a2", "selectors/a3"]);
    expect(byField.keys()).toEqual(["selectors/b2"]);
    await Promise.all([byLabel.stop(), byField.stop()]);
  });

  it("indexes by namespace and keys cluster-scoped objects by name", async () => {
    await createNamespace(client, "index-a");
    await createNamespace(client, "index-b");
    const configMaps = client.resource<ConfigMap>(Resources.ConfigMap);
    await configMaps.create({ metadata: { name: "x", namespace: "index-a" } });
    await configMaps.create({ metadata: { name: "y", namespace: "index-a" } });
    await configMaps.create({ metadata: { name: "x", namespace: "index-b" } });
    await client
      .resource(Resources.Node)
      .create({ metadata: { name: "gpu-node-1", labels: { gpu: "true" } } });
    const cms = new Informer<ConfigMap>({
      client,
      type: Resources.ConfigMap,
      metrics: createRuntimeMetrics(),
    });
    const nodes = new Informer({ client, type: Resources.Node, metrics: createRuntimeMetrics() });
    cms.start();
    nodes.start();
    await Promise.all([cms.waitForSync(), nodes.waitForSync()]);
    expect(cms.hasSynced()).toBe(true);
    expect(
      cms
        .byNamespace("index-a")
        .map((o) => o.metadata?.name)
        .sort(),
    ).toEqual(["x", "y"]);
    expect(cms.byNamespace("index-b").map((o) => o.metadata?.name)).toEqual(["x"]);
    expect(cms.get("index-b/x")?.metadata?.namespace).toBe("index-b");
    expect(nodes.get("gpu-node-1")?.metadata?.labels).toEqual({ gpu: "true" });
    nodes.addIndexer("gpu", (n) => (n.metadata?.labels?.gpu ? [n.metadata.labels.gpu] : []));
    expect(nodes.byIndex("gpu", "true").map((n) => n.metadata?.name)).toEqual(["gpu-node-1"]);
    await Promise.all([cms.stop(), nodes.stop()]);
  });
});
