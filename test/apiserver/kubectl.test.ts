import { setHeaderOptions } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import type { TestApiServer } from "../../testkit/apiserver/index.ts";
import { type Clients, clients, group, Kubectl, startWithWidgets, widget, widgets } from "./helpers.ts";

let server: TestApiServer;
let kubectl: Kubectl;
let api: Clients;

beforeAll(async () => {
  server = await startWithWidgets();
  kubectl = new Kubectl(server);
  api = clients(server);
});

afterAll(async () => {
  kubectl.cleanup();
  await server.stop();
});

describe("the real kubectl against the API server double", () => {
  it("creates a custom resource with apply, and a second apply with a change updates it", async () => {
    const first = await kubectl.apply([widget("applied", { image: "nginx:1", a: "x", size: 2 })]);
    expect(first.stderr).toBe("");
    expect(first.stdout).toContain(`widget.${group}/applied created`);

    const second = await kubectl.apply([widget("applied", { image: "nginx:1", a: "x", size: 5 })]);
    expect(second.stdout).toContain(`widget.${group}/applied configured`);
    const stored = (await api.custom.getNamespacedCustomObject({ ...widgets(), name: "applied" })) as {
      spec: { size: number };
      metadata: { generation: number };
    };
    expect(stored.spec.size).toBe(5);
    expect(stored.metadata.generation).toBe(2);

    const unchanged = await kubectl.apply([widget("applied", { image: "nginx:1", a: "x", size: 5 })]);
    expect(unchanged.stdout).toContain("unchanged");
  });

  it("applies built-in kinds (namespace, configmap, deployment) and updates them", async () => {
    const objects = [
      { apiVersion: "v1", kind: "Namespace", metadata: { name: "applied-ns" } },
      {
        apiVersion: "v1",
        kind: "ConfigMap",
        metadata: { name: "settings", namespace: "applied-ns" },
        data: { a: "1" },
      },
      {
        apiVersion: "apps/v1",
        kind: "Deployment",
        metadata: { name: "web", namespace: "applied-ns" },
        spec: {
          replicas: 1,
          selector: { matchLabels: { app: "web" } },
          template: {
            metadata: { labels: { app: "web" } },
            spec: { containers: [{ name: "web", image: "nginx:1" }] },
          },
        },
      },
    ];
    const created = await kubectl.apply(objects);
    expect(created.stderr).toBe("");
    expect(created.stdout).toContain("namespace/applied-ns created");
    expect(created.stdout).toContain("configmap/settings created");
    expect(created.stdout).toContain("deployment.apps/web created");

    objects[1].data = { a: "2" };
    const updated = await kubectl.apply(objects);
    expect(updated.stdout).toContain("configmap/settings configured");
    const cm = await api.core.readNamespacedConfigMap({ name: "settings", namespace: "applied-ns" });
    expect(cm.data).toEqual({ a: "2" });
  });

  it("creates namespaces, docker-registry secrets and configmaps imperatively (kubectl sends protobuf)", async () => {
    expect((await kubectl.run(["create", "namespace", "imperative"])).stdout).toContain(
      "namespace/imperative created",
    );
    const secret = await kubectl.run([
      "create",
      "secret",
      "docker-registry",
      "ngc",
      "-n",
      "imperative",
      "--docker-server=nvcr.io",
      "--docker-username=$oauthtoken",
      "--docker-password=s3cret",
    ]);
    expect(secret.stdout).toContain("secret/ngc created");
    const stored = await api.core.readNamespacedSecret({ name: "ngc", namespace: "imperative" });
    expect(stored.type).toBe("kubernetes.io/dockerconfigjson");
    const config = JSON.parse(Buffer.from(stored.data![".dockerconfigjson"], "base64").toString("utf8"));
    expect(config.auths["nvcr.io"]).toMatchObject({ username: "$oauthtoken", password: "s3cret" });
    const cm = await kubectl.run([
      "create",
      "configmap",
      "tuning",
      "-n",
      "imperative",
      "--from-literal=threads=8",
    ]);
    expect(cm.stdout).toContain("configmap/tuning created");
    expect(
      (await api.core.readNamespacedConfigMap({ name: "tuning", namespace: "imperative" })).data,
    ).toEqual({ threads: "8" });
    const ns = await api.core.readNamespace({ name: "imperative" });
    expect(ns.spec?.finalizers).toEqual(["kubernetes"]);
  });

  it("shows the CRD's printer columns in kubectl get, NAME first and AGE last", async () => {
    await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: widget("printed", { image: "redis:7", b: "y", size: 3 }),
    });
    await api.custom.patchNamespacedCustomObjectStatus(
      {
        ...widgets(),
        name: "printed",
        body: { status: { conditions: [{ type: "Ready", status: "True" }] } },
      },
      setHeaderOptions("Content-Type", "application/merge-patch+json"),
    );
    const out = await kubectl.run(["get", "widgets", "printed"]);
    expect(out.stderr).toBe("");
    const [header, row] = out.stdout.trim().split("\n");
    expect(header.split(/\s+/)).toEqual(["NAME", "IMAGE", "READY", "SIZE", "AGE"]);
    const cells = row.split(/\s+/);
    expect(cells.slice(0, 4)).toEqual(["printed", "redis:7", "True", "3"]);
    expect(cells[4]).toMatch(/^\d+s$/);

    const short = await kubectl.run(["get", "wg", "printed", "-o", "name"]);
    expect(short.stdout.trim()).toBe(`widget.${group}/printed`);
  });

  it("prints the stored object with server-set metadata in kubectl get -o yaml", async () => {
    await kubectl.apply([widget("yaml-one", { image: "nginx:1", a: "x" })]);
    const out = await kubectl.run(["get", "widget", "yaml-one", "-o", "yaml"]);
    const obj = parse(out.stdout);
    expect(obj.kind).toBe("Widget");
    expect(obj.metadata.uid).toMatch(/^[0-9a-f-]{36}$/);
    expect(obj.metadata.resourceVersion).toMatch(/^\d+$/);
    expect(obj.metadata.creationTimestamp).toMatch(/Z$/);
    expect(obj.spec.mode).toBe("fast");
    expect(obj.spec.settings).toEqual({ retries: 3, timeout: "30s" });
  });

  it("filters kubectl get by label selector", async () => {
    for (const [name, tier] of [
      ["lbl-a", "gpu"],
      ["lbl-b", "cpu"],
      ["lbl-c", "gpu"],
    ]) {
      await api.core.createNamespacedConfigMap({
        namespace: "default",
        body: { metadata: { name, labels: { tier, suite: "kubectl-labels" } } },
      });
    }
    const out = await kubectl.run(["get", "configmaps", "-l", "suite=kubectl-labels,tier=gpu", "-o", "name"]);
    expect(out.stdout.trim().split("\n")).toEqual(["configmap/lbl-a", "configmap/lbl-c"]);
    const notIn = await kubectl.run([
      "get",
      "configmaps",
      "-l",
      "suite=kubectl-labels,tier notin (gpu)",
      "-o",
      "name",
    ]);
    expect(notIn.stdout.trim()).toBe("configmap/lbl-b");
  });

  it("describes a custom resource with its spec, status and events", async () => {
    const created = (await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: widget("described", { image: "nginx:1", a: "x" }),
    })) as { metadata: { uid: string } };
    await api.core.createNamespacedEvent({
      namespace: "default",
      body: {
        metadata: { name: "described.1" },
        involvedObject: {
          apiVersion: `${group}/v1`,
          kind: "Widget",
          name: "described",
          namespace: "default",
          uid: created.metadata.uid,
        },
        reason: "Synced",
        message: "mirrored 3 images",
        type: "Normal",
        source: { component: "stowage" },
        count: 1,
        firstTimestamp: new Date(),
        lastTimestamp: new Date(),
      },
    });
    const out = await kubectl.run(["describe", "widget", "described"]);
    expect(out.stderr).toBe("");
    expect(out.stdout).toMatch(/Name:\s+described/);
    expect(out.stdout).toMatch(/Image:\s+nginx:1/);
    expect(out.stdout).toMatch(/Normal\s+Synced\s+.*stowage\s+mirrored 3 images/);
  });

  it("shows events recorded through events.k8s.io/v1 in kubectl describe, which reads core/v1 events", async () => {
    const created = (await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: widget("described-v1", { image: "nginx:1", a: "x" }),
    })) as { metadata: { uid: string } };
    const event = {
      apiVersion: "events.k8s.io/v1",
      kind: "Event",
      metadata: { name: "described-v1.1" },
      regarding: {
        apiVersion: `${group}/v1`,
        kind: "Widget",
        name: "described-v1",
        namespace: "default",
        uid: created.metadata.uid,
      },
      reason: "UpstreamUnavailable",
      note: "registry answered 503",
      type: "Warning",
      action: "Sync",
      reportingController: "stowage.dev/controller",
      reportingInstance: "stowage-0",
      eventTime: "2026-01-02T03:04:05.123Z",
    };
    const post = (body: unknown) =>
      fetch(`${server.url}/apis/events.k8s.io/v1/namespaces/default/events`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    // like the real server, a MicroTime needs exactly six fractional digits (toISOString() has three)
    const refused = await post(event);
    expect(refused.status).toBe(400);
    expect(((await refused.json()) as { message: string }).message).toContain(
      'as "2006-01-02T15:04:05.000000Z07:00"',
    );
    const accepted = await post({ ...event, eventTime: new Date().toISOString().replace(/Z$/, "000Z") });
    expect(accepted.status).toBe(201);
    const core = await api.core.listNamespacedEvent({
      namespace: "default",
      fieldSelector: "involvedObject.name=described-v1",
    });
    expect(core.items.map((e) => [e.reason, e.message, e.involvedObject.kind])).toEqual([
      ["UpstreamUnavailable", "registry answered 503", "Widget"],
    ]);
    const out = await kubectl.run(["describe", "widget", "described-v1"]);
    expect(out.stdout).toMatch(/Warning\s+UpstreamUnavailable\s+.*registry answered 503/);
  });

  it("describes a built-in pod with its events", async () => {
    const pod = await api.core.createNamespacedPod({
      namespace: "default",
      body: {
        metadata: { name: "described-pod", labels: { app: "x" } },
        spec: {
          containers: [{ name: "main", image: "nginx:1" }],
          schedulingGates: [{ name: "stowage.dev/prewarm" }],
        },
      },
    });
    await api.core.createNamespacedEvent({
      namespace: "default",
      body: {
        metadata: { name: "described-pod.1" },
        involvedObject: {
          apiVersion: "v1",
          kind: "Pod",
          name: "described-pod",
          namespace: "default",
          uid: pod.metadata?.uid,
        },
        reason: "Gated",
        message: "waiting for image warm-up",
        type: "Normal",
        source: { component: "stowage" },
        firstTimestamp: new Date(),
        lastTimestamp: new Date(),
      },
    });
    const out = await kubectl.run(["describe", "pod", "described-pod"]);
    expect(out.stderr).toBe("");
    expect(out.stdout).toMatch(/Status:\s+Pending/);
    expect(out.stdout).toMatch(/Image:\s+nginx:1/);
    expect(out.stdout).toMatch(/Gated\s+.*waiting for image warm-up/);
  });

  it("describes a namespace and a node, whose describers list quotas, limit ranges and pods", async () => {
    const ns = await kubectl.run(["describe", "namespace", "default"]);
    expect(ns.stderr).toBe("");
    expect(ns.stdout).toMatch(/Status:\s+Active/);
    expect(ns.stdout).toContain("No resource quota.");
    await kubectl.apply([
      { apiVersion: "v1", kind: "Node", metadata: { name: "described-node", labels: { gpu: "true" } } },
    ]);
    const node = await kubectl.run(["describe", "node", "described-node"]);
    expect(node.stderr).toBe("");
    expect(node.stdout).toMatch(/Labels:\s+gpu=true/);
    expect(node.stdout).toContain("Non-terminated Pods:");
  });

  it("changes objects with kubectl patch --type merge and --type json", async () => {
    await kubectl.apply([widget("patched", { image: "nginx:1", a: "x", size: 1 })]);
    const merge = await kubectl.run([
      "patch",
      "widget",
      "patched",
      "--type",
      "merge",
      "-p",
      '{"spec":{"size":4}}',
    ]);
    expect(merge.stdout).toContain(`widget.${group}/patched patched`);
    const json = await kubectl.run([
      "patch",
      "widget",
      "patched",
      "--type",
      "json",
      "-p",
      '[{"op":"test","path":"/spec/size","value":4},{"op":"replace","path":"/spec/image","value":"redis:7"}]',
    ]);
    expect(json.stdout).toContain(`widget.${group}/patched patched`);
    const stored = (await api.custom.getNamespacedCustomObject({ ...widgets(), name: "patched" })) as {
      spec: { size: number; image: string };
    };
    expect(stored.spec).toMatchObject({ size: 4, image: "redis:7" });

    const failedTest = await kubectl.run([
      "patch",
      "widget",
      "patched",
      "--type",
      "json",
      "-p",
      '[{"op":"test","path":"/spec/size","value":9},{"op":"replace","path":"/spec/size","value":1}]',
    ]);
    expect(failedTest.code).not.toBe(0);
  });

  it("deletes an object at once, and one with a finalizer only after the finalizer is removed", async () => {
    await kubectl.apply([widget("deleted-plain")]);
    const plain = await kubectl.run(["delete", "widget", "deleted-plain"]);
    expect(plain.stdout).toContain(`widget.${group} "deleted-plain" deleted`);
    expect((await kubectl.run(["get", "widget", "deleted-plain"])).stderr).toContain("NotFound");

    await kubectl.apply([
      {
        ...widget("deleted-final"),
        metadata: { name: "deleted-final", finalizers: ["stowage.dev/cleanup"] },
      },
    ]);
    const pending = await kubectl.run(["delete", "widget", "deleted-final", "--wait=false"]);
    expect(pending.code).toBe(0);
    const still = parse((await kubectl.run(["get", "widget", "deleted-final", "-o", "yaml"])).stdout);
    expect(still.metadata.deletionTimestamp).toBeTruthy();
    await kubectl.run([
      "patch",
      "widget",
      "deleted-final",
      "--type",
      "merge",
      "-p",
      '{"metadata":{"finalizers":null}}',
    ]);
    expect((await kubectl.run(["get", "widget", "deleted-final"])).stderr).toContain("NotFound");
  });

  it("waits for condition Ready until the status subresource reports it", async () => {
    await kubectl.apply([widget("waited")]);
    const waiting = kubectl.run(["wait", "--for=condition=Ready", "widget/waited", "--timeout=20s"]);
    // the status write happens while kubectl is already watching (or about to); wait sees it either way
    await new Promise((resolve) => setTimeout(resolve, 300));
    const current = (await api.custom.getNamespacedCustomObject({ ...widgets(), name: "waited" })) as Record<
      string,
      unknown
    >;
    await api.custom.replaceNamespacedCustomObjectStatus({
      ...widgets(),
      name: "waited",
      body: {
        ...current,
        status: { conditions: [{ type: "Ready", status: "True", reason: "Warm", message: "ok" }] },
      },
    });
    const result = await waiting;
    expect(result.stderr).toBe("");
    expect(result.stdout).toContain(`widget.${group}/waited condition met`);
  });

  it("refuses invalid custom resources with messages that name the field", async () => {
    const badPattern = await kubectl.apply([widget("bad-pattern", { image: "Foo//bar", a: "x" })]);
    expect(badPattern.code).not.toBe(0);
    expect(badPattern.stderr).toContain(
      `spec.image: Invalid value: "Foo//bar": spec.image in body should match '^[a-z0-9]+([._/:-][a-z0-9]+)*$'`,
    );

    const missing = await kubectl.apply([widget("bad-required", { a: "x" })]);
    // kubectl rebuilds the message from the Status details: "The <Kind> \"name\" is invalid: ..."
    expect(missing.stderr).toContain(`The Widget "bad-required" is invalid: \n* spec.image: Required value`);
    // a missing required field stops CEL rules, and the real server says so as a second cause
    expect(missing.stderr).toContain("* <nil>: Invalid value: null: some validation rules were not checked");

    const enumValue = await kubectl.apply([widget("bad-enum", { image: "nginx", a: "x", mode: "turbo" })]);
    expect(enumValue.stderr).toContain(
      `spec.mode: Unsupported value: "turbo": supported values: "fast", "slow"`,
    );

    const cel = await kubectl.apply([widget("bad-cel", { image: "nginx", a: "ay", b: "bee" })]);
    // a failed rule on an object shows no value
    expect(cel.stderr).toContain(`spec: Invalid value: exactly one of a or b must be set`);

    const several = await kubectl.apply([widget("bad-many", { image: "UPPER", size: 11, a: "x" })]);
    // several causes: kubectl lists each cause on its own line
    expect(several.stderr).toContain(`* spec.image: Invalid value: "UPPER": spec.image in body should match`);
    expect(several.stderr).toContain(
      "* spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10",
    );

    const unknownField = await kubectl.apply([
      widget("bad-unknown", { image: "nginx", a: "x", colour: "red" }),
    ]);
    expect(unknownField.stderr).toContain('strict decoding error: unknown field "spec.colour"');
  });
});
