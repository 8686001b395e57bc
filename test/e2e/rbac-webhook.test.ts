/**
 * The webhook's RBAC proved, not claimed: the real `stowage controller --webhook-port` runs as the
 * chart's ServiceAccount bound to exactly the rules the chart renders with webhook.enabled
 * (controller-cluster + controller-webhook in the cluster ClusterRole, controller-leader-election +
 * controller-webhook-namespace in the release-namespace Role, controller-namespaced everywhere),
 * against an API double that enforces RBAC and calls the webhook over TLS for kubectl-applied pods.
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { loadCrd } from "../../src/api/crds.ts";
import { ModelImageResource } from "../../src/api/modelImage.ts";
import { KubeClient, Resources } from "../../src/kube/client.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { MutatingWebhookConfigurationResource } from "../../src/webhook/certManager.ts";
import { startApiServer, type TestApiServer } from "../../testkit/apiserver/index.ts";
import { addServiceAccountUser } from "../../testkit/apiserver/rbac.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { Kubectl } from "../apiserver/helpers.ts";
import { eventually, modelImage, root } from "./helpers.ts";

// biome-ignore lint/suspicious/noExplicitAny: objects read back as free-form JSON
type Json = any;

const releaseNamespace = "stowage-system";
const serviceAccount = "stowage-controller";
const rbacGroup = "rbac.authorization.k8s.io";
const gate = "stowage.dev/prewarm";

type Rule = { apiGroups: string[]; resources: string[]; verbs: string[] };

async function chartRules(file: string): Promise<Rule[]> {
  return parse(await readFile(join(root, "charts/stowage/files/rbac", file), "utf8")) as Rule[];
}

const subjects = [{ kind: "ServiceAccount", name: serviceAccount, namespace: releaseNamespace }];
const roleRef = (kind: string, name: string) => ({ apiGroup: rbacGroup, kind, name });

/** What templates/controller-rbac.yaml renders for release "stowage" with webhook.enabled (all namespaces). */
async function controllerWebhookRbac(dropRule?: (rule: Rule) => boolean): Promise<object[]> {
  const keep = (rules: Rule[]) => rules.filter((r) => !dropRule?.(r));
  const binding = (kind: string, name: string, namespace?: string) => ({
    apiVersion: `${rbacGroup}/v1`,
    kind: kind === "Role" ? "RoleBinding" : "ClusterRoleBinding",
    metadata: { name, ...(namespace ? { namespace } : {}) },
    roleRef: roleRef(kind, name),
    subjects,
  });
  return [
    {
      apiVersion: `${rbacGroup}/v1`,
      kind: "ClusterRole",
      metadata: { name: "stowage-controller-cluster" },
      rules: keep([
        ...(await chartRules("controller-cluster.yaml")),
        ...(await chartRules("controller-webhook.yaml")),
      ]),
    },
    binding("ClusterRole", "stowage-controller-cluster"),
    {
      apiVersion: `${rbacGroup}/v1`,
      kind: "ClusterRole",
      metadata: { name: "stowage-controller-namespaced" },
      rules: keep(await chartRules("controller-namespaced.yaml")),
    },
    binding("ClusterRole", "stowage-controller-namespaced"),
    {
      apiVersion: `${rbacGroup}/v1`,
      kind: "Role",
      metadata: { name: "stowage-controller-leader-election", namespace: releaseNamespace },
      rules: keep([
        ...(await chartRules("controller-leader-election.yaml")),
        ...(await chartRules("controller-webhook-namespace.yaml")),
      ]),
    },
    binding("Role", "stowage-controller-leader-election", releaseNamespace),
  ];
}

const webhookConfiguration = {
  apiVersion: "admissionregistration.k8s.io/v1",
  kind: "MutatingWebhookConfiguration",
  metadata: { name: "stowage" },
  webhooks: [
    {
      name: "pods.stowage.dev",
      clientConfig: {
        service: { namespace: releaseNamespace, name: "stowage-webhook", path: "/mutate-pods", port: 443 },
      },
      rules: [{ operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods"] }],
      failurePolicy: "Fail",
      sideEffects: "None",
      admissionReviewVersions: ["v1"],
      timeoutSeconds: 5,
    },
  ],
};

interface Env {
  api: TestApiServer;
  admin: KubeClient;
  kubectl: Kubectl;
  dir: string;
  controller?: ControllerProcess;
}

/** An RBAC-enforcing API double with the chart's webhook RBAC applied, and the controller running as its ServiceAccount. */
async function startEnv(dropRule?: (rule: Rule) => boolean, waitReady = true): Promise<Env> {
  const api = await startApiServer({
    rbac: true,
    crds: [loadCrd("stowage.dev_modelimages") as never],
  });
  const dir = await mkdtemp(join(tmpdir(), "stowage-rbac-webhook-"));
  const admin = KubeClient.load({ path: api.kubeconfigPath });
  const kubectl = new Kubectl(api);
  const env: Env = { api, admin, kubectl, dir };
  for (const name of [releaseNamespace, "ml"])
    await admin.resource(Resources.Namespace).create({ metadata: { name } });
  const applied = await kubectl.apply(await controllerWebhookRbac(dropRule));
  if (applied.code !== 0) throw new Error(`kubectl apply failed: ${applied.stderr}`);
  await api.create(webhookConfiguration as never);
  const webhookPort = await freePort();
  api.webhookServices.set(`stowage-webhook.${releaseNamespace}:443`, `127.0.0.1:${webhookPort}`);
  const kubeconfig = addServiceAccountUser(
    api,
    releaseNamespace,
    serviceAccount,
    join(dir, "controller.kubeconfig"),
  );
  api.resetRequestLog();
  env.controller = await startControllerProcess({
    kubeconfig,
    cacheRegistry: cache.url,
    args: [
      "--insecure-registry",
      upstream.host,
      "--webhook-port",
      String(webhookPort),
      "--webhook-namespace",
      releaseNamespace,
    ],
    waitReady,
  });
  return env;
}

async function stopEnv(env: Env | undefined): Promise<void> {
  if (!env) return;
  await env.controller?.kill("SIGTERM");
  env.kubectl.cleanup();
  env.admin.close();
  await env.api.stop();
  await rm(env.dir, { recursive: true, force: true });
}

async function caBundleOf(env: Env): Promise<string | undefined> {
  const config: Json = await env.admin.resource(MutatingWebhookConfigurationResource).get("stowage");
  return config.webhooks[0].clientConfig.caBundle;
}

function forbidden(env: Env) {
  return env.api.requestLog().filter((entry) => entry.status === 403);
}

let upstream: RunningRegistry;
let cache: RunningRegistry;
let image: string;

beforeAll(async () => {
  [upstream, cache] = await Promise.all([startRegistry(), startRegistry()]);
  const owner = new RegistryClient({ insecureHosts: [upstream.host] });
  await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "team/model" }, "v1");
  await owner.close();
  image = `${upstream.host}/team/model:v1`;
}, 60_000);

afterAll(async () => {
  await Promise.all([upstream?.stop(), cache?.stop()]);
});

describe("the controller's admission webhook with exactly the chart's RBAC", () => {
  let env: Env | undefined;

  beforeAll(async () => {
    env = await startEnv();
  }, 60_000);

  afterAll(async () => {
    await stopEnv(env);
  });

  it("creates its certificate Secret, patches the caBundle, holds a kubectl-applied pod and releases it once Prewarmed, without a single 403", async () => {
    const e = env as Env;
    await eventually("caBundle patched", async () => typeof (await caBundleOf(e)) === "string");
    const secret: Json = await e.admin
      .resource(Resources.Secret)
      .get("stowage-webhook-tls", releaseNamespace);
    expect(secret.type).toBe("kubernetes.io/tls");
    expect(Buffer.from(secret.data["ca.crt"] ?? "", "base64").toString("utf8")).toBe(
      Buffer.from((await caBundleOf(e)) ?? "", "base64").toString("utf8"),
    );

    const created = await e.kubectl.apply([
      modelImage("team-model", { image, prewarm: { holdPods: true } }, "ml"),
    ]);
    expect(created.code).toBe(0);
    // The webhook answers from its informer cache; wait until a pod is actually held.
    let attempt = 0;
    let held: Json;
    await eventually("a pod is held", async () => {
      const name = `serve-${++attempt}`;
      const applied = await e.kubectl.apply([
        {
          apiVersion: "v1",
          kind: "Pod",
          metadata: { name, namespace: "ml" },
          spec: { containers: [{ name: "serve", image }] },
        },
      ]);
      if (applied.code !== 0) throw new Error(applied.stderr);
      held = await e.admin.resource(Resources.Pod).get(name, "ml");
      return (held.spec.schedulingGates ?? []).some((g: Json) => g.name === gate);
    });
    expect(held.metadata.annotations["stowage.dev/held-for"]).toBe("ml/team-model");

    // Mirrored (Ready without a planner) first, so the controller's status is settled.
    await eventually("ml/team-model Ready", async () => {
      const mi: Json = await e.admin.resource(ModelImageResource).get("team-model", "ml");
      return (mi.status?.conditions ?? []).some((c: Json) => c.type === "Ready" && c.status === "True");
    });
    // What the pre-warm planner reports once every selected node has the image, next to the
    // controller's own conditions.
    const current: Json = await e.admin.resource(ModelImageResource).get("team-model", "ml");
    const prewarmed = await e.kubectl.run([
      "patch",
      "modelimage",
      "team-model",
      "-n",
      "ml",
      "--subresource=status",
      "--type=merge",
      "-p",
      JSON.stringify({
        metadata: { resourceVersion: current.metadata.resourceVersion },
        status: {
          conditions: [
            ...current.status.conditions,
            {
              type: "Prewarmed",
              status: "True",
              reason: "NodesWarm",
              message: "every selected node has the image",
              lastTransitionTime: "2026-01-01T00:00:00Z",
            },
          ],
        },
      }),
    ]);
    expect(prewarmed.code, prewarmed.stderr).toBe(0);
    await eventually("the held pod is released", async () => {
      const pod: Json = await e.admin.resource(Resources.Pod).get(held.metadata.name, "ml");
      return (pod.spec.schedulingGates ?? []).length === 0;
    });
    expect(forbidden(e)).toEqual([]);
    // The writes the webhook's permissions exist for did happen, as the ServiceAccount.
    const succeeded = (method: string, path: string) =>
      e.api.requestLog().some((r) => r.method === method && r.path === path && r.status < 300);
    expect(succeeded("POST", `/api/v1/namespaces/${releaseNamespace}/secrets`)).toBe(true);
    expect(
      succeeded("PATCH", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/stowage"),
    ).toBe(true);
    expect(succeeded("PATCH", `/api/v1/namespaces/ml/pods/${held.metadata.name}`)).toBe(true);
  });
});

// Each webhook rule the chart adds, and what refuses without it. (The core "events" rule is a
// fallback for clusters without events.k8s.io/v1 and is not exercised here.)
const webhookRules: {
  resource: string;
  path: RegExp;
  consequence: string;
  /** What else visibly failed, checked after the 403. */
  check?: (env: Env) => Promise<void>;
}[] = [
  {
    resource: "mutatingwebhookconfigurations",
    path: /\/mutatingwebhookconfigurations/,
    consequence: "the caBundle is never patched",
    check: async (env) => expect(await caBundleOf(env)).toBeUndefined(),
  },
  {
    resource: "secrets",
    path: /\/namespaces\/stowage-system\/secrets/,
    consequence: "no certificate Secret is created and the caBundle stays unset",
    check: async (env) => {
      expect(
        await env.admin.resource(Resources.Secret).find("stowage-webhook-tls", releaseNamespace),
      ).toBeUndefined();
      expect(await caBundleOf(env)).toBeUndefined();
    },
  },
  { resource: "pods", path: /\/pods/, consequence: "held pods cannot be watched to be released" },
  {
    resource: "namespaces",
    path: /\/api\/v1\/namespaces(\?|$)/,
    consequence: "the webhook cannot see namespace opt-outs",
  },
];

describe("the controller's admission webhook with one of the chart's webhook rules taken away", () => {
  for (const { resource, path, consequence, check } of webhookRules) {
    it(`is refused (403) without the ${resource} rule: ${consequence}`, async () => {
      const fromWebhookFiles = new Set(
        [
          ...(await chartRules("controller-webhook.yaml")),
          ...(await chartRules("controller-webhook-namespace.yaml")),
        ].map((r) => JSON.stringify(r)),
      );
      let dropped = 0;
      const env = await startEnv((rule) => {
        const drop = fromWebhookFiles.has(JSON.stringify(rule)) && rule.resources.includes(resource);
        if (drop) dropped++;
        return drop;
      }, false);
      try {
        expect(dropped).toBe(1);
        const refused = await eventually("a 403 for the missing rule", () =>
          forbidden(env).find((entry) => path.test(entry.path)),
        );
        expect(refused.status).toBe(403);
        await check?.(env);
      } finally {
        await stopEnv(env);
      }
    });
  }
});
