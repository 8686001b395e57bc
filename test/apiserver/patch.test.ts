import { setHeaderOptions } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TestApiServer } from "../../testkit/apiserver/index.ts";
import type { Json } from "../../testkit/apiserver/types.ts";
import { type Clients, clients, failure, group, startWithWidgets, widget, widgets } from "./helpers.ts";

let server: TestApiServer;
let api: Clients;
const as = (type: string) => setHeaderOptions("Content-Type", type);
const mergeType = as("application/merge-patch+json");
const jsonType = as("application/json-patch+json");
const strategicType = as("application/strategic-merge-patch+json");
const applyType = as("application/apply-patch+yaml");

beforeAll(async () => {
  server = await startWithWidgets();
  api = clients(server);
});

afterAll(async () => {
  await server.stop();
});

function deployment(name: string): Json {
  return {
    metadata: { name, finalizers: ["a.stowage.dev"] },
    spec: {
      replicas: 1,
      selector: { matchLabels: { app: name } },
      template: {
        metadata: { labels: { app: name } },
        spec: {
          containers: [
            {
              name: "main",
              image: "nginx:1",
              env: [
                { name: "A", value: "1" },
                { name: "B", value: "2" },
              ],
            },
            { name: "sidecar", image: "envoy:1" },
          ],
        },
      },
    },
  };
}

describe("merge and json patches", () => {
  it("merges a JSON merge patch and deletes fields set to null", async () => {
    await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: widget("merged", { image: "nginx:1", a: "x", size: 2 }),
    });
    const patched = (await api.custom.patchNamespacedCustomObject(
      { ...widgets(), name: "merged", body: { spec: { size: null, labels: { tier: "gpu" } } } },
      mergeType,
    )) as Json;
    expect(patched.spec.size).toBeUndefined();
    expect(patched.spec.labels).toEqual({ tier: "gpu" });
    expect(patched.spec.image).toBe("nginx:1");
  });

  it("applies JSON patch operations and refuses the whole patch when a test operation fails", async () => {
    await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: widget("jsonpatched", { image: "nginx:1", a: "x", size: 2 }),
    });
    const patched = (await api.custom.patchNamespacedCustomObject(
      {
        ...widgets(),
        name: "jsonpatched",
        body: [
          { op: "test", path: "/spec/size", value: 2 },
          { op: "replace", path: "/spec/size", value: 3 },
          { op: "add", path: "/metadata/labels", value: { x: "y" } },
        ],
      },
      jsonType,
    )) as Json;
    expect(patched.spec.size).toBe(3);
    expect(patched.metadata.labels).toEqual({ x: "y" });
    const { code } = await failure(
      api.custom.patchNamespacedCustomObject(
        {
          ...widgets(),
          name: "jsonpatched",
          body: [
            { op: "replace", path: "/spec/image", value: "redis" },
            { op: "test", path: "/spec/size", value: 2 },
          ],
        },
        jsonType,
      ),
    );
    expect(code).toBe(422);
    const after = (await api.custom.getNamespacedCustomObject({ ...widgets(), name: "jsonpatched" })) as Json;
    expect(after.spec.image).toBe("nginx:1");
  });

  it("answers 409 to a patch whose body carries a stale resourceVersion", async () => {
    const created = (await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: widget("stale-patch"),
    })) as Json;
    await api.custom.patchNamespacedCustomObject(
      { ...widgets(), name: "stale-patch", body: { spec: { size: 1 } } },
      mergeType,
    );
    const { code, status } = await failure(
      api.custom.patchNamespacedCustomObject(
        {
          ...widgets(),
          name: "stale-patch",
          body: { metadata: { resourceVersion: created.metadata.resourceVersion }, spec: { size: 2 } },
        },
        mergeType,
      ),
    );
    expect(code).toBe(409);
    expect(status.reason).toBe("Conflict");
  });

  it("refuses a strategic merge patch on a custom resource with 415", async () => {
    await api.custom.createNamespacedCustomObject({ ...widgets(), body: widget("no-strategic") });
    const { code, status } = await failure(
      api.custom.patchNamespacedCustomObject(
        { ...widgets(), name: "no-strategic", body: { spec: { size: 1 } } },
        strategicType,
      ),
    );
    expect(code).toBe(415);
    expect(status.reason).toBe("UnsupportedMediaType");
  });
});

describe("strategic merge patch on built-ins", () => {
  it("merges containers and env by name, finalizers as a set, and honours $patch: delete", async () => {
    await api.apps.createNamespacedDeployment({ namespace: "default", body: deployment("strategic") });
    const patched = await api.apps.patchNamespacedDeployment(
      {
        name: "strategic",
        namespace: "default",
        body: {
          metadata: { finalizers: ["b.stowage.dev"] },
          spec: {
            template: {
              spec: {
                containers: [
                  {
                    name: "main",
                    image: "nginx:2",
                    env: [
                      { name: "B", value: "20" },
                      { name: "C", value: "3" },
                    ],
                  },
                  { name: "sidecar", $patch: "delete" },
                  { name: "extra", image: "busybox" },
                ],
              },
            },
          },
        },
      },
      strategicType,
    );
    const containers = patched.spec?.template.spec?.containers ?? [];
    expect(containers.map((c) => c.name)).toEqual(["main", "extra"]);
    expect(containers[0].image).toBe("nginx:2");
    expect(containers[0].env).toEqual([
      { name: "A", value: "1" },
      { name: "B", value: "20" },
      { name: "C", value: "3" },
    ]);
    // the items the patch names come first, as kube-apiserver orders a merged list (normalizeElementOrder)
    expect(patched.metadata?.finalizers).toEqual(["b.stowage.dev", "a.stowage.dev"]);
    expect(patched.metadata?.generation).toBe(2);
  });

  it("merges pod status conditions by type through the status subresource", async () => {
    await api.core.createNamespacedPod({
      namespace: "default",
      body: { metadata: { name: "conditions" }, spec: { containers: [{ name: "c", image: "i" }] } },
    });
    await api.core.patchNamespacedPodStatus(
      {
        name: "conditions",
        namespace: "default",
        body: { status: { conditions: [{ type: "PodScheduled", status: "True" }] } },
      },
      strategicType,
    );
    const patched = await api.core.patchNamespacedPodStatus(
      {
        name: "conditions",
        namespace: "default",
        body: {
          status: {
            conditions: [
              { type: "Ready", status: "False" },
              { type: "PodScheduled", status: "False" },
            ],
          },
        },
      },
      strategicType,
    );
    // in the patch's order, as kube-apiserver orders a merged list
    expect(patched.status?.conditions?.map((c) => [c.type, c.status])).toEqual([
      ["Ready", "False"],
      ["PodScheduled", "False"],
    ]);
    expect(patched.status?.phase).toBe("Pending");
  });
});

describe("server-side apply", () => {
  const applied = (name: string, spec: Json): Json => ({
    apiVersion: `${group}/v1`,
    kind: "Widget",
    metadata: { name },
    spec,
  });

  it("creates an object with 201 and records the manager's fields in managedFields", async () => {
    const response = await fetch(
      `${server.url}/apis/${group}/v1/namespaces/default/widgets/ssa-create?fieldManager=alice`,
      {
        method: "PATCH",
        headers: { "Content-Type": "application/apply-patch+yaml" },
        body: `apiVersion: ${group}/v1\nkind: Widget\nmetadata:\n  name: ssa-create\nspec:\n  image: nginx\n  a: x\n`,
      },
    );
    expect(response.status).toBe(201);
    const created = (await response.json()) as Json;
    expect(created.metadata.uid).toBeTruthy();
    const entry = created.metadata.managedFields.find((e: Json) => e.manager === "alice");
    expect(entry).toMatchObject({ operation: "Apply", apiVersion: `${group}/v1`, fieldsType: "FieldsV1" });
    expect(entry.fieldsV1).toEqual({ "f:spec": { "f:image": {}, "f:a": {} } });
  });

  it("updates applied fields and removes fields the same manager no longer applies", async () => {
    await api.custom.patchNamespacedCustomObject(
      {
        ...widgets(),
        name: "ssa-update",
        body: applied("ssa-update", { image: "nginx", a: "x", size: 2 }),
        fieldManager: "alice",
      },
      applyType,
    );
    const updated = (await api.custom.patchNamespacedCustomObject(
      {
        ...widgets(),
        name: "ssa-update",
        body: applied("ssa-update", { image: "nginx", a: "x", mode: "slow" }),
        fieldManager: "alice",
      },
      applyType,
    )) as Json;
    expect(updated.spec.size).toBeUndefined();
    expect(updated.spec.mode).toBe("slow");
    expect(updated.metadata.generation).toBe(2);
  });

  it("refuses with 409 to apply a field another manager owns with a different value, unless forced", async () => {
    await api.custom.patchNamespacedCustomObject(
      {
        ...widgets(),
        name: "ssa-conflict",
        body: applied("ssa-conflict", { image: "nginx", a: "x", size: 2 }),
        fieldManager: "alice",
      },
      applyType,
    );
    const { code, status } = await failure(
      api.custom.patchNamespacedCustomObject(
        {
          ...widgets(),
          name: "ssa-conflict",
          body: applied("ssa-conflict", { size: 5 }),
          fieldManager: "bob",
        },
        applyType,
      ),
    );
    expect(code).toBe(409);
    expect(status.reason).toBe("Conflict");
    expect(status.message).toBe(
      // the other manager's version is named only when it differs from the applier's
      `Apply failed with 1 conflict: conflict with "alice": .spec.size`,
    );

    // the same value is shared ownership, not a conflict
    await api.custom.patchNamespacedCustomObject(
      {
        ...widgets(),
        name: "ssa-conflict",
        body: applied("ssa-conflict", { size: 2 }),
        fieldManager: "carol",
      },
      applyType,
    );

    const forced = (await api.custom.patchNamespacedCustomObject(
      {
        ...widgets(),
        name: "ssa-conflict",
        body: applied("ssa-conflict", { size: 5 }),
        fieldManager: "bob",
        force: true,
      },
      applyType,
    )) as Json;
    expect(forced.spec.size).toBe(5);
    const alice = forced.metadata.managedFields.find((e: Json) => e.manager === "alice");
    expect(alice.fieldsV1["f:spec"]["f:size"]).toBeUndefined();
  });

  it("makes a field changed by an update belong to the updater, so the applier conflicts on it", async () => {
    await api.custom.patchNamespacedCustomObject(
      {
        ...widgets(),
        name: "ssa-updated",
        body: applied("ssa-updated", { image: "nginx", a: "x", size: 2 }),
        fieldManager: "alice",
      },
      applyType,
    );
    await api.custom.patchNamespacedCustomObject(
      { ...widgets(), name: "ssa-updated", body: { spec: { size: 3 } }, fieldManager: "editor" },
      mergeType,
    );
    const { code } = await failure(
      api.custom.patchNamespacedCustomObject(
        {
          ...widgets(),
          name: "ssa-updated",
          body: applied("ssa-updated", { image: "nginx", a: "x", size: 4 }),
          fieldManager: "alice",
        },
        applyType,
      ),
    );
    expect(code).toBe(409);
  });

  it("applies status through the status subresource without touching spec", async () => {
    await api.custom.patchNamespacedCustomObject(
      {
        ...widgets(),
        name: "ssa-status",
        body: applied("ssa-status", { image: "nginx", a: "x" }),
        fieldManager: "alice",
      },
      applyType,
    );
    const withStatus = (await api.custom.patchNamespacedCustomObjectStatus(
      {
        ...widgets(),
        name: "ssa-status",
        body: {
          apiVersion: `${group}/v1`,
          kind: "Widget",
          metadata: { name: "ssa-status" },
          spec: { image: "ignored" },
          status: { phase: "Warm" },
        },
        fieldManager: "controller",
      },
      applyType,
    )) as Json;
    expect(withStatus.status).toEqual({ phase: "Warm" });
    expect(withStatus.spec.image).toBe("nginx");
    const entry = withStatus.metadata.managedFields.find((e: Json) => e.manager === "controller");
    expect(entry).toMatchObject({ operation: "Apply", subresource: "status" });
  });

  it("merges list-type map items by key, so managers own separate items and conflict only on shared ones", async () => {
    const ports = (name: string, list: Json[]) => applied(name, { image: "nginx", a: "x", ports: list });
    await api.custom.patchNamespacedCustomObject(
      {
        ...widgets(),
        name: "ssa-ports",
        body: ports("ssa-ports", [{ name: "http", port: 80 }]),
        fieldManager: "alice",
      },
      applyType,
    );
    const both = (await api.custom.patchNamespacedCustomObject(
      {
        ...widgets(),
        name: "ssa-ports",
        body: {
          apiVersion: `${group}/v1`,
          kind: "Widget",
          metadata: { name: "ssa-ports" },
          spec: { ports: [{ name: "metrics", port: 9090 }] },
        },
        fieldManager: "bob",
      },
      applyType,
    )) as Json;
    expect(both.spec.ports).toEqual([
      { name: "http", port: 80 },
      { name: "metrics", port: 9090 },
    ]);
    const bob = both.metadata.managedFields.find((e: Json) => e.manager === "bob");
    expect(bob.fieldsV1).toEqual({
      "f:spec": { "f:ports": { 'k:{"name":"metrics"}': { "f:name": {}, "f:port": {} } } },
    });

    const { code, status } = await failure(
      api.custom.patchNamespacedCustomObject(
        {
          ...widgets(),
          name: "ssa-ports",
          body: {
            apiVersion: `${group}/v1`,
            kind: "Widget",
            metadata: { name: "ssa-ports" },
            spec: { ports: [{ name: "http", port: 8080 }] },
          },
          fieldManager: "bob",
        },
        applyType,
      ),
    );
    expect(code).toBe(409);
    expect(status.message).toBe(
      `Apply failed with 1 conflict: conflict with "alice": .spec.ports[name="http"].port`,
    );

    const withoutHttp = (await api.custom.patchNamespacedCustomObject(
      { ...widgets(), name: "ssa-ports", body: ports("ssa-ports", []), fieldManager: "alice" },
      applyType,
    )) as Json;
    expect(withoutHttp.spec.ports).toEqual([{ name: "metrics", port: 9090 }]);
  });

  it("merges built-in lists with a merge key (containers by name) between managers", async () => {
    const base = {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "ssa-containers", namespace: "default" },
    };
    const apply = async (manager: string, body: Json) => {
      const response = await fetch(
        `${server.url}/apis/apps/v1/namespaces/default/deployments/ssa-containers?fieldManager=${manager}`,
        {
          method: "PATCH",
          headers: { "Content-Type": "application/apply-patch+yaml" },
          body: JSON.stringify(body),
        },
      );
      return { status: response.status, body: (await response.json()) as Json };
    };
    const template = (containers: Json[]) => ({
      ...base,
      spec: {
        selector: { matchLabels: { app: "x" } },
        template: { metadata: { labels: { app: "x" } }, spec: { containers } },
      },
    });
    expect((await apply("platform", template([{ name: "main", image: "nginx:1" }]))).status).toBe(201);
    const merged = await apply("mesh", {
      ...base,
      spec: { template: { spec: { containers: [{ name: "proxy", image: "envoy:1" }] } } },
    });
    expect(merged.status).toBe(200);
    expect(merged.body.spec.template.spec.containers.map((c: Json) => c.name)).toEqual(["main", "proxy"]);
  });

  it("requires a fieldManager for apply requests", async () => {
    const response = await fetch(`${server.url}/apis/${group}/v1/namespaces/default/widgets/ssa-nomanager`, {
      method: "PATCH",
      headers: { "Content-Type": "application/apply-patch+yaml" },
      body: JSON.stringify(applied("ssa-nomanager", { image: "nginx", a: "x" })),
    });
    expect(response.status).toBe(422);
    expect(((await response.json()) as Json).message).toBe(
      'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
    );
  });

  it("applies built-in objects (a Lease) as a controller would for leader election", async () => {
    const lease = {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: { name: "stowage-leader", namespace: "default" },
      spec: { holderIdentity: "pod-a", leaseDurationSeconds: 15 },
    };
    const response = await fetch(
      `${server.url}/apis/coordination.k8s.io/v1/namespaces/default/leases/stowage-leader?fieldManager=stowage&force=true`,
      {
        method: "PATCH",
        headers: { "Content-Type": "application/apply-patch+yaml" },
        body: JSON.stringify(lease),
      },
    );
    expect(response.status).toBe(201);
    expect(((await response.json()) as Json).spec.holderIdentity).toBe("pod-a");
  });
});
