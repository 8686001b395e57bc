/**
 * Self-managed webhook certificates against the API (the double or the real apiserver), which
 * calls the webhook with the caBundle the certificates patched in, through a TCP proxy playing the
 * webhook's Service: pointing it at a replica is a Service routing to that replica. Time is real time plus an offset: the certificates are
 * issued "in the past" so that moving the clock to the present makes them due for rotation while
 * every certificate is still valid for the real TLS handshakes.
 */
import { X509Certificate } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type KubeClient, Resources } from "../../src/kube/client.ts";
import {
  type CertificateState,
  MutatingWebhookConfigurationResource,
  WebhookCertificates,
} from "../../src/webhook/certManager.ts";
import { splitPemBundle } from "../../src/webhook/certs.ts";
import { startWebhookServer, type WebhookServer } from "../../src/webhook/server.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { startTcpProxy, type TcpProxy } from "../../testkit/tcpProxy.ts";
import { OffsetClock } from "../controller/modelimage-harness.ts";
import { eventually, startCluster, waitForDefaultServiceAccount } from "../kube/helpers.ts";
import { type Json, servedCertificate } from "./helpers.ts";

const NS = "stowage-system";
const HOUR = 3600_000;

let api: TestCluster;
let client: KubeClient;
let service: TcpProxy;
const servers: WebhookServer[] = [];
let podCounter = 0;

const lookups = { modelImagesIn: () => [], namespaceLabels: () => undefined, controllerNamespace: NS };

beforeAll(async () => {
  ({ cluster: api, client } = await startCluster());
  for (const name of [NS, "apps"]) {
    await client.resource(Resources.Namespace).create({ metadata: { name } });
    await waitForDefaultServiceAccount(client, name);
  }
  service = await startTcpProxy({ port: 1 });
  await api.create({
    apiVersion: "admissionregistration.k8s.io/v1",
    kind: "MutatingWebhookConfiguration",
    metadata: { name: "stowage" },
    webhooks: [
      {
        name: "pods.stowage.dev",
        clientConfig: { url: `https://127.0.0.1:${service.port}/mutate-pods` },
        rules: [{ operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods"] }],
        failurePolicy: "Fail",
        sideEffects: "None",
        admissionReviewVersions: ["v1"],
        namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "apps" } },
      },
    ],
  });
});

afterAll(async () => {
  for (const server of servers) await server.close();
  await service?.stop();
  await api?.stop();
});

async function serve(state: CertificateState): Promise<WebhookServer> {
  const server = await startWebhookServer({
    host: "127.0.0.1",
    port: 0,
    certPem: state.certPem,
    keyPem: state.keyPem,
    lookups,
  });
  servers.push(server);
  return server;
}

/**
 * Routes the webhook's address to `server` and creates pods until one is `expected` (admitted or
 * refused): a real apiserver takes up a patched caBundle a moment after it is stored. Every
 * assertion that the bundle changed is made by an outcome only the new bundle can give.
 */
async function podAdmittedVia(
  server: WebhookServer,
  expected: "admitted" | "refused",
): Promise<{ ok: boolean; message?: string }> {
  service.retarget({ port: server.port });
  let outcome: { ok: boolean; message?: string } = { ok: false };
  await eventually(`a pod ${expected} through the replica on port ${server.port}`, async () => {
    const name = `p${++podCounter}`;
    try {
      await client.resource(Resources.Pod).create({
        metadata: { name, namespace: "apps" },
        spec: { containers: [{ name: "c", image: "alpine" }] },
      } as never);
      outcome = { ok: true };
    } catch (err) {
      outcome = { ok: false, message: (err as Error).message };
    }
    return outcome.ok === (expected === "admitted");
  }).catch(() => {});
  return outcome;
}

async function caBundleOfConfiguration(): Promise<string> {
  const config: Json = await client.resource(MutatingWebhookConfigurationResource).get("stowage");
  return Buffer.from(config.webhooks[0].clientConfig.caBundle, "base64").toString("utf8");
}

function fingerprint(pem: string): string {
  return new X509Certificate(pem).fingerprint256;
}

describe("self-managed webhook certificates", () => {
  it("issues, stores, publishes and rotates the CA, keeping the old CA in the bundle for the overlap only", async () => {
    const clock = new OffsetClock();
    clock.offsetMs = -2 * HOUR;
    const certificates = new WebhookCertificates({
      client,
      certManagement: "self",
      namespace: NS,
      secretName: "stowage-webhook-tls",
      serviceName: "stowage-webhook",
      webhookConfigurationName: "stowage",
      validityMs: 3 * HOUR,
      renewBeforeMs: 90 * 60_000,
      overlapMs: 30 * 60_000,
      clock,
    });

    const first = await certificates.reconcile();
    expect(splitPemBundle(first.caBundlePem)).toHaveLength(1);
    expect(await caBundleOfConfiguration()).toBe(first.caBundlePem);
    const oldReplica = await serve(first);
    expect(await podAdmittedVia(oldReplica, "admitted")).toEqual({ ok: true });
    const served = new X509Certificate(first.certPem);
    expect(served.subjectAltName).toContain(`DNS:stowage-webhook.${NS}.svc`);

    // Nothing is due: a second pass changes nothing, not even the Secret's resourceVersion.
    const secretBefore: Json = await client.resource(Resources.Secret).get("stowage-webhook-tls", NS);
    const again = await certificates.reconcile();
    expect(again.certPem).toBe(first.certPem);
    const secretAfter: Json = await client.resource(Resources.Secret).get("stowage-webhook-tls", NS);
    expect(secretAfter.metadata.resourceVersion).toBe(secretBefore.metadata.resourceVersion);

    // A replica that follows the certificates' changes.
    const newReplica = await serve(first);
    certificates.onChange((state) => newReplica.setCertificate(state.certPem, state.keyPem));

    // Two hours on, an hour is left of the 3 h validity (< 90 min): rotate.
    clock.offsetMs = 0;
    const rotated = await certificates.reconcile();
    expect(rotated.certPem).not.toBe(first.certPem);
    const bundle = splitPemBundle(rotated.caBundlePem);
    expect(bundle).toHaveLength(2);
    expect(fingerprint(bundle[1])).toBe(fingerprint(splitPemBundle(first.caBundlePem)[0]));
    expect(await caBundleOfConfiguration()).toBe(rotated.caBundlePem);
    const stored: Json = await client.resource(Resources.Secret).get("stowage-webhook-tls", NS);
    expect(Buffer.from(stored.data["tls.crt"], "base64").toString()).toBe(rotated.certPem);

    // The following replica serves the new certificate, which verifies with the new CA alone.
    expect(
      fingerprint(await servedCertificate(`https://127.0.0.1:${newReplica.port}/healthz`, bundle[0])),
    ).toBe(fingerprint(rotated.certPem));
    // Only the rotated bundle verifies the new certificate: from here on the apiserver uses it.
    expect(await podAdmittedVia(newReplica, "admitted")).toEqual({ ok: true });
    // A replica still serving the old certificate keeps working during the overlap.
    expect(await podAdmittedVia(oldReplica, "admitted")).toEqual({ ok: true });

    // After the overlap the old CA leaves the bundle: only the new certificate verifies.
    clock.offsetMs = 31 * 60_000;
    const settled = await certificates.reconcile();
    expect(settled.certPem).toBe(rotated.certPem);
    expect(splitPemBundle(settled.caBundlePem)).toHaveLength(1);
    expect(fingerprint(splitPemBundle(settled.caBundlePem)[0])).toBe(fingerprint(bundle[0]));
    expect(await caBundleOfConfiguration()).toBe(settled.caBundlePem);
    expect(await podAdmittedVia(newReplica, "admitted")).toEqual({ ok: true });
    const refused = await podAdmittedVia(oldReplica, "refused");
    expect(refused.ok).toBe(false);
    expect(refused.message).toMatch(/failed calling webhook "pods.stowage.dev"/);
  });

  it("a second replica reads the certificates the first one stored instead of issuing its own", async () => {
    const settings = {
      client,
      certManagement: "self" as const,
      namespace: NS,
      secretName: "shared-tls",
      serviceName: "stowage-webhook",
      webhookConfigurationName: "absent-configuration",
    };
    const one = await new WebhookCertificates(settings).reconcile();
    const two = await new WebhookCertificates(settings).reconcile();
    expect(two).toEqual(one);
  });

  it("re-issues a stored certificate that does not name a host added since (a webhook reached by URL)", async () => {
    const settings = {
      client,
      certManagement: "self" as const,
      namespace: NS,
      secretName: "renamed-tls",
      serviceName: "stowage-webhook",
      webhookConfigurationName: "absent-configuration",
    };
    const before = await new WebhookCertificates(settings).reconcile();
    const sans = (pem: string) => new X509Certificate(pem).subjectAltName ?? "";
    expect(sans(before.certPem)).not.toContain("webhook.ml.example.internal");

    const widened = {
      ...settings,
      extraDnsNames: ["webhook.ml.example.internal"],
      ipAddresses: ["127.0.0.1", "127.0.0.9"],
    };
    const after = await new WebhookCertificates(widened).reconcile();
    expect(sans(after.certPem)).toContain("DNS:webhook.ml.example.internal");
    expect(sans(after.certPem)).toContain("IP Address:127.0.0.9");
    expect(sans(after.certPem)).toContain("DNS:stowage-webhook.stowage-system.svc");
    // The CA that signed the certificates served so far stays trusted for the overlap.
    expect(splitPemBundle(after.caBundlePem)).toContain(splitPemBundle(before.caBundlePem)[0]);
    // Stable from then on: a second replica with the same names reads it, issues nothing.
    expect(await new WebhookCertificates(widened).reconcile()).toEqual(after);
  });

  it("replaces a Secret whose serving certificate was not signed by its CA", async () => {
    const settings = {
      client,
      certManagement: "self" as const,
      namespace: NS,
      secretName: "broken-tls",
      serviceName: "stowage-webhook",
      webhookConfigurationName: "absent-configuration",
    };
    const good = await new WebhookCertificates(settings).reconcile();
    const other = await new WebhookCertificates({ ...settings, secretName: "other-tls" }).reconcile();
    const secret: Json = await client.resource(Resources.Secret).get("broken-tls", NS);
    secret.data["ca.crt"] = Buffer.from(other.caBundlePem).toString("base64");
    await client.resource(Resources.Secret).update(secret);
    const repaired = await new WebhookCertificates(settings).reconcile();
    expect(repaired.certPem).not.toBe(good.certPem);
    expect(
      new X509Certificate(repaired.certPem).checkIssued(
        new X509Certificate(splitPemBundle(repaired.caBundlePem)[0]),
      ),
    ).toBe(true);
  });

  it("with certManagement external only reads the Secret and never writes the caBundle", async () => {
    const settings = {
      client,
      certManagement: "external" as const,
      namespace: NS,
      secretName: "issued-by-cert-manager",
      serviceName: "stowage-webhook",
      webhookConfigurationName: "stowage",
    };
    await expect(new WebhookCertificates(settings).reconcile()).rejects.toMatchObject({
      reason: "NotFound",
      message: expect.stringMatching(/issued-by-cert-manager.*cert-manager/),
    });
    const source = await new WebhookCertificates({
      ...settings,
      certManagement: "self",
      secretName: "source-tls",
      webhookConfigurationName: "absent",
    }).reconcile();
    await client.resource(Resources.Secret).create({
      metadata: { name: "issued-by-cert-manager", namespace: NS },
      type: "kubernetes.io/tls",
      data: {
        "tls.crt": Buffer.from(source.certPem).toString("base64"),
        "tls.key": Buffer.from(source.keyPem).toString("base64"),
        "ca.crt": Buffer.from(source.caBundlePem).toString("base64"),
      },
    } as never);
    const bundleBefore = await caBundleOfConfiguration();
    const external = await new WebhookCertificates(settings).reconcile();
    expect(external.certPem).toBe(source.certPem);
    expect(await caBundleOfConfiguration()).toBe(bundleBefore);
    const secret: Json = await client.resource(Resources.Secret).get("issued-by-cert-manager", NS);
    expect(secret.data["ca.key"]).toBeUndefined();
  });

  it("makes its Secret owned by the MutatingWebhookConfiguration, also one stored without an owner", async () => {
    const settings = {
      client,
      certManagement: "self" as const,
      namespace: NS,
      secretName: "owned-tls",
      serviceName: "stowage-webhook",
      webhookConfigurationName: "stowage",
    };
    const configuration: Json = await client.resource(MutatingWebhookConfigurationResource).get("stowage");
    const owner = {
      apiVersion: "admissionregistration.k8s.io/v1",
      kind: "MutatingWebhookConfiguration",
      name: "stowage",
      uid: configuration.metadata.uid,
    };
    const secrets = client.resource(Resources.Secret);
    await new WebhookCertificates(settings).reconcile();
    expect(((await secrets.get("owned-tls", NS)) as Json).metadata.ownerReferences).toEqual([owner]);

    // as a controller before owner references stored it: the next reconcile adds the owner
    await secrets.patch("owned-tls", { metadata: { ownerReferences: null } }, { namespace: NS });
    expect(((await secrets.get("owned-tls", NS)) as Json).metadata.ownerReferences).toBeUndefined();
    await new WebhookCertificates(settings).reconcile();
    const owned: Json = await secrets.get("owned-tls", NS);
    expect(owned.metadata.ownerReferences).toEqual([owner]);
    // and then it is left alone
    await new WebhookCertificates(settings).reconcile();
    expect(((await secrets.get("owned-tls", NS)) as Json).metadata.resourceVersion).toBe(
      owned.metadata.resourceVersion,
    );
  });
});
