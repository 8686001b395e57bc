import { setHeaderOptions } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TestApiServer } from "../../testkit/apiserver/index.ts";
import type { Json } from "../../testkit/apiserver/types.ts";
import { type Clients, clients, failure, group, startWithWidgets, widget, widgets } from "./helpers.ts";

let server: TestApiServer;
let api: Clients;
const merge = setHeaderOptions("Content-Type", "application/merge-patch+json");

beforeAll(async () => {
  server = await startWithWidgets();
  api = clients(server);
});

afterAll(async () => {
  await server.stop();
});

async function createNamespace(name: string, labels: Record<string, string> = {}) {
  return api.core.createNamespace({ body: { metadata: { name, labels } } });
}

describe("create", () => {
  it("sets uid, creationTimestamp and resourceVersion on a new object, and no generation on a kind that has none", async () => {
    const cm = await api.core.createNamespacedConfigMap({
      namespace: "default",
      body: { metadata: { name: "fresh", uid: "client-chosen", resourceVersion: "999" }, data: { a: "1" } },
    });
    expect(cm.metadata?.uid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(cm.metadata?.uid).not.toBe("client-chosen");
    expect(cm.metadata?.creationTimestamp).toBeInstanceOf(Date);
    expect(cm.metadata?.resourceVersion).toMatch(/^\d+$/);
    expect(cm.metadata?.resourceVersion).not.toBe("999");
    // ConfigMaps do not track a generation on a real server (custom resources and workloads do)
    expect(cm.metadata?.generation).toBeUndefined();
  });

  it("names an object from metadata.generateName", async () => {
    const created = await api.core.createNamespacedConfigMap({
      namespace: "default",
      body: { metadata: { generateName: "gen-" } },
    });
    expect(created.metadata?.name).toMatch(/^gen-[a-z0-9]{5}$/);
  });

  it("refuses a second object with the same name with 409 AlreadyExists", async () => {
    await api.custom.createNamespacedCustomObject({ ...widgets(), body: widget("twice") });
    const { code, status } = await failure(
      api.custom.createNamespacedCustomObject({ ...widgets(), body: widget("twice") }),
    );
    expect(code).toBe(409);
    expect(status).toMatchObject({
      kind: "Status",
      status: "Failure",
      reason: "AlreadyExists",
      code: 409,
      message: `widgets.${group} "twice" already exists`,
      details: { name: "twice", group, kind: "widgets" },
    });
  });

  it("refuses a namespaced object in a namespace that does not exist with 404", async () => {
    const { code, status } = await failure(
      api.core.createNamespacedConfigMap({ namespace: "nowhere", body: { metadata: { name: "lost" } } }),
    );
    expect(code).toBe(404);
    expect(status).toMatchObject({ reason: "NotFound", message: 'namespaces "nowhere" not found' });
  });

  it("creates and reads cluster-scoped objects", async () => {
    await api.core.createNode({
      body: { metadata: { name: "gpu-1", labels: { gpu: "true" } }, status: { capacity: { cpu: "8" } } },
    });
    const node = await api.core.readNode({ name: "gpu-1" });
    expect(node.metadata?.namespace).toBeUndefined();
    // nodes keep the status they are created with, like the real server
    expect(node.status?.capacity).toEqual({ cpu: "8" });
    const gadget = (await api.custom.createClusterCustomObject({
      group,
      version: "v1",
      plural: "gadgets",
      body: { apiVersion: `${group}/v1`, kind: "Gadget", metadata: { name: "g1" }, spec: { x: 1 } },
    })) as Json;
    expect(gadget.metadata.namespace).toBeUndefined();
  });
});

describe("update", () => {
  it("answers 409 Conflict to an update carrying a stale resourceVersion", async () => {
    const created = (await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: widget("contended"),
    })) as Json;
    const first = { ...created, spec: { ...created.spec, size: 2 } };
    await api.custom.replaceNamespacedCustomObject({ ...widgets(), name: "contended", body: first });
    const stale = { ...created, spec: { ...created.spec, size: 3 } };
    const { code, status } = await failure(
      api.custom.replaceNamespacedCustomObject({ ...widgets(), name: "contended", body: stale }),
    );
    expect(code).toBe(409);
    expect(status).toMatchObject({
      reason: "Conflict",
      message: `Operation cannot be fulfilled on widgets.${group} "contended": the object has been modified; please apply your changes to the latest version and try again`,
    });
  });

  it("updates unconditionally when the body has no resourceVersion", async () => {
    await api.core.createNamespacedConfigMap({
      namespace: "default",
      body: { metadata: { name: "unconditional" }, data: { a: "1" } },
    });
    const updated = await api.core.replaceNamespacedConfigMap({
      name: "unconditional",
      namespace: "default",
      body: { metadata: { name: "unconditional" }, data: { a: "2" } },
    });
    expect(updated.data).toEqual({ a: "2" });
  });

  it("keeps one global resourceVersion that every write increases and lists report", async () => {
    const a = await api.core.createNamespacedConfigMap({
      namespace: "default",
      body: { metadata: { name: "rv-a" } },
    });
    const b = await api.core.createNode({ body: { metadata: { name: "rv-node" } } });
    const list = await api.core.listNamespacedConfigMap({ namespace: "default" });
    expect(Number(b.metadata?.resourceVersion)).toBeGreaterThan(Number(a.metadata?.resourceVersion));
    expect(Number(list.metadata?.resourceVersion)).toBe(Number(b.metadata?.resourceVersion));
  });

  it("does not write (no new resourceVersion) when an update changes nothing", async () => {
    const created = await api.core.createNamespacedConfigMap({
      namespace: "default",
      body: { metadata: { name: "noop" }, data: { a: "1" } },
    });
    const same = await api.core.replaceNamespacedConfigMap({
      name: "noop",
      namespace: "default",
      body: created,
    });
    expect(same.metadata?.resourceVersion).toBe(created.metadata?.resourceVersion);
  });

  it("answers 404 to an update of an object that does not exist", async () => {
    const { code } = await failure(
      api.core.replaceNamespacedConfigMap({
        name: "ghost",
        namespace: "default",
        body: { metadata: { name: "ghost" } },
      }),
    );
    expect(code).toBe(404);
  });
});

describe("status subresource", () => {
  it("ignores status in writes to the main resource and everything but status in writes to /status", async () => {
    const created = (await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: { ...widget("isolated"), status: { phase: "FromCreate" } },
    })) as Json;
    expect(created.status).toBeUndefined();

    const withStatus = (await api.custom.replaceNamespacedCustomObjectStatus({
      ...widgets(),
      name: "isolated",
      body: {
        ...created,
        metadata: { ...created.metadata, labels: { sneaky: "yes" } },
        spec: { image: "changed", a: "x" },
        status: { phase: "Ready" },
      },
    })) as Json;
    expect(withStatus.status).toEqual({ phase: "Ready" });
    expect(withStatus.spec.image).toBe("nginx:1");
    expect(withStatus.metadata.labels).toBeUndefined();
    expect(withStatus.metadata.generation).toBe(1);

    const mainWrite = (await api.custom.replaceNamespacedCustomObject({
      ...widgets(),
      name: "isolated",
      body: { ...withStatus, spec: { ...withStatus.spec, size: 7 }, status: { phase: "Overwritten" } },
    })) as Json;
    expect(mainWrite.status).toEqual({ phase: "Ready" });
    expect(mainWrite.spec.size).toBe(7);
  });

  it("isolates status for built-in pods and starts them Pending", async () => {
    const pod = await api.core.createNamespacedPod({
      namespace: "default",
      body: {
        metadata: { name: "status-pod" },
        spec: {
          containers: [{ name: "main", image: "nginx:1" }],
          schedulingGates: [{ name: "stowage.dev/warm" }],
        },
        status: { phase: "Running" },
      },
    });
    expect(pod.status?.phase).toBe("Pending");
    expect(pod.spec?.schedulingGates).toEqual([{ name: "stowage.dev/warm" }]);
    const running = await api.core.replaceNamespacedPodStatus({
      name: "status-pod",
      namespace: "default",
      body: { ...pod, spec: { ...pod.spec!, nodeName: "sneaky" }, status: { phase: "Running" } },
    });
    expect(running.status?.phase).toBe("Running");
    expect(running.spec?.nodeName).toBeUndefined();
  });

  it("treats status as part of the main resource for CRDs without a status subresource", async () => {
    const created = (await api.custom.createClusterCustomObject({
      group,
      version: "v1",
      plural: "gadgets",
      body: {
        apiVersion: `${group}/v1`,
        kind: "Gadget",
        metadata: { name: "plain-status" },
        status: { ok: true },
      },
    })) as Json;
    expect(created.status).toEqual({ ok: true });
    const { code } = await failure(
      api.custom.replaceClusterCustomObjectStatus({
        group,
        version: "v1",
        plural: "gadgets",
        name: "plain-status",
        body: created,
      }),
    );
    expect(code).toBe(404);
  });

  it("increments metadata.generation only when the spec changes", async () => {
    const created = (await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: widget("generations"),
    })) as Json;
    expect(created.metadata.generation).toBe(1);
    const labelled = (await api.custom.patchNamespacedCustomObject(
      { ...widgets(), name: "generations", body: { metadata: { labels: { a: "b" } } } },
      merge,
    )) as Json;
    expect(labelled.metadata.generation).toBe(1);
    const statused = (await api.custom.patchNamespacedCustomObjectStatus(
      { ...widgets(), name: "generations", body: { status: { observedGeneration: 1 } } },
      merge,
    )) as Json;
    expect(statused.metadata.generation).toBe(1);
    const specced = (await api.custom.patchNamespacedCustomObject(
      { ...widgets(), name: "generations", body: { spec: { size: 9 } } },
      merge,
    )) as Json;
    expect(specced.metadata.generation).toBe(2);
  });
});

describe("delete", () => {
  it("answers a Success Status naming the object and forgets it when it has no finalizers", async () => {
    await api.core.createNamespacedConfigMap({
      namespace: "default",
      body: { metadata: { name: "doomed" } },
    });
    const response = await fetch(`${server.url}/api/v1/namespaces/default/configmaps/doomed`, {
      method: "DELETE",
    });
    expect(response.status).toBe(200);
    // a ConfigMap's delete answers a Status, as on a real server (pods and namespaces answer the object)
    expect(await response.json()).toMatchObject({
      kind: "Status",
      status: "Success",
      details: { name: "doomed", kind: "configmaps", uid: expect.any(String) },
    });
    expect(
      (await failure(api.core.readNamespacedConfigMap({ name: "doomed", namespace: "default" }))).code,
    ).toBe(404);
  });

  it("keeps an object with finalizers, marked for deletion, until the last finalizer is removed", async () => {
    await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: {
        ...widget("finalized"),
        metadata: { name: "finalized", finalizers: ["a.stowage.dev", "b.stowage.dev"] },
      },
    });
    await api.custom.deleteNamespacedCustomObject({ ...widgets(), name: "finalized" });
    const marked = (await api.custom.getNamespacedCustomObject({ ...widgets(), name: "finalized" })) as Json;
    expect(marked.metadata.deletionTimestamp).toBeTruthy();
    expect(marked.metadata.deletionGracePeriodSeconds).toBe(0);

    const added = await failure(
      api.custom.patchNamespacedCustomObject(
        {
          ...widgets(),
          name: "finalized",
          body: { metadata: { finalizers: ["a.stowage.dev", "b.stowage.dev", "c.stowage.dev"] } },
        },
        merge,
      ),
    );
    expect(added.code).toBe(422);

    await api.custom.patchNamespacedCustomObject(
      { ...widgets(), name: "finalized", body: { metadata: { finalizers: ["b.stowage.dev"] } } },
      merge,
    );
    expect(await api.custom.getNamespacedCustomObject({ ...widgets(), name: "finalized" })).toBeTruthy();
    await api.custom.patchNamespacedCustomObject(
      { ...widgets(), name: "finalized", body: { metadata: { finalizers: null } } },
      merge,
    );
    expect(
      (await failure(api.custom.getNamespacedCustomObject({ ...widgets(), name: "finalized" }))).code,
    ).toBe(404);
  });

  it("answers 409 when a delete precondition on the uid does not hold", async () => {
    await api.core.createNamespacedConfigMap({
      namespace: "default",
      body: { metadata: { name: "guarded" } },
    });
    const { code } = await failure(
      api.core.deleteNamespacedConfigMap({
        name: "guarded",
        namespace: "default",
        body: { preconditions: { uid: "not-it" } },
      }),
    );
    expect(code).toBe(409);
  });

  it("deletes a namespace's contents, then the namespace, waiting for finalizers inside it", async () => {
    await createNamespace("cascade");
    await api.core.createNamespacedConfigMap({
      namespace: "cascade",
      body: { metadata: { name: "inside" } },
    });
    await api.custom.createNamespacedCustomObject({
      ...widgets("cascade"),
      body: {
        ...widget("held", undefined, "cascade"),
        metadata: { name: "held", namespace: "cascade", finalizers: ["x.stowage.dev"] },
      },
    });
    await api.core.deleteNamespace({ name: "cascade" });
    const terminating = await api.core.readNamespace({ name: "cascade" });
    expect(terminating.status?.phase).toBe("Terminating");
    expect(terminating.metadata?.deletionTimestamp).toBeTruthy();
    const refused = await failure(
      api.core.createNamespacedConfigMap({ namespace: "cascade", body: { metadata: { name: "late" } } }),
    );
    expect(refused.code).toBe(403);

    await waitFor(
      async () =>
        (await failure(api.core.readNamespacedConfigMap({ name: "inside", namespace: "cascade" }))).code ===
        404,
    );
    const held = (await api.custom.getNamespacedCustomObject({
      ...widgets("cascade"),
      name: "held",
    })) as Json;
    expect(held.metadata.deletionTimestamp).toBeTruthy();
    expect((await api.core.readNamespace({ name: "cascade" })).metadata?.name).toBe("cascade");

    await api.custom.patchNamespacedCustomObject(
      { ...widgets("cascade"), name: "held", body: { metadata: { finalizers: null } } },
      merge,
    );
    await waitFor(async () => (await failure(api.core.readNamespace({ name: "cascade" }))).code === 404);
  });
});

async function waitFor(check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error("condition not reached");
}

describe("list", () => {
  beforeAll(async () => {
    await createNamespace("selectors");
    const labelled: [string, Record<string, string>][] = [
      ["s-gpu-a", { tier: "gpu", zone: "a" }],
      ["s-gpu-b", { tier: "gpu", zone: "b" }],
      ["s-cpu-a", { tier: "cpu", zone: "a" }],
      ["s-none", { zone: "c" }],
    ];
    for (const [name, labels] of labelled)
      await api.core.createNamespacedConfigMap({
        namespace: "selectors",
        body: { metadata: { name, labels } },
      });
  });

  const names = async (labelSelector?: string, fieldSelector?: string) =>
    (
      await api.core.listNamespacedConfigMap({ namespace: "selectors", labelSelector, fieldSelector })
    ).items.map((i) => i.metadata?.name);

  it("filters by every label selector operator", async () => {
    expect(await names("tier=gpu")).toEqual(["s-gpu-a", "s-gpu-b"]);
    expect(await names("tier==cpu")).toEqual(["s-cpu-a"]);
    expect(await names("tier!=gpu")).toEqual(["s-cpu-a", "s-none"]);
    expect(await names("zone in (a,c)")).toEqual(["s-cpu-a", "s-gpu-a", "s-none"]);
    expect(await names("zone notin (a)")).toEqual(["s-gpu-b", "s-none"]);
    expect(await names("tier")).toEqual(["s-cpu-a", "s-gpu-a", "s-gpu-b"]);
    expect(await names("!tier")).toEqual(["s-none"]);
    expect(await names("tier=gpu,zone=b")).toEqual(["s-gpu-b"]);
  });

  it("refuses a malformed label selector with 400", async () => {
    expect((await failure(names("tier in gpu"))).code).toBe(400);
  });

  it("filters by metadata field selectors with =, == and !=", async () => {
    expect(await names(undefined, "metadata.name=s-gpu-a")).toEqual(["s-gpu-a"]);
    expect(await names(undefined, "metadata.name==s-gpu-b")).toEqual(["s-gpu-b"]);
    expect(await names(undefined, "metadata.name!=s-gpu-a,metadata.namespace=selectors")).toEqual([
      "s-cpu-a",
      "s-gpu-b",
      "s-none",
    ]);
    const { code, status } = await failure(names(undefined, "data.foo=x"));
    expect(code).toBe(400);
    expect(status.message).toContain('"data.foo" is not a known field selector');
  });

  it("filters pods by spec.nodeName and events by involvedObject fields", async () => {
    for (const [name, nodeName] of [
      ["fs-1", "node-a"],
      ["fs-2", "node-b"],
      ["fs-3", undefined],
    ] as const) {
      await api.core.createNamespacedPod({
        namespace: "selectors",
        body: { metadata: { name }, spec: { nodeName, containers: [{ name: "c", image: "i" }] } },
      });
    }
    const onA = await api.core.listPodForAllNamespaces({ fieldSelector: "spec.nodeName=node-a" });
    expect(onA.items.map((p) => p.metadata?.name)).toEqual(["fs-1"]);
    const unscheduled = await api.core.listNamespacedPod({
      namespace: "selectors",
      fieldSelector: "spec.nodeName=",
    });
    expect(unscheduled.items.map((p) => p.metadata?.name)).toEqual(["fs-3"]);

    await api.core.createNamespacedEvent({
      namespace: "selectors",
      body: {
        metadata: { name: "ev-1" },
        involvedObject: { kind: "Pod", name: "fs-1", namespace: "selectors", uid: "u1" },
        reason: "A",
      },
    });
    await api.core.createNamespacedEvent({
      namespace: "selectors",
      body: {
        metadata: { name: "ev-2" },
        involvedObject: { kind: "Node", name: "fs-1", uid: "u2" },
        reason: "B",
      },
    });
    const events = await api.core.listNamespacedEvent({
      namespace: "selectors",
      fieldSelector: "involvedObject.kind=Pod,involvedObject.name=fs-1,involvedObject.uid=u1",
    });
    expect(events.items.map((e) => e.metadata?.name)).toEqual(["ev-1"]);
  });

  it("pages with limit and continue until every object is seen once", async () => {
    const seen: string[] = [];
    let token: string | undefined;
    let pages = 0;
    do {
      const page = await api.core.listNamespacedConfigMap({
        namespace: "selectors",
        limit: 3,
        _continue: token,
      });
      seen.push(...page.items.map((i) => i.metadata!.name!));
      token = page.metadata?._continue;
      if (token) expect(page.metadata?.remainingItemCount).toBeGreaterThan(0);
      pages++;
    } while (token);
    expect(pages).toBe(2);
    expect(seen).toEqual(["s-cpu-a", "s-gpu-a", "s-gpu-b", "s-none"]);
  });

  it("serves later pages from the first page's snapshot, and expires the token after compaction", async () => {
    await createNamespace("paging");
    for (const name of ["p-a", "p-b", "p-c", "p-d"])
      await api.core.createNamespacedConfigMap({ namespace: "paging", body: { metadata: { name } } });
    const first = await api.core.listNamespacedConfigMap({ namespace: "paging", limit: 2 });
    expect(first.items.map((i) => i.metadata?.name)).toEqual(["p-a", "p-b"]);
    await api.core.deleteNamespacedConfigMap({ name: "p-d", namespace: "paging" });
    await api.core.createNamespacedConfigMap({ namespace: "paging", body: { metadata: { name: "p-e" } } });
    await api.core.patchNamespacedConfigMap(
      { name: "p-c", namespace: "paging", body: { data: { changed: "yes" } } },
      setHeaderOptions("Content-Type", "application/merge-patch+json"),
    );
    const second = await api.core.listNamespacedConfigMap({
      namespace: "paging",
      limit: 2,
      _continue: first.metadata?._continue,
    });
    expect(second.items.map((i) => i.metadata?.name)).toEqual(["p-c", "p-d"]);
    expect(second.items[0].data).toBeUndefined();
    expect(second.metadata?.resourceVersion).toBe(first.metadata?.resourceVersion);

    const again = await api.core.listNamespacedConfigMap({ namespace: "paging", limit: 2 });
    await api.core.createNamespacedConfigMap({ namespace: "paging", body: { metadata: { name: "p-f" } } });
    server.compact();
    const { code, status } = await failure(
      api.core.listNamespacedConfigMap({
        namespace: "paging",
        limit: 2,
        _continue: again.metadata?._continue,
      }),
    );
    expect(code).toBe(410);
    expect(status.reason).toBe("Expired");
  });

  it("lists the state at a revision with resourceVersionMatch=Exact", async () => {
    await createNamespace("exact");
    const before = await api.core.createNamespacedConfigMap({
      namespace: "exact",
      body: { metadata: { name: "x-1" } },
    });
    await api.core.createNamespacedConfigMap({ namespace: "exact", body: { metadata: { name: "x-2" } } });
    const atBefore = await api.core.listNamespacedConfigMap({
      namespace: "exact",
      resourceVersion: before.metadata?.resourceVersion,
      resourceVersionMatch: "Exact",
    });
    expect(atBefore.items.map((i) => i.metadata?.name)).toEqual(["x-1"]);
    expect(atBefore.metadata?.resourceVersion).toBe(before.metadata?.resourceVersion);
    const notOlder = await api.core.listNamespacedConfigMap({
      namespace: "exact",
      resourceVersion: before.metadata?.resourceVersion,
      resourceVersionMatch: "NotOlderThan",
    });
    expect(notOlder.items.map((i) => i.metadata?.name)).toEqual(["x-1", "x-2"]);
  });

  it("lists across all namespaces", async () => {
    await api.core.createNamespacedConfigMap({
      namespace: "kube-system",
      body: { metadata: { name: "everywhere", labels: { spread: "yes" } } },
    });
    await api.core.createNamespacedConfigMap({
      namespace: "selectors",
      body: { metadata: { name: "everywhere", labels: { spread: "yes" } } },
    });
    const all = await api.core.listConfigMapForAllNamespaces({ labelSelector: "spread=yes" });
    expect(all.items.map((i) => `${i.metadata?.namespace}/${i.metadata?.name}`)).toEqual([
      "kube-system/everywhere",
      "selectors/everywhere",
    ]);
  });
});

describe("errors", () => {
  it("answers unknown resources and objects with NotFound Status objects", async () => {
    const missing = await failure(api.custom.getNamespacedCustomObject({ ...widgets(), name: "nope" }));
    expect(missing.code).toBe(404);
    expect(missing.status).toMatchObject({
      kind: "Status",
      apiVersion: "v1",
      reason: "NotFound",
      message: `widgets.${group} "nope" not found`,
    });
    const response = await fetch(`${server.url}/apis/${group}/v1/namespaces/default/sprockets`);
    expect(response.status).toBe(404);
    expect(await response.json()).toMatchObject({ kind: "Status", reason: "NotFound" });
  });

  it("answers a POST to a named object with 405 MethodNotAllowed", async () => {
    const response = await fetch(`${server.url}/api/v1/namespaces/default/configmaps/x`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    expect(response.status).toBe(405);
    expect(await response.json()).toMatchObject({ reason: "MethodNotAllowed", code: 405 });
  });
});
