import { setHeaderOptions } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApiError, type TestApiServer } from "../../testkit/apiserver/index.ts";
import type { Json } from "../../testkit/apiserver/types.ts";
import { type Clients, clients, failure, startWithWidgets, widget, widgets } from "./helpers.ts";

let server: TestApiServer;
let api: Clients;
const mergeType = setHeaderOptions("Content-Type", "application/merge-patch+json");
const strategicType = setHeaderOptions("Content-Type", "application/strategic-merge-patch+json");

beforeAll(async () => {
  server = await startWithWidgets();
  api = clients(server);
});

afterAll(async () => {
  await server.stop();
});

async function eventually(check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error("condition not reached");
}

describe("pods", () => {
  const gatedPod = (name: string) => ({
    metadata: { name },
    spec: {
      schedulingGates: [{ name: "stowage.dev/prewarm" }, { name: "other.io/gate" }],
      containers: [{ name: "main", image: "nginx:1" }],
    },
  });

  it("lets scheduling gates be removed but never added after creation", async () => {
    await api.core.createNamespacedPod({ namespace: "default", body: gatedPod("gated") });
    const lifted = await api.core.patchNamespacedPod(
      {
        name: "gated",
        namespace: "default",
        body: { spec: { schedulingGates: [{ name: "other.io/gate" }] } },
      },
      mergeType,
    );
    expect(lifted.spec?.schedulingGates).toEqual([{ name: "other.io/gate" }]);
    const { code, status } = await failure(
      api.core.patchNamespacedPod(
        {
          name: "gated",
          namespace: "default",
          body: { spec: { schedulingGates: [{ name: "other.io/gate" }, { name: "new.io/gate" }] } },
        },
        mergeType,
      ),
    );
    expect(code).toBe(422);
    expect(status.message).toContain(
      "spec.schedulingGates: Forbidden: only deletion is allowed, but found new scheduling gate 'new.io/gate'",
    );
  });

  it("allows image changes but refuses other pod spec changes", async () => {
    await api.core.createNamespacedPod({
      namespace: "default",
      body: {
        metadata: { name: "immutable-pod" },
        spec: { containers: [{ name: "main", image: "nginx:1" }] },
      },
    });
    const reimaged = await api.core.patchNamespacedPod(
      {
        name: "immutable-pod",
        namespace: "default",
        body: { spec: { containers: [{ name: "main", image: "nginx:2" }] } },
      },
      strategicType,
    );
    expect(reimaged.spec?.containers[0].image).toBe("nginx:2");
    const { code, status } = await failure(
      api.core.patchNamespacedPod(
        { name: "immutable-pod", namespace: "default", body: { spec: { nodeName: "n1" } } },
        mergeType,
      ),
    );
    expect(code).toBe(422);
    expect(status.message).toContain("spec: Forbidden: pod updates may not change fields other than");
  });
});

describe("built-in object rules", () => {
  it("folds a secret's stringData into base64 data", async () => {
    const secret = await api.core.createNamespacedSecret({
      namespace: "default",
      body: {
        metadata: { name: "pull" },
        type: "kubernetes.io/dockerconfigjson",
        stringData: { ".dockerconfigjson": '{"auths":{}}' },
      },
    });
    expect(secret.data).toEqual({ ".dockerconfigjson": Buffer.from('{"auths":{}}').toString("base64") });
    expect(secret.stringData).toBeUndefined();
  });

  it("stores metav1.Time fields of built-ins in whole seconds, as a typed decoder does, but keeps custom resources as sent", async () => {
    const node = await api.core.createNode({
      body: {
        metadata: { name: "timed-node" },
        status: {
          conditions: [
            {
              type: "Ready",
              status: "True",
              lastHeartbeatTime: new Date("2026-01-02T03:04:05.678Z"),
            },
          ],
        },
      },
    });
    expect(node.status?.conditions?.[0].lastHeartbeatTime?.toISOString()).toBe("2026-01-02T03:04:05.000Z");
    await api.custom.createNamespacedCustomObject({ ...widgets(), body: widget("timed") });
    const patched = (await api.custom.patchNamespacedCustomObjectStatus(
      {
        ...widgets(),
        name: "timed",
        body: {
          status: {
            conditions: [{ type: "Ready", status: "True", lastTransitionTime: "2026-01-02T03:04:05.678Z" }],
          },
        },
      },
      mergeType,
    )) as Json;
    expect(patched.status.conditions[0].lastTransitionTime).toBe("2026-01-02T03:04:05.678Z");
  });

  it("refuses names that are not DNS subdomains (DNS labels for namespaces)", async () => {
    expect(
      (
        await failure(
          api.core.createNamespacedConfigMap({
            namespace: "default",
            body: { metadata: { name: "Bad_Name" } },
          }),
        )
      ).code,
    ).toBe(422);
    expect((await failure(api.core.createNamespace({ body: { metadata: { name: "has.dot" } } }))).code).toBe(
      422,
    );
  });

  it("deletes a collection selected by labels", async () => {
    for (const name of ["dc-1", "dc-2", "dc-keep"])
      await api.core.createNamespacedConfigMap({
        namespace: "default",
        body: { metadata: { name, labels: { batch: name === "dc-keep" ? "keep" : "drop" } } },
      });
    await api.core.deleteCollectionNamespacedConfigMap({ namespace: "default", labelSelector: "batch=drop" });
    const left = await api.core.listNamespacedConfigMap({ namespace: "default", labelSelector: "batch" });
    expect(left.items.map((i) => i.metadata?.name)).toEqual(["dc-keep"]);
  });
});

describe("garbage collection", () => {
  const ownedBy = (owner: Json) => [
    {
      apiVersion: owner.apiVersion,
      kind: owner.kind,
      name: owner.metadata.name,
      uid: owner.metadata.uid,
      controller: true,
    },
  ];

  it("deletes dependents once their owner is gone", async () => {
    const owner = (await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: widget("gc-owner"),
    })) as Json;
    await api.core.createNamespacedConfigMap({
      namespace: "default",
      body: { metadata: { name: "gc-dependent", ownerReferences: ownedBy(owner) } },
    });
    await api.custom.deleteNamespacedCustomObject({ ...widgets(), name: "gc-owner" });
    await eventually(
      async () =>
        (await failure(api.core.readNamespacedConfigMap({ name: "gc-dependent", namespace: "default" })))
          .code === 404,
    );
  });

  it("keeps dependents but drops their owner reference with propagationPolicy=Orphan", async () => {
    const owner = (await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: widget("gc-orphaner"),
    })) as Json;
    await api.core.createNamespacedConfigMap({
      namespace: "default",
      body: { metadata: { name: "gc-orphan", ownerReferences: ownedBy(owner) } },
    });
    await api.custom.deleteNamespacedCustomObject({
      ...widgets(),
      name: "gc-orphaner",
      propagationPolicy: "Orphan",
    });
    const orphan = await api.core.readNamespacedConfigMap({ name: "gc-orphan", namespace: "default" });
    expect(orphan.metadata?.ownerReferences).toBeUndefined();
  });

  it("keeps a dependent that still has another live owner", async () => {
    const first = (await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: widget("gc-first"),
    })) as Json;
    const second = (await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: widget("gc-second"),
    })) as Json;
    await api.core.createNamespacedConfigMap({
      namespace: "default",
      body: {
        metadata: {
          name: "gc-shared",
          ownerReferences: [...ownedBy(first), { ...ownedBy(second)[0], controller: false }],
        },
      },
    });
    await api.custom.deleteNamespacedCustomObject({ ...widgets(), name: "gc-first" });
    await eventually(async () => {
      const shared = await api.core.readNamespacedConfigMap({ name: "gc-shared", namespace: "default" });
      return shared.metadata?.ownerReferences?.length === 1;
    });
    const shared = await api.core.readNamespacedConfigMap({ name: "gc-shared", namespace: "default" });
    expect(shared.metadata?.ownerReferences?.[0].uid).toBe(second.metadata.uid);
  });
});

describe("request pipeline hooks", () => {
  it("runs admission plugins on writes: a mutation is stored and a denial is returned as its Status", async () => {
    server.admission.push((request) => {
      if (request.def.kind !== "Pod" || request.operation !== "CREATE" || !request.object) return undefined;
      if (request.object.metadata.labels?.deny === "true")
        throw new ApiError(
          403,
          "Forbidden",
          'admission webhook "pods.stowage.dev" denied the request: labelled deny',
        );
      return {
        ...request.object,
        spec: { ...request.object.spec, schedulingGates: [{ name: "stowage.dev/prewarm" }] },
      };
    });
    try {
      const pod = await api.core.createNamespacedPod({
        namespace: "default",
        body: { metadata: { name: "admitted" }, spec: { containers: [{ name: "c", image: "i" }] } },
      });
      expect(pod.spec?.schedulingGates).toEqual([{ name: "stowage.dev/prewarm" }]);
      const { code, status } = await failure(
        api.core.createNamespacedPod({
          namespace: "default",
          body: {
            metadata: { name: "denied", labels: { deny: "true" } },
            spec: { containers: [{ name: "c", image: "i" }] },
          },
        }),
      );
      expect(code).toBe(403);
      expect(status.message).toContain("denied the request");
    } finally {
      server.admission.length = 0;
    }
  });

  it("refuses requests an authorizer denies with 403 Forbidden naming user, verb and resource", async () => {
    server.authorizers.push((request) =>
      request.verb === "delete" && request.resource === "configmaps" ? "no RBAC yet" : undefined,
    );
    try {
      await api.core.createNamespacedConfigMap({
        namespace: "default",
        body: { metadata: { name: "protected" } },
      });
      const { code, status } = await failure(
        api.core.deleteNamespacedConfigMap({ name: "protected", namespace: "default" }),
      );
      expect(code).toBe(403);
      expect(status.message).toBe(
        'configmaps "protected" is forbidden: User "stowage-test-token" cannot delete resource "configmaps" in API group "" in the namespace "default": no RBAC yet',
      );
    } finally {
      server.authorizers.length = 0;
    }
  });

  it("logs every request with its verb and status", async () => {
    server.resetRequestLog();
    await api.core.listNamespacedConfigMap({ namespace: "default" });
    await failure(api.core.readNamespacedConfigMap({ name: "absent", namespace: "default" }));
    expect(server.requestLog()).toEqual([
      { method: "GET", path: "/api/v1/namespaces/default/configmaps", verb: "list", status: 200 },
      { method: "GET", path: "/api/v1/namespaces/default/configmaps/absent", verb: "get", status: 404 },
    ]);
  });
});
