/**
 * The real control plane the real-k8s tier runs on (testkit/controlplane): what the suites lean
 * on works for real: garbage collection of owned objects, the scheduler placing a pod released
 * from its gate, authentication of every identity kind with RBAC refusing what is not granted,
 * and admission webhooks on loopback.
 */

import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadCrd } from "../../src/api/crds.ts";
import type { KubeObject } from "../../testkit/apiserver/index.ts";
import { type ControlPlane, startControlPlane } from "../../testkit/controlplane/index.ts";
import { k8sBin } from "../../testkit/k8sTools.ts";
import { makeServerCertificate } from "../../testkit/tls.ts";
import { eventually } from "../e2e/helpers.ts";
import { run } from "../support/run.ts";

let plane: ControlPlane;
const staticToken = `ci-bot-${Math.random().toString(36).slice(2)}`;

beforeAll(async () => {
  plane = await startControlPlane({
    users: { [staticToken]: { name: "ci-bot", groups: ["ci"] } },
    crds: [loadCrd("stowage.dev_nodecaches")],
  });
});

afterAll(async () => {
  await plane?.stop();
});

function kubectl(kubeconfig: string, args: string[], stdin?: string) {
  return run(k8sBin("kubectl"), ["--kubeconfig", kubeconfig, ...args], {}, stdin);
}

async function ok(status: number, what: string, body: unknown): Promise<void> {
  if (status >= 300) throw new Error(`${what}: ${status} ${JSON.stringify(body)}`);
}

async function createReadyNode(name: string, labels: Record<string, string> = {}): Promise<void> {
  const created = await plane.request("POST", "/api/v1/nodes", {
    apiVersion: "v1",
    kind: "Node",
    metadata: { name, labels: { "kubernetes.io/hostname": name, ...labels } },
  });
  await ok(created.status, `create node ${name}`, created.body);
  const status = await plane.request(
    "PATCH",
    `/api/v1/nodes/${name}/status`,
    {
      status: {
        conditions: [
          {
            type: "Ready",
            status: "True",
            reason: "KubeletReady",
            lastHeartbeatTime: new Date().toISOString(),
          },
        ],
        allocatable: { cpu: "8", memory: "32Gi", pods: "110" },
        capacity: { cpu: "8", memory: "32Gi", pods: "110" },
      },
    },
    "application/merge-patch+json",
  );
  await ok(status.status, `node ${name} status`, status.body);
}

describe("the real control plane", () => {
  it("reports the pinned Kubernetes release", async () => {
    const version = await plane.request("GET", "/version");
    expect(version.status).toBe(200);
    expect(version.body.gitVersion).toMatch(/^v1\.37\.\d+$/);
  });

  it("deletes a NodeCache with the Node that owns it (garbage collector)", async () => {
    await createReadyNode("gc-node");
    const node = await plane.request("GET", "/api/v1/nodes/gc-node");
    const nodeCache: KubeObject = {
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: {
        name: "gc-node",
        ownerReferences: [{ apiVersion: "v1", kind: "Node", name: "gc-node", uid: node.body.metadata.uid }],
      },
      spec: { nodeName: "gc-node", images: [] },
    };
    const created = await plane.request("POST", "/apis/stowage.dev/v1alpha1/nodecaches", nodeCache);
    await ok(created.status, "create nodecache", created.body);
    await ok((await plane.request("DELETE", "/api/v1/nodes/gc-node")).status, "delete node", "");
    await eventually(
      "the NodeCache is collected with its Node",
      async () =>
        (await plane.request("GET", "/apis/stowage.dev/v1alpha1/nodecaches/gc-node")).status === 404,
      30_000,
    );
  });

  it("schedules a pod only once its scheduling gate is lifted, onto the node it prefers", async () => {
    await createReadyNode("cold-node");
    await createReadyNode("warm-node", { "warm.stowage.dev/default.llama": "true" });
    const pod = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "held", namespace: "default" },
      spec: {
        schedulingGates: [{ name: "stowage.dev/prewarm" }],
        affinity: {
          nodeAffinity: {
            preferredDuringSchedulingIgnoredDuringExecution: [
              {
                weight: 100,
                preference: {
                  matchExpressions: [
                    { key: "warm.stowage.dev/default.llama", operator: "In", values: ["true"] },
                  ],
                },
              },
            ],
          },
        },
        containers: [{ name: "serve", image: "registry.invalid/llama:1" }],
      },
    };
    await ok((await plane.request("POST", "/api/v1/namespaces/default/pods", pod)).status, "create pod", "");
    // Held: the scheduler reports it gated and leaves nodeName empty.
    const held = await eventually("the pod is reported as gated", async () => {
      const got = await plane.request("GET", "/api/v1/namespaces/default/pods/held");
      const scheduled = (got.body.status?.conditions ?? []).find(
        (c: { type: string }) => c.type === "PodScheduled",
      );
      return scheduled?.reason === "SchedulingGated" ? got.body : undefined;
    });
    expect(held.spec.nodeName).toBeUndefined();
    const lifted = await plane.request(
      "PATCH",
      "/api/v1/namespaces/default/pods/held",
      [{ op: "remove", path: "/spec/schedulingGates" }],
      "application/json-patch+json",
    );
    await ok(lifted.status, "lift gate", lifted.body);
    const nodeName = await eventually("the pod is scheduled", async () => {
      const got = await plane.request("GET", "/api/v1/namespaces/default/pods/held");
      return got.body.spec.nodeName as string | undefined;
    });
    expect(nodeName).toBe("warm-node");
  });

  it("authenticates certificate, static-token and service-account identities, and RBAC refuses what none was granted", async () => {
    const alice = await plane.kubeconfigForUser("alice", ["ml-team"]);
    const bot = await plane.kubeconfigForToken(staticToken, "ci-bot");
    const sa = await plane.kubeconfigForServiceAccount("default", "reader");
    const who = async (kubeconfig: string) => {
      const res = await kubectl(kubeconfig, ["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
      expect(res.code, res.stderr).toBe(0);
      return res.stdout;
    };
    expect(await who(alice.kubeconfigPath)).toBe("alice");
    expect(await who(bot.kubeconfigPath)).toBe("ci-bot");
    expect(await who(sa.kubeconfigPath)).toBe("system:serviceaccount:default:reader");

    const denied = await kubectl(sa.kubeconfigPath, ["get", "configmaps", "-n", "default"]);
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toContain(
      'User "system:serviceaccount:default:reader" cannot list resource "configmaps"',
    );

    const grant = await kubectl(plane.kubeconfigPath, [
      "create",
      "rolebinding",
      "reader-view",
      "--clusterrole=view",
      "--serviceaccount=default:reader",
      "-n",
      "default",
    ]);
    expect(grant.code, grant.stderr).toBe(0);
    const allowed = await eventually("the binding takes effect", async () => {
      const res = await kubectl(sa.kubeconfigPath, ["get", "configmaps", "-n", "default", "-o", "name"]);
      return res.code === 0 ? res : undefined;
    });
    expect(allowed.stdout).toContain("configmap/kube-root-ca.crt");
    // The group from the certificate's O= counts too: ml-team may not, alice-the-user may not.
    const aliceDenied = await kubectl(alice.kubeconfigPath, ["get", "pods", "-n", "default"]);
    expect(aliceDenied.stderr).toContain('User "alice" cannot list resource "pods"');
  });

  describe("admission webhooks", () => {
    let server: Server;
    let dir: string;
    let calls = 0;

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "stowage-webhook-"));
      const cert = await makeServerCertificate(dir);
      server = createServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
        let body = "";
        req.on("data", (c) => {
          body += c;
        });
        req.on("end", () => {
          calls++;
          const review = JSON.parse(body);
          const patch = [
            { op: "add", path: "/metadata/labels", value: { "mutated-by": "loopback-webhook" } },
          ];
          res.setHeader("content-type", "application/json");
          res.end(
            JSON.stringify({
              apiVersion: "admission.k8s.io/v1",
              kind: "AdmissionReview",
              response: {
                uid: review.request.uid,
                allowed: true,
                patchType: "JSONPatch",
                patch: Buffer.from(JSON.stringify(patch)).toString("base64"),
              },
            }),
          );
        });
      });
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const port = (server.address() as { port: number }).port;
      const config = {
        apiVersion: "admissionregistration.k8s.io/v1",
        kind: "MutatingWebhookConfiguration",
        metadata: { name: "loopback" },
        webhooks: [
          {
            name: "loopback.stowage.dev",
            clientConfig: {
              url: `https://127.0.0.1:${port}/mutate`,
              caBundle: Buffer.from(cert.caPem).toString("base64"),
            },
            rules: [
              { apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE"], resources: ["configmaps"] },
            ],
            objectSelector: { matchLabels: { "webhook-test": "yes" } },
            admissionReviewVersions: ["v1"],
            sideEffects: "None",
            failurePolicy: "Fail",
            timeoutSeconds: 5,
          },
        ],
      };
      const created = await plane.request(
        "POST",
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        config,
      );
      await ok(created.status, "webhook config", created.body);
    });

    afterAll(async () => {
      server?.close();
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it("calls a mutating webhook served on 127.0.0.1 and applies its patch", async () => {
      const created = await eventually("the webhook mutates a new ConfigMap", async () => {
        const name = `mutated-${Math.random().toString(36).slice(2, 8)}`;
        const res = await plane.request("POST", "/api/v1/namespaces/default/configmaps", {
          apiVersion: "v1",
          kind: "ConfigMap",
          metadata: { name, labels: { "webhook-test": "yes" } },
        });
        return res.status === 201 && res.body.metadata.labels?.["mutated-by"] ? res.body : undefined;
      });
      expect(created.metadata.labels["mutated-by"]).toBe("loopback-webhook");
      expect(calls).toBeGreaterThan(0);
    });
  });
});
