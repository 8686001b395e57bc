/**
 * Ways a test makes the Kubernetes API misbehave that work alike on the API double and on the
 * real apiserver, because they are what happens to a real cluster: the connections of a client
 * cut (a load balancer resetting, an apiserver restarting), the apiserver unreachable for a
 * while, and writes refused by an admission webhook.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KubeClient } from "../../src/kube/client.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { startTcpProxy, type TcpProxy, type TcpProxyOptions } from "../../testkit/tcpProxy.ts";
import { makeServerCertificate } from "../../testkit/tls.ts";
import { eventually } from "./helpers.ts";

export interface CuttableClient {
  client: KubeClient;
  /** a kubeconfig that reaches the API through `proxy` */
  kubeconfigPath: string;
  proxy: TcpProxy;
  stop(): Promise<void>;
}

/**
 * A client (the admin's, or the identity of `kubeconfig`) whose connections to the API pass
 * through a TCP proxy the test can cut. TLS stays end to end: the apiserver's certificate names
 * 127.0.0.1, whatever the port.
 */
export async function cuttableClient(
  cluster: TestCluster,
  options: TcpProxyOptions & { kubeconfig?: string } = {},
): Promise<CuttableClient> {
  const api = new URL(cluster.url);
  const proxy = await startTcpProxy({ host: api.hostname, port: Number(api.port) }, options);
  const dir = mkdtempSync(join(tmpdir(), "stowage-cuttable-"));
  const kubeconfigPath = join(dir, "kubeconfig");
  writeFileSync(kubeconfigPath, (options.kubeconfig ?? cluster.kubeconfig).replaceAll(api.host, proxy.host), {
    mode: 0o600,
  });
  const client = KubeClient.load({ path: kubeconfigPath });
  return {
    client,
    kubeconfigPath,
    proxy,
    async stop() {
      client.close();
      await proxy.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface AdmissionRequestSeen {
  operation: string;
  namespace?: string;
  name?: string;
  dryRun: boolean;
  object?: Record<string, unknown>;
}

export interface RefusingWebhook {
  /** while true, every write the rules match is denied with the message */
  refusing: boolean;
  /** what the apiserver sent, oldest first (dry runs included) */
  requests: AdmissionRequestSeen[];
  stop(): Promise<void>;
}

export interface RefusingWebhookOptions {
  /** the MutatingWebhookConfiguration's name */
  name: string;
  rules: { operations: string[]; apiGroups: string[]; apiVersions: string[]; resources: string[] }[];
  /** only writes in this namespace are sent to the webhook */
  namespace: string;
  message: string;
  /**
   * A dry-run write the rules match. A real apiserver picks a new webhook configuration up a
   * moment after it is stored; the webhook is in force once a dry run of this reached it.
   */
  probe: () => Promise<unknown>;
}

/**
 * An admission webhook on 127.0.0.1 (registered with `clientConfig.url`, as the real apiserver
 * requires for loopback) that records what it is sent and denies it while `refusing` is set.
 */
export async function startRefusingWebhook(
  client: KubeClient,
  options: RefusingWebhookOptions,
): Promise<RefusingWebhook> {
  const dir = mkdtempSync(join(tmpdir(), "stowage-refusing-webhook-"));
  const cert = await makeServerCertificate(dir);
  const hook: RefusingWebhook = {
    refusing: false,
    requests: [],
    async stop() {
      await client
        .request(
          "DELETE",
          `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/${options.name}`,
        )
        .catch(() => {});
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
  const server: Server = createServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
    let body = "";
    req.on("data", (chunk) => {
      body += chunk;
    });
    req.on("end", () => {
      const request = JSON.parse(body).request;
      hook.requests.push({
        operation: request.operation,
        namespace: request.namespace,
        name: request.name,
        dryRun: request.dryRun === true,
        object: request.object ?? undefined,
      });
      const denied = hook.refusing && request.dryRun !== true;
      res.setHeader("content-type", "application/json");
      res.end(
        JSON.stringify({
          apiVersion: "admission.k8s.io/v1",
          kind: "AdmissionReview",
          response: {
            uid: request.uid,
            allowed: !denied,
            ...(denied ? { status: { code: 403, reason: "Forbidden", message: options.message } } : {}),
          },
        }),
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  await client.request("POST", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", {
    body: {
      apiVersion: "admissionregistration.k8s.io/v1",
      kind: "MutatingWebhookConfiguration",
      metadata: { name: options.name },
      webhooks: [
        {
          name: `${options.name}.test.stowage.dev`,
          clientConfig: {
            url: `https://127.0.0.1:${port}/review`,
            caBundle: Buffer.from(cert.caPem).toString("base64"),
          },
          rules: options.rules,
          namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": options.namespace } },
          failurePolicy: "Fail",
          sideEffects: "None",
          admissionReviewVersions: ["v1"],
          timeoutSeconds: 5,
        },
      ],
    },
  });
  await eventually("the webhook is in force", async () => {
    await options.probe();
    return hook.requests.some((r) => r.dryRun);
  });
  return hook;
}
