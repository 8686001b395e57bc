/**
 * The API double calling MutatingWebhookConfigurations: a small HTTPS webhook started here (its
 * answer chosen by the path) and configurations created through the API, as a cluster admin would.
 */
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { KubeClient, Resources } from "../../src/kube/client.ts";
import { MutatingWebhookConfigurationResource } from "../../src/webhook/certManager.ts";
import { createCertificateAuthority, issueServingCertificate } from "../../src/webhook/certs.ts";
import { startApiServer, type TestApiServer } from "../../testkit/apiserver/index.ts";
import { Kubectl } from "./helpers.ts";

// biome-ignore lint/suspicious/noExplicitAny: AdmissionReviews and objects are free-form JSON here
type Json = any;

let api: TestApiServer;
let client: KubeClient;
let kubectl: Kubectl;
let hook: Server;
let port: number;
let caBundle: string;
let otherCaBundle: string;
const received: { path: string; review: Json }[] = [];

function respond(path: string, review: Json): Json {
  const request = review.request;
  const response: Json = { uid: request.uid, allowed: true };
  const patch = (ops: Json[]) => {
    response.patchType = "JSONPatch";
    response.patch = Buffer.from(JSON.stringify(ops)).toString("base64");
  };
  const labels = request.object?.metadata?.labels;
  if (path === "/label-b") {
    patch([
      {
        op: "add",
        path: labels ? "/metadata/labels/b" : "/metadata/labels",
        value: labels ? "set" : { b: "set" },
      },
    ]);
  } else if (path === "/note-b") {
    const sawB = labels?.b === "set" ? "yes" : "no";
    const annotations = request.object?.metadata?.annotations;
    patch([
      annotations
        ? { op: "add", path: "/metadata/annotations/saw-b", value: sawB }
        : { op: "add", path: "/metadata/annotations", value: { "saw-b": sawB } },
    ]);
  } else if (path === "/deny") {
    response.allowed = false;
    response.status = {
      code: 403,
      reason: "Forbidden",
      message: "images from this registry are not allowed",
    };
  } else if (path === "/warn") {
    response.warnings = ["this image is large; consider a ModelImage"];
  } else if (path === "/wrong-uid") {
    response.uid = "not-the-request-uid";
  }
  return { apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview", response };
}

function webhook(name: string, path: string, extra: Json = {}): Json {
  return {
    name,
    clientConfig: { url: `https://127.0.0.1:${port}${path}`, caBundle },
    rules: [{ operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["configmaps"] }],
    failurePolicy: "Fail",
    sideEffects: "None",
    admissionReviewVersions: ["v1"],
    timeoutSeconds: 5,
    ...extra,
  };
}

async function configure(name: string, webhooks: Json[]): Promise<void> {
  await client.resource(MutatingWebhookConfigurationResource).create({
    apiVersion: "admissionregistration.k8s.io/v1",
    kind: "MutatingWebhookConfiguration",
    metadata: { name },
    webhooks,
  } as never);
}

async function createConfigMap(
  name: string,
  namespace = "default",
  labels?: Record<string, string>,
): Promise<Json> {
  return client
    .resource(Resources.ConfigMap)
    .create({ metadata: { name, namespace, labels }, data: { k: "v" } } as never);
}

beforeAll(async () => {
  const now = Date.now();
  const ca = await createCertificateAuthority("hook-ca", { now, validityMs: 3600_000 });
  const other = await createCertificateAuthority("other-ca", { now, validityMs: 3600_000 });
  const serving = await issueServingCertificate(
    ca,
    { dnsNames: ["hook.webhooks.svc"], ipAddresses: ["127.0.0.1"] },
    { now, validityMs: 3600_000 },
  );
  caBundle = Buffer.from(ca.certPem).toString("base64");
  otherCaBundle = Buffer.from(other.certPem).toString("base64");
  hook = createServer({ cert: serving.certPem, key: serving.keyPem }, (req, res) => {
    let text = "";
    req.setEncoding("utf8");
    req.on("data", (chunk) => {
      text += chunk;
    });
    req.on("end", () => {
      const path = req.url ?? "/";
      if (path === "/hang") return; // never answers: the caller's timeout decides
      const review = JSON.parse(text);
      received.push({ path, review });
      const body = JSON.stringify(respond(path, review));
      res.writeHead(200, { "content-type": "application/json" }).end(body);
    });
  });
  await new Promise<void>((resolve) => hook.listen(0, "127.0.0.1", resolve));
  port = (hook.address() as AddressInfo).port;
  api = await startApiServer();
  client = KubeClient.load({ path: api.kubeconfigPath });
  kubectl = new Kubectl(api);
  for (const name of ["hooked", "plain"])
    await client.resource(Resources.Namespace).create({ metadata: { name, labels: { team: name } } });
});

afterAll(async () => {
  kubectl?.cleanup();
  await api?.stop();
  hook?.closeAllConnections();
  await new Promise((resolve) => hook?.close(resolve));
});

beforeEach(async () => {
  received.length = 0;
  const configs = await client.resource(MutatingWebhookConfigurationResource).list();
  for (const config of configs.items)
    await client.resource(MutatingWebhookConfigurationResource).delete(config.metadata?.name ?? "");
});

describe("the API double calls mutating admission webhooks", () => {
  it("sends an AdmissionReview v1 for a matching create and applies the JSON patch it returns", async () => {
    await configure("labels", [webhook("label.test", "/label-b")]);
    const created = await createConfigMap("one");
    expect(created.metadata.labels).toEqual({ b: "set" });
    expect(received).toHaveLength(1);
    const request = received[0].review.request;
    expect(received[0].review).toMatchObject({ apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview" });
    expect(request).toMatchObject({
      kind: { group: "", version: "v1", kind: "ConfigMap" },
      resource: { group: "", version: "v1", resource: "configmaps" },
      namespace: "default",
      name: "one",
      operation: "CREATE",
      dryRun: false,
    });
    expect(request.uid).toMatch(/^[0-9a-f-]{36}$/);
    expect(request.object.data).toEqual({ k: "v" });
  });

  it("calls only webhooks whose rules match the operation, group, version, resource and scope", async () => {
    await configure("rules", [
      webhook("update-only.test", "/label-b", {
        rules: [{ operations: ["UPDATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["configmaps"] }],
      }),
      webhook("apps-only.test", "/label-b", {
        rules: [{ operations: ["*"], apiGroups: ["apps"], apiVersions: ["*"], resources: ["*"] }],
      }),
      webhook("secrets-only.test", "/label-b", {
        rules: [{ operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["secrets"] }],
      }),
      webhook("cluster-scope.test", "/label-b", {
        rules: [
          {
            operations: ["CREATE"],
            apiGroups: ["*"],
            apiVersions: ["*"],
            resources: ["*"],
            scope: "Cluster",
          },
        ],
      }),
    ]);
    const created = await createConfigMap("unmatched");
    expect(created.metadata.labels).toBeUndefined();
    expect(received).toHaveLength(0);
    await client.resource(Resources.Namespace).create({ metadata: { name: "made-by-rules-test" } });
    expect(received.map((r) => r.review.request.kind.kind)).toEqual(["Namespace"]);
  });

  it("honours namespaceSelector and objectSelector", async () => {
    await configure("selectors", [
      webhook("ns.test", "/label-b", { namespaceSelector: { matchLabels: { team: "hooked" } } }),
      webhook("obj.test", "/note-b", {
        objectSelector: { matchExpressions: [{ key: "tier", operator: "In", values: ["gpu"] }] },
      }),
    ]);
    expect((await createConfigMap("a", "hooked")).metadata.labels).toEqual({ b: "set" });
    expect((await createConfigMap("a", "plain")).metadata.labels).toBeUndefined();
    const selected = await createConfigMap("b", "plain", { tier: "gpu" });
    expect(selected.metadata.annotations).toEqual({ "saw-b": "no" });
    expect(received.map((r) => `${r.path} ${r.review.request.namespace}/${r.review.request.name}`)).toEqual([
      "/label-b hooked/a",
      "/note-b plain/b",
    ]);
  });

  it("verifies the webhook's certificate with the caBundle only", async () => {
    await configure("wrong-ca", [
      webhook("wrong-ca.test", "/label-b", {
        clientConfig: { url: `https://127.0.0.1:${port}/label-b`, caBundle: otherCaBundle },
      }),
    ]);
    await expect(createConfigMap("nope")).rejects.toMatchObject({ code: 500 });
    await expect(createConfigMap("nope")).rejects.toThrow(/failed calling webhook "wrong-ca.test"/);
    expect(received).toHaveLength(0);
    expect(await client.resource(Resources.ConfigMap).find("nope", "default")).toBeUndefined();
  });

  it("reaches clientConfig.service through the loopback map and checks the certificate against the service name", async () => {
    api.webhookServices.set(`hook.webhooks:8443`, `127.0.0.1:${port}`);
    await configure("service", [
      webhook("svc.test", "/label-b", {
        clientConfig: {
          service: { namespace: "webhooks", name: "hook", path: "/label-b", port: 8443 },
          caBundle,
        },
      }),
    ]);
    expect((await createConfigMap("via-service")).metadata.labels).toEqual({ b: "set" });
    await client.resource(MutatingWebhookConfigurationResource).delete("service");
    await configure("unmapped", [
      webhook("unmapped.test", "/label-b", {
        clientConfig: { service: { namespace: "webhooks", name: "elsewhere", path: "/label-b" }, caBundle },
      }),
    ]);
    await expect(createConfigMap("unmapped")).rejects.toThrow(
      /failed calling webhook "unmapped.test".*no such host/,
    );
  });

  it("fails the request with failurePolicy Fail and proceeds unchanged with Ignore when a webhook cannot be reached or hangs", async () => {
    await configure("down", [
      webhook("down.test", "/label-b", { clientConfig: { url: "https://127.0.0.1:1/label-b", caBundle } }),
    ]);
    await expect(createConfigMap("down")).rejects.toThrow(
      /Internal error occurred: failed calling webhook "down.test": failed to call webhook: Post "https:\/\/127.0.0.1:1\/label-b"/,
    );
    await client.resource(MutatingWebhookConfigurationResource).delete("down");
    await configure("ignored", [
      webhook("down.test", "/label-b", {
        clientConfig: { url: "https://127.0.0.1:1/label-b", caBundle },
        failurePolicy: "Ignore",
      }),
      webhook("hangs.test", "/hang", { failurePolicy: "Ignore", timeoutSeconds: 1 }),
      webhook("works.test", "/note-b"),
    ]);
    const created = await createConfigMap("ignored");
    expect(created.metadata.annotations).toEqual({ "saw-b": "no" });
    expect(api.webhookCalls.slice(-3).map((c) => `${c.webhook}:${c.outcome}`)).toEqual([
      "down.test:failed-open",
      "hangs.test:failed-open",
      "works.test:patched",
    ]);
  });

  it("refuses the request with the webhook's status when it denies, and rejects a response for another uid", async () => {
    await configure("deny", [webhook("deny.test", "/deny")]);
    await expect(createConfigMap("denied")).rejects.toMatchObject({ code: 403 });
    const viaKubectl = await kubectl.run(["create", "configmap", "denied", "--from-literal=k=v"]);
    expect(viaKubectl.stderr).toContain(
      'admission webhook "deny.test" denied the request: images from this registry are not allowed',
    );
    await client.resource(MutatingWebhookConfigurationResource).delete("deny");
    await configure("uid", [webhook("uid.test", "/wrong-uid")]);
    await expect(createConfigMap("uid")).rejects.toThrow(
      /failed calling webhook "uid.test": expected response.uid/,
    );
  });

  it("passes a webhook's warnings to the client as Warning headers", async () => {
    await configure("warn", [webhook("warn.test", "/warn")]);
    const result = await kubectl.apply([
      {
        apiVersion: "v1",
        kind: "ConfigMap",
        metadata: { name: "warned", namespace: "default" },
        data: { a: "b" },
      },
    ]);
    expect(result.code).toBe(0);
    expect(result.stderr).toContain("Warning: this image is large; consider a ModelImage");
  });

  it("calls an IfNeeded webhook again when a later webhook changed the object, and a Never one not", async () => {
    await configure("a-first", [webhook("note.test", "/note-b", { reinvocationPolicy: "IfNeeded" })]);
    await configure("b-second", [webhook("label.test", "/label-b")]);
    const created = await createConfigMap("reinvoked");
    expect(created.metadata.labels).toEqual({ b: "set" });
    expect(created.metadata.annotations).toEqual({ "saw-b": "yes" });
    expect(received.map((r) => r.path)).toEqual(["/note-b", "/label-b", "/note-b"]);

    received.length = 0;
    await client.resource(MutatingWebhookConfigurationResource).delete("a-first");
    await configure("a-first", [webhook("note.test", "/note-b", { reinvocationPolicy: "Never" })]);
    const once = await createConfigMap("not-reinvoked");
    expect(once.metadata.annotations).toEqual({ "saw-b": "no" });
    expect(received.map((r) => r.path)).toEqual(["/note-b", "/label-b"]);
  });

  it("refuses webhooks without v1 in admissionReviewVersions, and dry runs for webhooks with side effects", async () => {
    await configure("v1beta1", [webhook("old.test", "/label-b", { admissionReviewVersions: ["v1beta1"] })]);
    await expect(createConfigMap("old")).rejects.toThrow(
      /failed calling webhook "old.test".*admissionReviewVersions/,
    );
    expect(received).toHaveLength(0);
    await client.resource(MutatingWebhookConfigurationResource).delete("v1beta1");
    await configure("side-effects", [webhook("effects.test", "/label-b", { sideEffects: "Some" })]);
    const dryRun = await kubectl.run([
      "create",
      "configmap",
      "dry",
      "--from-literal=k=v",
      "--dry-run=server",
    ]);
    expect(dryRun.code).not.toBe(0);
    expect(dryRun.stderr).toContain('admission webhook "effects.test" does not support dry run');
  });
});
