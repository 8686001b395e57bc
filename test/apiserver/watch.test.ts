import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startApiServer, type TestApiServer } from "../../testkit/apiserver/index.ts";
import type { Json } from "../../testkit/apiserver/types.ts";
import { k8sBin } from "../../testkit/k8sTools.ts";
import { type Clients, clients, startWithWidgets, widget, widgets } from "./helpers.ts";

interface Seen {
  type: string;
  name?: string;
  rv?: string;
  object: Json;
}

/** One client-node watch, recording every event it delivers. */
class Recorder {
  readonly events: Seen[] = [];
  ended: Error | null | undefined = undefined;
  private controller?: AbortController;
  private readonly waiters: (() => void)[] = [];

  static async start(
    kc: k8s.KubeConfig,
    path: string,
    query: Record<string, string | number | boolean | undefined>,
  ): Promise<Recorder> {
    const recorder = new Recorder();
    recorder.controller = await new k8s.Watch(kc).watch(
      path,
      query,
      (type, object) => {
        recorder.events.push({
          type,
          name: object?.metadata?.name,
          rv: object?.metadata?.resourceVersion,
          object,
        });
        recorder.wake();
      },
      (err) => {
        recorder.ended = err ?? null;
        recorder.wake();
      },
    );
    return recorder;
  }

  private wake(): void {
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  async until(check: () => boolean): Promise<void> {
    const deadline = Date.now() + 10_000;
    while (!check()) {
      if (Date.now() > deadline)
        throw new Error(`watch condition not met; saw ${JSON.stringify(this.summary())}`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 100);
      });
    }
  }

  untilCount(n: number): Promise<void> {
    return this.until(() => this.events.length >= n);
  }

  summary(): string[] {
    return this.events.map((e) => `${e.type} ${e.name ?? ""}`.trim());
  }

  stop(): void {
    this.controller?.abort();
  }
}

let server: TestApiServer;
let api: Clients;
let cacheDir: string;

beforeAll(async () => {
  server = await startWithWidgets({ bookmarkIntervalMs: 100 });
  api = clients(server);
  cacheDir = mkdtempSync(join(tmpdir(), "stowage-kubectl-watch-"));
});

afterAll(async () => {
  rmSync(cacheDir, { recursive: true, force: true });
  await server.stop();
});

const cmPath = (ns: string) => `/api/v1/namespaces/${ns}/configmaps`;

async function namespace(name: string): Promise<void> {
  await api.core.createNamespace({ body: { metadata: { name } } });
}

describe("watch", () => {
  it("replays current objects as ADDED when no resourceVersion is given, then streams changes", async () => {
    await namespace("w-replay");
    await api.core.createNamespacedConfigMap({
      namespace: "w-replay",
      body: { metadata: { name: "before" } },
    });
    const watch = await Recorder.start(api.kc, cmPath("w-replay"), {});
    await watch.untilCount(1);
    await api.core.createNamespacedConfigMap({
      namespace: "w-replay",
      body: { metadata: { name: "after" } },
    });
    await api.core.patchNamespacedConfigMap(
      { name: "after", namespace: "w-replay", body: { data: { a: "1" } } },
      k8s.setHeaderOptions("Content-Type", "application/merge-patch+json"),
    );
    await api.core.deleteNamespacedConfigMap({ name: "before", namespace: "w-replay" });
    await watch.untilCount(4);
    watch.stop();
    expect(watch.summary()).toEqual(["ADDED before", "ADDED after", "MODIFIED after", "DELETED before"]);
    const rvs = watch.events.slice(1).map((e) => Number(e.rv));
    expect(rvs).toEqual([...rvs].sort((a, b) => a - b));
  });

  it("resumes from a resourceVersion with exactly the events after it and no duplicates", async () => {
    await namespace("w-resume");
    const first = await api.core.createNamespacedConfigMap({
      namespace: "w-resume",
      body: { metadata: { name: "one" } },
    });
    await api.core.createNamespacedConfigMap({ namespace: "w-resume", body: { metadata: { name: "two" } } });
    await api.core.replaceNamespacedConfigMap({
      name: "one",
      namespace: "w-resume",
      body: { metadata: { name: "one" }, data: { x: "y" } },
    });
    const watch = await Recorder.start(api.kc, cmPath("w-resume"), {
      resourceVersion: first.metadata?.resourceVersion,
    });
    await watch.untilCount(2);
    await api.core.createNamespacedConfigMap({
      namespace: "w-resume",
      body: { metadata: { name: "three" } },
    });
    await watch.untilCount(3);
    watch.stop();
    expect(watch.summary()).toEqual(["ADDED two", "MODIFIED one", "ADDED three"]);
    expect(new Set(watch.events.map((e) => e.rv)).size).toBe(3);
  });

  it("sends BOOKMARK events carrying only kind, apiVersion and the current resourceVersion when asked", async () => {
    const list = await api.core.listNamespacedConfigMap({ namespace: "default" });
    const watch = await Recorder.start(api.kc, cmPath("default"), {
      resourceVersion: list.metadata?.resourceVersion,
      allowWatchBookmarks: true,
    });
    await watch.until(() => watch.events.some((e) => e.type === "BOOKMARK"));
    watch.stop();
    const bookmark = watch.events.find((e) => e.type === "BOOKMARK")!;
    expect(bookmark.object).toEqual({
      kind: "ConfigMap",
      apiVersion: "v1",
      metadata: { resourceVersion: expect.stringMatching(/^\d+$/) },
    });

    const quiet = await Recorder.start(api.kc, cmPath("default"), {
      resourceVersion: list.metadata?.resourceVersion,
      timeoutSeconds: 1,
    });
    await quiet.until(() => quiet.ended !== undefined);
    expect(quiet.events.filter((e) => e.type === "BOOKMARK")).toEqual([]);
  });

  it("answers a watch from a compacted resourceVersion with one 410 Expired ERROR event, after which a relist works", async () => {
    await namespace("w-gone");
    const old = await api.core.createNamespacedConfigMap({
      namespace: "w-gone",
      body: { metadata: { name: "old" } },
    });
    await api.core.createNamespacedConfigMap({ namespace: "w-gone", body: { metadata: { name: "newer" } } });
    server.compact();
    const watch = await Recorder.start(api.kc, cmPath("w-gone"), {
      resourceVersion: old.metadata?.resourceVersion,
    });
    await watch.until(() => watch.ended !== undefined);
    expect(watch.events).toHaveLength(1);
    expect(watch.events[0].type).toBe("ERROR");
    expect(watch.events[0].object).toMatchObject({
      kind: "Status",
      apiVersion: "v1",
      status: "Failure",
      code: 410,
      reason: "Expired",
      message: expect.stringMatching(
        new RegExp(`^too old resource version: ${old.metadata?.resourceVersion} \\(\\d+\\)$`),
      ),
    });

    const relist = await api.core.listNamespacedConfigMap({ namespace: "w-gone" });
    expect(relist.items.map((i) => i.metadata?.name)).toEqual(["newer", "old"]);
    const resumed = await Recorder.start(api.kc, cmPath("w-gone"), {
      resourceVersion: relist.metadata?.resourceVersion,
    });
    await api.core.createNamespacedConfigMap({ namespace: "w-gone", body: { metadata: { name: "latest" } } });
    await resumed.untilCount(1);
    resumed.stop();
    expect(resumed.summary()).toEqual(["ADDED latest"]);
  });

  it("replays state then marks its end with an annotated BOOKMARK for sendInitialEvents (watch-list)", async () => {
    await namespace("w-list");
    await api.core.createNamespacedConfigMap({
      namespace: "w-list",
      body: { metadata: { name: "existing" } },
    });
    const watch = await Recorder.start(api.kc, cmPath("w-list"), {
      sendInitialEvents: true,
      resourceVersionMatch: "NotOlderThan",
      allowWatchBookmarks: true,
    });
    await watch.untilCount(2);
    await api.core.createNamespacedConfigMap({ namespace: "w-list", body: { metadata: { name: "later" } } });
    await watch.until(() => watch.events.some((e) => e.name === "later"));
    watch.stop();
    expect(
      watch
        .summary()
        .filter((e) => e !== "BOOKMARK")
        .slice(0, 2),
    ).toEqual(["ADDED existing", "ADDED later"]);
    expect(watch.events[1]).toMatchObject({
      type: "BOOKMARK",
      object: { metadata: { annotations: { "k8s.io/initial-events-end": "true" } } },
    });
  });

  it("streams one-row Tables to kubectl get -w", async () => {
    const child = spawn(
      k8sBin("kubectl"),
      [
        "--kubeconfig",
        server.kubeconfigPath,
        "--cache-dir",
        cacheDir,
        "get",
        "configmaps",
        "-n",
        "w-table",
        "-w",
        "--output-watch-events",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    try {
      await namespace("w-table");
      let output = "";
      // Wait for whole rows: kubectl may write a row's start and end in separate chunks.
      const seen = (text: RegExp) =>
        new Promise<void>((resolve, reject) => {
          const check = () => {
            if (text.test(output)) resolve();
          };
          child.stdout.on("data", (chunk) => {
            output += chunk;
            check();
          });
          child.once("exit", () => reject(new Error(`kubectl exited; output so far: ${output}`)));
          check();
        });
      const appeared = seen(/ADDED\s+watched\s+\d+s\n/);
      await api.core.createNamespacedConfigMap({
        namespace: "w-table",
        body: { metadata: { name: "watched" }, data: { a: "1" } },
      });
      await appeared;
      const modified = seen(/MODIFIED\s+watched\s+\d+s\n/);
      await api.core.patchNamespacedConfigMap(
        { name: "watched", namespace: "w-table", body: { data: { b: "2" } } },
        k8s.setHeaderOptions("Content-Type", "application/merge-patch+json"),
      );
      await modified;
      expect(output).toMatch(/EVENT\s+NAME\s+AGE/);
      expect(output).toMatch(/ADDED\s+watched\s+\d+s/);
      expect(output).toMatch(/MODIFIED\s+watched\s+\d+s/);
    } finally {
      child.kill("SIGTERM");
    }
  });

  it("closes every open watch stream on dropWatches()", async () => {
    const a = await Recorder.start(api.kc, cmPath("default"), {});
    const b = await Recorder.start(api.kc, `/apis/test.stowage.dev/v1/namespaces/default/widgets`, {});
    server.dropWatches();
    await a.until(() => a.ended !== undefined);
    await b.until(() => b.ended !== undefined);
    expect(a.ended === null || a.ended instanceof Error).toBe(true);
    expect(b.ended === null || b.ended instanceof Error).toBe(true);
  });

  it("ends the stream after timeoutSeconds", async () => {
    const watch = await Recorder.start(api.kc, cmPath("default"), {
      timeoutSeconds: 1,
      resourceVersion: String(0),
    });
    await watch.until(() => watch.ended !== undefined);
    expect(watch.ended).toBeNull();
  });

  it("sends DELETED when an object stops matching the label selector and ADDED when it matches again", async () => {
    await namespace("w-labels");
    await api.core.createNamespacedConfigMap({
      namespace: "w-labels",
      body: { metadata: { name: "moving", labels: { warm: "yes" } } },
    });
    await api.core.createNamespacedConfigMap({
      namespace: "w-labels",
      body: { metadata: { name: "other", labels: { warm: "no" } } },
    });
    const watch = await Recorder.start(api.kc, cmPath("w-labels"), { labelSelector: "warm=yes" });
    await watch.untilCount(1);
    const relabel = (warm: string) =>
      api.core.patchNamespacedConfigMap(
        { name: "moving", namespace: "w-labels", body: { metadata: { labels: { warm } } } },
        k8s.setHeaderOptions("Content-Type", "application/merge-patch+json"),
      );
    await relabel("no");
    await api.core.patchNamespacedConfigMap(
      { name: "other", namespace: "w-labels", body: { data: { ignored: "true" } } },
      k8s.setHeaderOptions("Content-Type", "application/merge-patch+json"),
    );
    await relabel("yes");
    await watch.untilCount(3);
    watch.stop();
    expect(watch.summary()).toEqual(["ADDED moving", "DELETED moving", "ADDED moving"]);
  });

  it("filters watches by field selector", async () => {
    await namespace("w-fields");
    const watch = await Recorder.start(api.kc, "/api/v1/pods", { fieldSelector: "spec.nodeName=node-w" });
    for (const [name, nodeName] of [
      ["p1", "node-x"],
      ["p2", "node-w"],
    ])
      await api.core.createNamespacedPod({
        namespace: "w-fields",
        body: { metadata: { name }, spec: { nodeName, containers: [{ name: "c", image: "i" }] } },
      });
    await watch.untilCount(1);
    watch.stop();
    expect(watch.summary()).toEqual(["ADDED p2"]);
  });

  it("reports the deletion of an object whose last finalizer was removed as DELETED", async () => {
    const created = (await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: { ...widget("w-final"), metadata: { name: "w-final", finalizers: ["stowage.dev/x"] } },
    })) as Json;
    const watch = await Recorder.start(api.kc, "/apis/test.stowage.dev/v1/namespaces/default/widgets", {
      resourceVersion: created.metadata.resourceVersion,
    });
    await api.custom.deleteNamespacedCustomObject({ ...widgets(), name: "w-final" });
    await api.custom.patchNamespacedCustomObject(
      { ...widgets(), name: "w-final", body: { metadata: { finalizers: null } } },
      k8s.setHeaderOptions("Content-Type", "application/merge-patch+json"),
    );
    await watch.untilCount(2);
    watch.stop();
    expect(watch.summary()).toEqual(["MODIFIED w-final", "DELETED w-final"]);
    expect(watch.events[0].object.metadata.deletionTimestamp).toBeTruthy();
    expect(Number(watch.events[1].rv)).toBeGreaterThan(Number(watch.events[0].rv));
  });
});

describe("watch history", () => {
  it("expires resourceVersions older than the retained history with 410", async () => {
    const small = await startApiServer({ historyLimit: 3 });
    try {
      const smallApi = clients(small);
      const first = await smallApi.core.createNamespacedConfigMap({
        namespace: "default",
        body: { metadata: { name: "h0" } },
      });
      for (let i = 1; i <= 4; i++)
        await smallApi.core.createNamespacedConfigMap({
          namespace: "default",
          body: { metadata: { name: `h${i}` } },
        });
      const tooOld = await Recorder.start(smallApi.kc, cmPath("default"), {
        resourceVersion: first.metadata?.resourceVersion,
      });
      await tooOld.until(() => tooOld.ended !== undefined);
      expect(tooOld.events.map((e) => [e.type, e.object.code])).toEqual([["ERROR", 410]]);

      const list = await smallApi.core.listNamespacedConfigMap({ namespace: "default" });
      const recent = await Recorder.start(smallApi.kc, cmPath("default"), {
        resourceVersion: String(Number(list.metadata?.resourceVersion) - 2),
      });
      await recent.untilCount(2);
      recent.stop();
      expect(recent.summary()).toEqual(["ADDED h3", "ADDED h4"]);
    } finally {
      await small.stop();
    }
  });

  it("lets a client-node informer relist after 410 and keep seeing new objects", async () => {
    await namespace("w-informer");
    const listFn = () => api.core.listNamespacedConfigMap({ namespace: "w-informer" });
    const informer = k8s.makeInformer(api.kc, cmPath("w-informer"), listFn);
    const added: string[] = [];
    informer.on("add", (obj) => added.push(obj.metadata!.name!));
    await informer.start();
    try {
      await api.core.createNamespacedConfigMap({
        namespace: "w-informer",
        body: { metadata: { name: "first" } },
      });
      await waitFor(() => added.includes("first"));
      informer.on("error", () => {
        // the informer reports the drop; restart it as a controller would
        setTimeout(() => informer.start(), 10);
      });
      server.compact();
      server.dropWatches();
      await api.core.createNamespacedConfigMap({
        namespace: "w-informer",
        body: { metadata: { name: "second" } },
      });
      await waitFor(() => added.includes("second"));
      expect(
        informer
          .list()
          .map((o) => o.metadata?.name)
          .sort(),
      ).toEqual(["first", "second"]);
    } finally {
      await informer.stop();
    }
  });
});

async function waitFor(check: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !check(); i++) await new Promise((resolve) => setTimeout(resolve, 20));
  if (!check()) throw new Error("condition not reached");
}
