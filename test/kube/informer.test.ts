import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { KubeClient, KubeObject } from "../../src/kube/client.ts";
import { Resources } from "../../src/kube/client.ts";
import { Informer } from "../../src/kube/informer.ts";
import { createRuntimeMetrics } from "../../src/metrics.ts";
import { eventually as eventuallyValue } from "../support/eventually.ts";
import { cuttableClient } from "./apiFaults.ts";
import { FakeClock } from "./fakeClock.ts";
import {
  createNamespace,
  eventually,
  metricSum,
  rvByKey,
  startCluster,
  type TestCluster,
} from "./helpers.ts";

interface ConfigMap extends KubeObject {
  data?: Record<string, string>;
}

let cluster: TestCluster;
let client: KubeClient;

beforeAll(async () => {
  ({ cluster, client } = await startCluster({
    // ConfigMaps bypass the real apiserver's watch cache, so a watch resuming from a compacted
    // resourceVersion gets 410 Gone from etcd; the watch cache would serve it from memory.
    controlPlane: { apiserverFlags: ["--watch-cache-sizes=configmaps#0"] },
  }));
});

afterAll(async () => {
  await cluster?.stop();
});

/** A real cluster publishes this ConfigMap into every namespace (the root CA publisher). */
const ROOT_CA = "kube-root-ca.crt";
const withoutRootCa = (names: string[]) => names.filter((name) => name !== ROOT_CA);

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
    // The informer's connections pass through a proxy the test cuts; the writers' do not.
    const watcher = await cuttableClient(cluster);
    // A list or watch whose connection hangs (seen once in a CI run with three busy loops: the
    // cache three events behind the server for 30 s) is given up after 10 s, as the product's
    // own deadlines do after 70 s (lists) and 120 s (silent watches).
    watcher.client.requestTimeoutMs = 10_000;
    const informer = new Informer<ConfigMap>({
      client: watcher.client,
      type: Resources.ConfigMap,
      namespace: "churn",
      metrics,
      backoff: { initialMs: 10, maxMs: 200 },
      watchInactivityMs: 10_000,
    });
    const seen = recordEvents(informer);
    await cluster.resetRequestLog();
    informer.start();
    await informer.waitForSync();
    expect(withoutRootCa(informer.keys().map((key) => key.split("/")[1]))).toHaveLength(10);

    let churning = true;
    const disruptions = (async () => {
      let round = 0;
      while (churning) {
        if (round++ % 2 === 0) watcher.proxy.dropConnections();
        else await cluster.compact();
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

    // Compared with the server's list of the moment, not one taken once: the controller-manager
    // publishes kube-root-ca.crt into the namespace when it gets to it, which on a busy machine
    // can be after the writers are done.
    const expected = await eventuallyValue(
      "the informer cache matches the server",
      async () => {
        const serverList = await (await client.typed()).core.listNamespacedConfigMap({ namespace: "churn" });
        const server = rvByKey(serverList.items as KubeObject[]);
        const cached = rvByKey(informer.list());
        const differing = [...new Set([...server.keys(), ...cached.keys()])].filter(
          (key) => server.get(key) !== cached.get(key),
        );
        if (differing.length === 0) return server;
        const shown = differing
          .slice(0, 5)
          .map((key) => `${key}: server ${server.get(key) ?? "none"}, cache ${cached.get(key) ?? "none"}`);
        throw new Error(`${differing.length} differ (${shown.join("; ")})`);
      },
      30_000,
    );
    for (const [key, rv] of expected) expect(seen.lastSeen.get(key)?.metadata?.resourceVersion).toBe(rv);
    for (const [key, last] of seen.lastSeen) if (!expected.has(key)) expect(last).toBeUndefined();
    expect(seen.counts()).toEqual({ duplicateAdds: 0, deletesOfUnknown: 0 });
    expect(
      await metricSum(metrics, "stowage_informer_restarts_total", { resource: "configmaps" }),
    ).toBeGreaterThan(0);
    // Both disruptions happened: resumed watches, and relists after a 410.
    const verbs = (await cluster.requestLog())
      .filter((r) => r.path.endsWith("/namespaces/churn/configmaps"))
      .map((r) => r.verb);
    expect(verbs.filter((verb) => verb === "list").length).toBeGreaterThan(1);
    expect(verbs.filter((verb) => verb === "watch").length).toBeGreaterThan(1);
    await informer.stop();
    await watcher.stop();
  });

  it("drops an object deleted while it watches on that watch's DELETE event alone, with no relist", async () => {
    await createNamespace(client, "deletes");
    const configMaps = client.resource<ConfigMap>(Resources.ConfigMap);
    await configMaps.create({ metadata: { name: "doomed", namespace: "deletes" } });
    await configMaps.create({ metadata: { name: "stays", namespace: "deletes" } });
    const informer = new Informer<ConfigMap>({
      client,
      type: Resources.ConfigMap,
      namespace: "deletes",
      metrics: createRuntimeMetrics(),
    });
    const seen = recordEvents(informer);
    await cluster.resetRequestLog();
    informer.start();
    await informer.waitForSync();
    expect(seen.lastSeen.get("deletes/doomed")).toBeDefined();

    await configMaps.delete("doomed", "deletes");
    await eventually(
      "the delete handler saw doomed go",
      () => seen.lastSeen.get("deletes/doomed") === undefined,
    );
    expect(informer.keys()).not.toContain("deletes/doomed");
    expect(informer.keys()).toContain("deletes/stays");
    expect(seen.counts()).toEqual({ duplicateAdds: 0, deletesOfUnknown: 0 });
    // One list at the start: the delete came from the watch, not from a relist that repaired it.
    const lists = (await cluster.requestLog()).filter(
      (r) => r.path.endsWith("/namespaces/deletes/configmaps") && r.verb === "list",
    );
    expect(lists).toHaveLength(1);
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
    await cluster.compact();
    await cluster.resetRequestLog();
    informer.start();
    await eventually(
      "the relist removed the deleted object",
      () => informer.get("relist/goes") === undefined,
    );
    expect(deleted).toEqual(["goes"]);
    expect(withoutRootCa(added).sort()).toEqual(["goes", "new", "stays"]);
    expect(withoutRootCa(informer.keys().map((key) => key.split("/")[1])).sort()).toEqual(["new", "stays"]);
    // One relist, one page per object.
    const calls = (await cluster.requestLog()).filter((r) =>
      r.path.includes("/namespaces/relist/configmaps"),
    );
    const objects = (await configMaps.list({ namespace: "relist" })).items.length;
    expect(calls.filter((r) => r.verb === "list")).toHaveLength(objects);
    await informer.stop();
  });

  it("resumes from a bookmark's resourceVersion after a drop instead of relisting when history was compacted", async () => {
    await createNamespace(client, "quiet");
    await createNamespace(client, "busy");
    // Secrets, which the real apiserver keeps in its watch cache: bookmarks come from there. Its
    // cache also keeps the history compaction drops from etcd, so on the real server this proves
    // bookmarks arrive and a drop resumes without a relist; that the bookmark's resourceVersion is
    // what survives compaction is shown by the double.
    const secrets = client.resource(Resources.Secret);
    await secrets.create({ metadata: { name: "first", namespace: "quiet" } });
    const watcher = await cuttableClient(cluster);
    const informer = new Informer({
      client: watcher.client,
      type: Resources.Secret,
      namespace: "quiet",
      metrics: createRuntimeMetrics(),
      // The real apiserver sends a bookmark 2 s before a watch's timeout (and once a minute).
      watchTimeoutSeconds: 5,
    });
    informer.start();
    await informer.waitForSync();
    // Changes elsewhere move the server's resourceVersion past anything this watch sees.
    let latest = "";
    for (let i = 0; i < 60; i++) {
      latest = (await secrets.create({ metadata: { name: `other-${i}`, namespace: "busy" } })).metadata
        ?.resourceVersion as string;
    }
    // resourceVersions are opaque to clients; both servers here use etcd-style integers.
    await eventually(
      "a bookmark carries the informer to the latest resourceVersion",
      () => BigInt(informer.resourceVersion ?? "0") >= BigInt(latest),
    );
    await cluster.compact();
    await cluster.resetRequestLog();
    watcher.proxy.dropConnections();
    await secrets.create({ metadata: { name: "second", namespace: "quiet" } });
    await eventually(
      "the resumed watch delivers the new object",
      () => informer.get("quiet/second") !== undefined,
    );
    const verbs = (await cluster.requestLog())
      .filter((r) => r.path.includes("/namespaces/quiet/secrets"))
      .map((r) => r.verb);
    expect(verbs).toContain("watch");
    expect(verbs).not.toContain("list");
    await informer.stop();
    await watcher.stop();
  });

  it("retries with growing backoff on its clock while the API server is down, and syncs once it is up", async () => {
    // The API's address refuses connections until the proxy in front of it comes up.
    const unreachable = await cuttableClient(cluster, { startDown: true });
    const clock = new FakeClock();
    const metrics = createRuntimeMetrics();
    const informer = new Informer({
      client: unreachable.client,
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
    await unreachable.proxy.up();
    try {
      await eventually("the informer waits out a backoff", () => clock.pendingSleeps().length === 1);
      await clock.advance(clock.pendingSleeps()[0]);
      await informer.waitForSync();
      expect(informer.get("default")).toBeDefined();
      expect(await metricSum(metrics, "stowage_informer_restarts_total", { resource: "namespaces" })).toBe(5);
      await informer.stop();
    } finally {
      await unreachable.stop();
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
    const names = (namespace: string) =>
      withoutRootCa(cms.byNamespace(namespace).map((o) => o.metadata?.name ?? "")).sort();
    expect(names("index-a")).toEqual(["x", "y"]);
    expect(names("index-b")).toEqual(["x"]);
    expect(cms.get("index-b/x")?.metadata?.namespace).toBe("index-b");
    expect(nodes.get("gpu-node-1")?.metadata?.labels).toEqual({ gpu: "true" });
    nodes.addIndexer("gpu", (n) => (n.metadata?.labels?.gpu ? [n.metadata.labels.gpu] : []));
    expect(nodes.byIndex("gpu", "true").map((n) => n.metadata?.name)).toEqual(["gpu-node-1"]);
    await Promise.all([cms.stop(), nodes.stop()]);
  });
});
