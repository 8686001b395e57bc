/**
 * The webhook and the gate controller in-process against the API (the double or the real
 * apiserver), which calls the webhook over real TLS as a MutatingWebhookConfiguration (a loopback
 * `clientConfig.url` through a TCP proxy that plays the webhook Service, caBundle patched in by the
 * webhook's own certificate management), driven by the built kubectl.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadCrd } from "../../src/api/crds.ts";
import { ModelImageResource } from "../../src/api/modelImage.ts";
import { setupGateController } from "../../src/controller/gates/index.ts";
import { type KubeClient, type KubeObject, Resources } from "../../src/kube/client.ts";
import { EventRecorder } from "../../src/kube/events.ts";
import { Manager } from "../../src/kube/manager.ts";
import { createGateMetrics, createRegistry, createRuntimeMetrics } from "../../src/metrics.ts";
import {
  type AdmissionWebhook,
  MutatingWebhookConfigurationResource,
  setupWebhook,
} from "../../src/webhook/index.ts";
import type { WebhookServer } from "../../src/webhook/server.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { startTcpProxy, type TcpProxy } from "../../testkit/tcpProxy.ts";
import { OffsetClock } from "../controller/modelimage-harness.ts";
import { eventually, Kubectl, startCluster, waitForDefaultServiceAccount } from "../kube/helpers.ts";

const CONTROLLER_NS = "stowage-system";
const GATE = "stowage.dev/prewarm";

let api: TestCluster;
let client: KubeClient;
/** the webhook "Service": the apiserver reaches the webhook through it */
let service: TcpProxy;
let kubectl: Kubectl;
let manager: Manager;
let webhook: AdmissionWebhook;
let server: WebhookServer;
const clock = new OffsetClock();
const registry = createRegistry();
const gateMetrics = createGateMetrics(registry);

// biome-ignore lint/suspicious/noExplicitAny: pods and events are read as free-form JSON
type Json = any;

function webhookConfiguration(failurePolicy: "Fail" | "Ignore", url: string) {
  return {
    apiVersion: "admissionregistration.k8s.io/v1",
    kind: "MutatingWebhookConfiguration",
    metadata: { name: "stowage" },
    webhooks: [
      {
        name: "pods.stowage.dev",
        clientConfig: { url },
        rules: [
          {
            operations: ["CREATE"],
            apiGroups: [""],
            apiVersions: ["v1"],
            resources: ["pods"],
            scope: "Namespaced",
          },
        ],
        failurePolicy,
        sideEffects: "None",
        admissionReviewVersions: ["v1"],
        timeoutSeconds: 5,
      },
    ],
  };
}

async function createModelImage(name: string, spec: Json): Promise<void> {
  await client.resource(ModelImageResource).create({
    apiVersion: "stowage.dev/v1alpha1",
    kind: "ModelImage",
    metadata: { name, namespace: "ml" },
    spec,
  } as KubeObject);
}

async function getPod(name: string): Promise<Json> {
  return client.resource<Json>(Resources.Pod).get(name, "ml");
}

function gatesOf(pod: Json): string[] {
  return (pod.spec.schedulingGates ?? []).map((g: Json) => g.name);
}

function podManifest(name: string, image: string, extraSpec: Json = {}) {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: "ml" },
    spec: { containers: [{ name: "serve", image }], ...extraSpec },
  };
}

async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = await registry.getSingleMetric(name)?.get();
  return (
    m?.values
      .filter((v) => Object.entries(labels).every(([k, value]) => v.labels[k] === value))
      .reduce((sum, v) => sum + v.value, 0) ?? 0
  );
}

beforeAll(async () => {
  ({ cluster: api, client } = await startCluster({ crds: [loadCrd("modelimages.stowage.dev") as never] }));
  kubectl = new Kubectl(api.kubeconfigPath);
  for (const name of [CONTROLLER_NS, "ml"]) {
    await client.resource(Resources.Namespace).create({ metadata: { name } });
    await waitForDefaultServiceAccount(client, name);
  }
  // Its backend is set once the webhook listens; until then nothing answers there.
  service = await startTcpProxy({ port: 1 });
  await api.create(webhookConfiguration("Fail", `https://127.0.0.1:${service.port}/mutate-pods`) as never);

  manager = new Manager({ client, metrics: createRuntimeMetrics(createRegistry()), clock });
  const events = new EventRecorder({
    client,
    reportingController: "stowage.dev/controller",
    reportingInstance: "test",
    clock,
  });
  webhook = setupWebhook(manager, { namespace: CONTROLLER_NS, host: "127.0.0.1", port: 0, clock });
  setupGateController(manager, {
    events,
    metrics: gateMetrics,
    clock,
    resyncMs: 100,
    modelImages: webhook.modelImages,
  });
  await manager.start();
  server = await webhook.start();
  service.retarget({ port: server.port });
  // A real apiserver picks the configuration and the patched caBundle up a moment later: a dry
  // run of a pod the webhook holds says when it is in force.
  await createModelImage("probe", { image: "registry.invalid/probe:1", prewarm: { holdPods: true } });
  await eventually("the webhook holds pods", async () => {
    const probe: Json = await client
      .request("POST", "/api/v1/namespaces/ml/pods", {
        query: { dryRun: "All" },
        body: podManifest("probe", "registry.invalid/probe:1"),
      })
      .catch(() => undefined);
    return gatesOf(probe ?? { spec: {} }).includes(GATE);
  });
});

afterAll(async () => {
  await webhook?.stop();
  await manager?.stop();
  kubectl?.cleanup();
  await service?.stop();
  await api?.stop();
});

describe("pods held until their image is prewarmed, through the API server calling the webhook", () => {
  it("stores the webhook's CA in a kubernetes.io/tls Secret and patches it into the configuration's caBundle", async () => {
    const secret: Json = await client.resource(Resources.Secret).get("stowage-webhook-tls", CONTROLLER_NS);
    expect(secret.type).toBe("kubernetes.io/tls");
    expect(Object.keys(secret.data).sort()).toEqual(["ca.crt", "ca.key", "tls.crt", "tls.key"]);
    const config: Json = await client.resource(MutatingWebhookConfigurationResource).get("stowage");
    expect(config.webhooks[0].clientConfig.caBundle).toBe(secret.data["ca.crt"]);
  });

  it("gates a pod applied with kubectl, and the API refuses adding a gate to a pod after creation", async () => {
    await createModelImage("llama", { image: "ghcr.io/acme/llama:v3", prewarm: { holdPods: true } });
    await eventually(
      "webhook cache has the ModelImage",
      () => webhook.modelImages.get("ml/llama") !== undefined,
    );
    const applied = await kubectl.apply([podManifest("held", "ghcr.io/acme/llama:v3")]);
    expect(applied.stderr).toBe("");
    expect(applied.code).toBe(0);
    const pod = await getPod("held");
    expect(gatesOf(pod)).toEqual([GATE]);
    expect(pod.metadata.annotations["stowage.dev/held-for"]).toBe("ml/llama");

    const free = await kubectl.apply([podManifest("free", "alpine:3")]);
    expect(free.code).toBe(0);
    expect(gatesOf(await getPod("free"))).toEqual([]);
    const addGate = await kubectl.run([
      "patch",
      "pod",
      "free",
      "-n",
      "ml",
      "--type=json",
      "-p",
      JSON.stringify([{ op: "add", path: "/spec/schedulingGates", value: [{ name: GATE }] }]),
    ]);
    expect(addGate.code).not.toBe(0);
    expect(addGate.stderr).toMatch(/schedulingGates/);
    expect(gatesOf(await getPod("free"))).toEqual([]);
    await eventually("gauge counts the held pod", async () => (await metric("stowage_pods_gated")) >= 1);
  });

  it("releases a held pod when its ModelImage becomes Prewarmed, removing only its own gate", async () => {
    await createModelImage("triton", {
      image: "nvcr.io/nvidia/tritonserver:24.01",
      prewarm: { holdPods: true },
    });
    await eventually(
      "webhook cache has the ModelImage",
      () => webhook.modelImages.get("ml/triton") !== undefined,
    );
    const applied = await kubectl.apply([
      podManifest("infer", "nvcr.io/nvidia/tritonserver:24.01", {
        schedulingGates: [{ name: "example.com/quota" }],
      }),
    ]);
    expect(applied.code).toBe(0);
    expect(gatesOf(await getPod("infer"))).toEqual(["example.com/quota", GATE]);
    // Still held a moment later: nothing released it.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(gatesOf(await getPod("infer"))).toEqual(["example.com/quota", GATE]);

    await client.resource(ModelImageResource).patchStatus(
      "triton",
      {
        status: {
          conditions: [
            {
              type: "Prewarmed",
              status: "True",
              reason: "NodesWarm",
              message: "warm",
              lastTransitionTime: "2026-01-01T00:00:00Z",
            },
          ],
        },
      },
      "ml",
    );
    await eventually("gate removed", async () => !gatesOf(await getPod("infer")).includes(GATE));
    expect(gatesOf(await getPod("infer"))).toEqual(["example.com/quota"]);
    const histogram = await registry.getSingleMetric("stowage_pod_gate_seconds")?.get();
    const count = (
      (histogram?.values ?? []) as { metricName?: string; labels: Record<string, unknown>; value: number }[]
    ).find((v) => v.metricName === "stowage_pod_gate_seconds_count" && v.labels.outcome === "prewarmed");
    expect(count?.value).toBe(1);

    // Once Prewarmed, new pods are not held at all.
    await eventually("webhook cache sees Prewarmed", () =>
      (webhook.modelImages.get("ml/triton")?.status?.conditions ?? []).some((c) => c.type === "Prewarmed"),
    );
    await kubectl.apply([podManifest("infer-2", "nvcr.io/nvidia/tritonserver:24.01")]);
    expect(gatesOf(await getPod("infer-2"))).toEqual([]);
  });

  it("releases a held pod when its ModelImage is deleted", async () => {
    await createModelImage("gone", { image: "ghcr.io/acme/gone:1", prewarm: { holdPods: true } });
    await eventually(
      "webhook cache has the ModelImage",
      () => webhook.modelImages.get("ml/gone") !== undefined,
    );
    await kubectl.apply([podManifest("orphan", "ghcr.io/acme/gone:1")]);
    expect(gatesOf(await getPod("orphan"))).toEqual([GATE]);
    const deleted = await kubectl.run(["delete", "modelimage", "gone", "-n", "ml"]);
    expect(deleted.code).toBe(0);
    await eventually("gate removed", async () => gatesOf(await getPod("orphan")).length === 0);
  });

  it("releases a held pod after prewarm.holdTimeout with a Warning event saying the gate timed out", async () => {
    await createModelImage("slow", {
      image: "ghcr.io/acme/slow:1",
      prewarm: { holdPods: true, holdTimeout: "10m" },
    });
    await eventually(
      "webhook cache has the ModelImage",
      () => webhook.modelImages.get("ml/slow") !== undefined,
    );
    await kubectl.apply([podManifest("patient", "ghcr.io/acme/slow:1")]);
    expect(gatesOf(await getPod("patient"))).toEqual([GATE]);
    clock.offsetMs += 9 * 60_000;
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(gatesOf(await getPod("patient"))).toEqual([GATE]);
    clock.offsetMs += 2 * 60_000;
    await eventually(
      "gate removed after the timeout",
      async () => gatesOf(await getPod("patient")).length === 0,
    );
    expect(await metric("stowage_pod_gate_timeouts_total")).toBe(1);
    await eventually("timeout event recorded", async () => {
      const events: Json = await client.resource(Resources.Event).list({ namespace: "ml" });
      return events.items.some(
        (e: Json) =>
          e.regarding?.name === "patient" &&
          e.reason === "PrewarmHoldTimedOut" &&
          e.type === "Warning" &&
          /timed out/.test(e.note),
      );
    });
  });

  it("fails pod creation with failurePolicy Fail when the webhook is down, and lets it through unheld with Ignore", async () => {
    // No endpoint behind the webhook's address: connections are refused.
    await service.down();
    try {
      const refused = await kubectl.apply([podManifest("while-down", "ghcr.io/acme/llama:v3")]);
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toMatch(/failed calling webhook "pods.stowage.dev"/);
      expect(await client.resource(Resources.Pod).find("while-down", "ml")).toBeUndefined();

      const config: Json = await client.resource(MutatingWebhookConfigurationResource).get("stowage");
      config.webhooks[0].failurePolicy = "Ignore";
      await client.resource(MutatingWebhookConfigurationResource).update(config);
      // A real apiserver applies the new policy a moment after it is stored.
      await eventually("failurePolicy Ignore is in force", async () => {
        const dryRun = await kubectl.apply(
          [podManifest("while-down", "ghcr.io/acme/llama:v3")],
          ["--dry-run=server"],
        );
        return dryRun.code === 0;
      });
      const allowed = await kubectl.apply([podManifest("while-down", "ghcr.io/acme/llama:v3")]);
      expect(allowed.stderr).toBe("");
      expect(allowed.code).toBe(0);
      expect(gatesOf(await getPod("while-down"))).toEqual([]);
    } finally {
      await service.up();
    }
  });
});
