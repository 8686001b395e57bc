/**
 * `stowage controller --webhook-port N` as a child process: it issues its own certificate, patches
 * the caBundle, serves the webhook the API server (the double or the real one, through a loopback
 * `clientConfig.url`) calls for `kubectl apply`, and releases the pod.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadCrd } from "../../src/api/crds.ts";
import { ModelImageResource } from "../../src/api/modelImage.ts";
import { parseControllerArgs } from "../../src/controller/command.ts";
import { type KubeClient, type KubeObject, Resources } from "../../src/kube/client.ts";
import { MutatingWebhookConfigurationResource } from "../../src/webhook/certManager.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { freePort } from "../../testkit/ports.ts";
import { eventually, Kubectl, startCluster, waitForDefaultServiceAccount } from "../kube/helpers.ts";

// biome-ignore lint/suspicious/noExplicitAny: objects read back as free-form JSON
type Json = any;

const NS = "stowage-system";
let api: TestCluster;
let client: KubeClient;
let kubectl: Kubectl;
let controller: ControllerProcess;
let webhookPort: number;

beforeAll(async () => {
  ({ cluster: api, client } = await startCluster({ crds: [loadCrd("modelimages.stowage.dev") as never] }));
  kubectl = new Kubectl(api.kubeconfigPath);
  for (const name of [NS, "ml"]) {
    await client.resource(Resources.Namespace).create({ metadata: { name } });
    await waitForDefaultServiceAccount(client, name);
  }
  webhookPort = await freePort();
  await api.create({
    apiVersion: "admissionregistration.k8s.io/v1",
    kind: "MutatingWebhookConfiguration",
    metadata: { name: "stowage" },
    webhooks: [
      {
        name: "pods.stowage.dev",
        clientConfig: { url: `https://127.0.0.1:${webhookPort}/mutate-pods` },
        rules: [{ operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods"] }],
        failurePolicy: "Fail",
        sideEffects: "None",
        admissionReviewVersions: ["v1"],
      },
    ],
  });
  controller = await startControllerProcess({
    kubeconfig: api.kubeconfigPath,
    // Nothing listens there: mirroring fails, which this test does not need.
    cacheRegistry: "http://127.0.0.1:1",
    args: ["--webhook-port", String(webhookPort), "--webhook-namespace", NS, "--leader-elect=false"],
  });
}, 60_000);

afterAll(async () => {
  const exit = await controller?.kill("SIGTERM");
  kubectl?.cleanup();
  await api?.stop();
  expect(exit?.code).toBe(0);
});

describe("stowage controller with the admission webhook enabled", () => {
  it("holds a kubectl-applied pod over real TLS and releases it when its ModelImage is deleted", async () => {
    await eventually("caBundle patched", async () => {
      const config: Json = await client.resource(MutatingWebhookConfigurationResource).get("stowage");
      return typeof config.webhooks[0].clientConfig.caBundle === "string";
    });
    const secret: Json = await client.resource(Resources.Secret).get("stowage-webhook-tls", NS);
    expect(secret.type).toBe("kubernetes.io/tls");

    await client.resource(ModelImageResource).create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "ModelImage",
      metadata: { name: "llama", namespace: "ml" },
      spec: { image: "127.0.0.1:1/acme/llama:v3", prewarm: { holdPods: true } },
    } as KubeObject);
    const servePod = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "serve", namespace: "ml" },
      spec: { containers: [{ name: "serve", image: "127.0.0.1:1/acme/llama:v3" }] },
    };
    // The webhook answers from its informer cache, and a real apiserver takes the configuration
    // and the patched caBundle up a moment later: wait until a server-side dry run is held.
    await eventually("a pod is held", async () => {
      const dryRun = await kubectl.apply([servePod], ["--dry-run=server", "-o", "json"]);
      if (dryRun.code !== 0) return false;
      const gates: Json[] = JSON.parse(dryRun.stdout).spec.schedulingGates ?? [];
      return gates.some((g) => g.name === "stowage.dev/prewarm");
    });
    const applied = await kubectl.apply([servePod]);
    expect(applied.stderr).toBe("");
    expect(applied.code).toBe(0);
    const held: Json = await client.resource(Resources.Pod).get("serve", "ml");
    expect(held.spec.schedulingGates).toEqual([{ name: "stowage.dev/prewarm" }]);
    expect(held.metadata.annotations["stowage.dev/held-for"]).toBe("ml/llama");

    const metricsBefore = await controller.health("/metrics");
    expect(metricsBefore.body).toMatch(/^stowage_pods_gated [1-9]/m);

    const deleted = await kubectl.run(["delete", "modelimage", "llama", "-n", "ml", "--wait=false"]);
    expect(deleted.code).toBe(0);
    await eventually("the held pod is released", async () => {
      const pod: Json = await client.resource(Resources.Pod).get(held.metadata.name, "ml");
      return (pod.spec.schedulingGates ?? []).length === 0;
    });
    // The test can see the released pod before the controller has observed its own patch's
    // answer (a CI run read the metric in between): wait for the count, then check the rest.
    await eventually("the release counted", async () =>
      /^stowage_pod_gate_seconds_count\{outcome="deleted"\} [1-9]/m.test(
        (await controller.health("/metrics")).body,
      ),
    );
    const metrics = await controller.health("/metrics");
    expect(metrics.body).toMatch(/^stowage_pod_gate_seconds_count\{outcome="deleted"\} [1-9]/m);
    expect(metrics.body).toMatch(/^stowage_pod_gate_timeouts_total 0/m);
  });
});

describe("webhook flags of stowage controller", () => {
  const base = ["--cache-registry", "http://127.0.0.1:5000"];

  it("leaves the webhook off unless a port is given, and reads the chart's STOWAGE_WEBHOOK_* variables", async () => {
    const off = await parseControllerArgs(base, {});
    expect(off !== "help" && off.webhook).toBeUndefined();
    const fromEnv = await parseControllerArgs(base, {
      POD_NAMESPACE: "stowage",
      STOWAGE_WEBHOOK_PORT: "9443",
      STOWAGE_WEBHOOK_SERVICE: "rel-stowage-webhook",
      STOWAGE_WEBHOOK_CONFIGURATION: "rel-stowage-webhook",
      STOWAGE_WEBHOOK_CERT_SECRET: "rel-stowage-webhook-tls",
      STOWAGE_WEBHOOK_CERT_MANAGEMENT: "external",
    });
    expect(fromEnv !== "help" && fromEnv.webhook).toEqual({
      port: 9443,
      namespace: "stowage",
      service: "rel-stowage-webhook",
      configuration: "rel-stowage-webhook",
      certSecret: "rel-stowage-webhook-tls",
      certManagement: "external",
      certHosts: { dnsNames: [], ipAddresses: [] },
    });
  });

  it("names the --webhook-cert-host values in the certificate, IP addresses apart, and refuses anything else", async () => {
    const parsed = await parseControllerArgs(
      [
        ...base,
        "--webhook-port=9443",
        "--webhook-cert-host=Webhook.ML.internal",
        "--webhook-cert-host=10.1.2.3",
        "--webhook-cert-host=[fd00::5]",
      ],
      {},
    );
    expect(parsed !== "help" && parsed.webhook?.certHosts).toEqual({
      dnsNames: ["webhook.ml.internal"],
      ipAddresses: ["10.1.2.3", "fd00::5"],
    });
    await expect(
      parseControllerArgs([...base, "--webhook-port=9443", "--webhook-cert-host=https://x:9443/p"], {}),
    ).rejects.toThrow('--webhook-cert-host must be a DNS name or an IP address, got "https://x:9443/p"');
  });

  it("refuses a certificate management mode other than self or external", async () => {
    await expect(
      parseControllerArgs([...base, "--webhook-port", "9443", "--webhook-cert-management", "manual"], {}),
    ).rejects.toThrow(/--webhook-cert-management must be self or external/);
  });
});
