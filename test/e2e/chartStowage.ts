/**
 * Stowage run the way the chart runs it, on whichever API the test run asked for: the RBAC objects
 * `helm template` renders (test/e2e/chartRbac.ts) applied as they are, the controller (ModelImage
 * reconciler, pre-warm planner, leader election, and with `webhook` the admission webhook and the
 * gate controller) and one node's agent beside a real containerd, each with a token of the chart's
 * ServiceAccount. A probe walks every path those processes take: an image to mirror with a pull
 * secret, a ModelImage pre-warmed onto the node, and with the webhook a pod held until it is warm.
 *
 * What it takes away is one rendered rule at a time (`withoutRule`): the processes restart with
 * the rest, and the request log says which requests were refused.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { type NodeCache, NodeCacheResource } from "../../src/api/nodeCache.ts";
import { KubeClient, Resources } from "../../src/kube/client.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type AgentNode, startAgentNode } from "../../testkit/agentNode.ts";
import type { KubeObject } from "../../testkit/apiserver/index.ts";
import { startContainerd } from "../../testkit/containerd.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import type { ControlPlaneOptions } from "../../testkit/controlplane/index.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { registerNode } from "../../testkit/nodes.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import {
  agentServiceAccount,
  type ChartValues,
  controllerServiceAccount,
  helmTemplate,
  type LoggedRequest,
  type RenderedRule,
  rbacOf,
  releaseNamespace,
  renderedRules,
  ruleGrants,
  withoutRule,
} from "./chartRbac.ts";
import { type Cluster, dockerConfigSecret, eventually, startCluster } from "./helpers.ts";

// biome-ignore lint/suspicious/noExplicitAny: objects read back as free-form JSON
type Json = any;

export const modelNamespace = "ml";
export const nodeName = "gpu-1";
export const gate = "stowage.dev/prewarm";
const warmingTaint = "stowage.dev/warming";
const pool = { "stowage.test/pool": "gpu" };
const teamUser = { username: "ml-team", password: "team-Pa55word" };
const leaseFlags = ["--lease-duration", "4s", "--renew-deadline", "3s", "--retry-period", "500ms"];

export const controllerUser = `system:serviceaccount:${releaseNamespace}:${controllerServiceAccount}`;
export const agentUser = `system:serviceaccount:${releaseNamespace}:${agentServiceAccount}`;

export interface ChartStowageOptions {
  values: ChartValues;
  /** real only: how the control plane starts (e.g. events.k8s.io/v1 not served) */
  controlPlane?: ControlPlaneOptions;
}

/** One pass through every path: what was created, to wait on. */
export interface Probe {
  name: string;
  image: PushedImage;
  reference: string;
  /** with the webhook: the pod created while the ModelImage was not warm yet */
  pod?: string;
}

export interface ChartStowage {
  cluster: Cluster;
  admin: KubeClient;
  values: ChartValues;
  /** the RBAC objects the chart renders with `values`, as applied */
  rbac: KubeObject[];
  rules: RenderedRule[];
  upstream: RunningRegistry;
  cache: RunningRegistry;
  controller?: ControllerProcess;
  agent?: AgentNode;
  /** kubectl apply as the admin; on the real apiserver, waits until RBAC changes are in force */
  applyRbac(objects: KubeObject[], changed?: RenderedRule, granted?: boolean): Promise<void>;
  /** a kubeconfig with a token of the chart's controller ServiceAccount */
  controllerKubeconfig(): Promise<string>;
  /** a kubeconfig with a token of the chart's agent ServiceAccount */
  agentKubeconfig(): Promise<string>;
  /** starts the controller and the agent with the chart's ServiceAccount tokens */
  start(options?: { waitReady?: boolean }): Promise<void>;
  stopProcesses(): Promise<void>;
  /**
   * A new image and ModelImage; with the webhook also a pod for it, created until the webhook
   * holds one (`holdPod`, default) or just once (when the webhook may be what is broken).
   */
  probe(options?: { holdPod?: boolean }): Promise<Probe>;
  /** waits until the probe went all the way: Ready, warm on the node, its pod released */
  waitWorking(probe: Probe): Promise<void>;
  requests(): Promise<LoggedRequest[]>;
  resetRequests(): Promise<void>;
  /** the end of the processes' logs, for failure messages */
  logs(): string;
  dispose(): Promise<void>;
}

export async function startChartStowage(options: ChartStowageOptions): Promise<ChartStowage> {
  const { values } = options;
  const rendered = await helmTemplate(values);
  const rbac = rbacOf(rendered);
  const [cluster, upstream, cache, containerd] = await Promise.all([
    startCluster({
      crds: ["stowage.dev_modelimages", "stowage.dev_nodecaches"],
      rbac: true,
      controlPlane: options.controlPlane,
    }),
    startRegistry({ auth: "htpasswd", users: [teamUser] }),
    startRegistry(),
    startContainerd(),
  ]);
  const dir = await mkdtemp(join(tmpdir(), "stowage-chart-rbac-"));
  const admin = KubeClient.load({ path: cluster.api.kubeconfigPath });
  const webhookPort = values.webhook ? await freePort() : undefined;
  let files = 0;
  let probes = 0;
  const owner = new RegistryClient({ credentials: () => teamUser, insecureHosts: [upstream.host] });

  // real: a TokenRequest for the chart's ServiceAccount; double: a token it maps to that identity
  const kubeconfigFor = (serviceAccount: string): Promise<string> =>
    cluster.api.serviceAccountKubeconfig(
      releaseNamespace,
      serviceAccount,
      join(dir, `${serviceAccount}.kubeconfig`),
    );

  const env: ChartStowage = {
    cluster,
    admin,
    values,
    rbac,
    rules: renderedRules(rbac),
    upstream,
    cache,
    async applyRbac(objects, changed, granted = true) {
      const file = join(dir, `rbac-${++files}.yaml`);
      await writeFile(file, objects.map((o) => stringify(o)).join("---\n"));
      await cluster.kubectlOk(["apply", "-f", file]);
      // The real authorizer reads RBAC objects from an informer: wait until the change is in force.
      if (changed && cluster.api.real) await waitAuthorization(env, changed, granted);
    },
    controllerKubeconfig: () => kubeconfigFor(controllerServiceAccount),
    agentKubeconfig: () => kubeconfigFor(agentServiceAccount),
    async start(startOptions = {}) {
      const [controllerKubeconfig, agentKubeconfig] = await Promise.all([
        env.controllerKubeconfig(),
        env.agentKubeconfig(),
      ]);
      env.agent = await startAgentNode(nodeName, { kubeconfig: agentKubeconfig, logsDir: dir, containerd });
      env.controller = await startControllerProcess({
        kubeconfig: controllerKubeconfig,
        cacheRegistry: cache.url,
        waitReady: startOptions.waitReady ?? true,
        args: [
          "--insecure-registry",
          upstream.host,
          ...leaseFlags,
          ...(values.watchNamespaces ?? []).flatMap((ns) => ["--namespace", ns]),
          ...(webhookPort === undefined ? [] : webhookFlags(rendered, webhookPort)),
        ],
      });
    },
    async stopProcesses() {
      await env.controller?.kill("SIGTERM");
      await env.agent?.stop();
      env.controller = undefined;
      env.agent = undefined;
    },
    async probe(probeOptions = {}) {
      const name = `probe-${++probes}`;
      const image = await pushSinglePlatformImage(
        owner,
        { registry: upstream.host, repository: `team/${name}` },
        "v1",
        {
          layerSizes: [64 * 1024],
          seed: `chart-rbac/${name}`,
        },
      );
      const reference = `${upstream.host}/team/${name}:v1`;
      await cluster.apply([
        {
          apiVersion: "stowage.dev/v1alpha1",
          kind: "ModelImage",
          metadata: { name, namespace: modelNamespace },
          spec: {
            variants: [{ name: "gpu", image: reference, nodeSelector: pool }],
            pullSecrets: [{ name: "team-registry" }],
            prewarm: { enabled: true, holdPods: !!values.webhook },
          },
        },
      ]);
      const probe: Probe = { name, image, reference };
      if (values.webhook) probe.pod = await createPod(env, name, reference, probeOptions.holdPod ?? true);
      return probe;
    },
    async waitWorking(probe) {
      const ready = await eventually(
        `${modelNamespace}/${probe.name} Ready`,
        async () => {
          const mi: Json = await admin.resource(ModelImages).get(probe.name, modelNamespace);
          return conditionOf(mi, "Ready")?.status === "True" ? mi : undefined;
        },
        90_000,
      ).catch(withLogs(env));
      if (conditionOf(ready, "Prewarmed")?.status !== "True")
        throw new Error(`${probe.name} is Ready but not Prewarmed: ${JSON.stringify(ready.status)}`);
      await eventually(`${probe.image.digest} Present on ${nodeName}`, async () => {
        const nc = await admin.resource<NodeCache>(NodeCacheResource).get(nodeName);
        return nc.status?.images?.find((i) => i.digest === probe.image.digest)?.state === "Present";
      }).catch(withLogs(env));
      await eventually(`${nodeName} labelled warm for ${probe.name}, untainted`, async () => {
        const node: Json = await admin.resource(Resources.Node).get(nodeName);
        return (
          node.metadata.labels?.[`warm.stowage.dev/${modelNamespace}.${probe.name}`] === "true" &&
          !(node.spec.taints ?? []).some((t: Json) => t.key === warmingTaint)
        );
      }).catch(withLogs(env));
      if (probe.pod) {
        await eventually(`pod ${probe.pod} released`, async () => {
          const pod: Json = await admin.resource(Resources.Pod).get(probe.pod ?? "", modelNamespace);
          return !(pod.spec.schedulingGates ?? []).some((g: Json) => g.name === gate);
        }).catch(withLogs(env));
      }
    },
    requests: () => cluster.api.requestLog(),
    resetRequests: () => cluster.api.resetRequestLog(),
    logs() {
      return `controller log:\n${env.controller?.stderr().slice(-3000) ?? "(not running)"}\nagent log: ${env.agent?.logFile ?? "(not running)"}`;
    },
    async dispose() {
      await env.stopProcesses().catch(() => {});
      await owner.close();
      admin.close();
      await Promise.all([cluster.stop(), upstream.stop(), cache.stop(), containerd.dispose()]);
      await rm(dir, { recursive: true, force: true });
    },
  };

  try {
    await cluster.apply([
      { apiVersion: "v1", kind: "Namespace", metadata: { name: modelNamespace } },
      dockerConfigSecret("team-registry", modelNamespace, upstream.host, teamUser),
    ]);
    await env.applyRbac(rbac);
    const mwc = rendered.find((d) => d.kind === "MutatingWebhookConfiguration");
    if (webhookPort !== undefined) {
      if (!mwc)
        throw new Error("helm template rendered no MutatingWebhookConfiguration with webhook.enabled");
      await cluster.api.create(onLoopback(mwc, webhookPort));
    }
    await registerNode(admin, {
      apiVersion: "v1",
      kind: "Node",
      metadata: {
        name: nodeName,
        labels: {
          "kubernetes.io/hostname": nodeName,
          "kubernetes.io/os": "linux",
          "kubernetes.io/arch": "amd64",
          ...pool,
        },
      },
      spec: { taints: [{ key: warmingTaint, value: "true", effect: "NoSchedule" }] },
      status: {
        conditions: [{ type: "Ready", status: "True", reason: "KubeletReady", message: "chart RBAC node" }],
        nodeInfo: { architecture: "amd64", operatingSystem: "linux" },
      },
    } as KubeObject);
  } catch (err) {
    await env.dispose();
    throw err;
  }
  return env;
}

export const ModelImages = {
  group: "stowage.dev",
  version: "v1alpha1",
  plural: "modelimages",
  kind: "ModelImage",
  namespaced: true,
} as const;

function conditionOf(mi: Json, type: string): { status: string; reason?: string } | undefined {
  return (mi?.status?.conditions ?? []).find((c: Json) => c.type === type);
}

function withLogs(env: ChartStowage) {
  return (err: Error): never => {
    throw new Error(`${err.message}\n${env.logs()}`);
  };
}

/** The webhook flags as the chart sets them (STOWAGE_WEBHOOK_* on the Deployment), on a loopback port. */
function webhookFlags(rendered: KubeObject[], port: number): string[] {
  const deployment: Json = rendered.find(
    (d) => d.kind === "Deployment" && d.metadata?.name === "stowage-controller",
  );
  const envOf = (name: string): string | undefined =>
    deployment?.spec.template.spec.containers[0].env?.find((e: Json) => e.name === name)?.value;
  const flags = ["--webhook-port", String(port), "--webhook-namespace", releaseNamespace];
  for (const [variable, flag] of [
    ["STOWAGE_WEBHOOK_SERVICE", "--webhook-service"],
    ["STOWAGE_WEBHOOK_CONFIGURATION", "--webhook-configuration"],
    ["STOWAGE_WEBHOOK_CERT_SECRET", "--webhook-cert-secret"],
    ["STOWAGE_WEBHOOK_CERT_MANAGEMENT", "--webhook-cert-management"],
  ]) {
    const value = envOf(variable);
    if (value === undefined) throw new Error(`the chart's controller Deployment sets no ${variable}`);
    flags.push(flag, value);
  }
  return flags;
}

/**
 * The chart's MutatingWebhookConfiguration, calling the controller on 127.0.0.1: a Service's
 * endpoints cannot be loopback, so `clientConfig.service` becomes the URL it would resolve to.
 */
function onLoopback(mwc: KubeObject, port: number): KubeObject {
  const copy: Json = structuredClone(mwc);
  for (const webhook of copy.webhooks) {
    const path = webhook.clientConfig.service?.path ?? "/";
    webhook.clientConfig = { url: `https://127.0.0.1:${port}${path}` };
  }
  return copy;
}

/** A pod using the probe's image, created (as a person would, kubectl apply) until the webhook holds one. */
async function createPod(
  env: ChartStowage,
  name: string,
  image: string,
  untilHeld: boolean,
): Promise<string> {
  let attempt = 0;
  // The webhook answers from its informer cache and its certificate arrives a moment after start;
  // failurePolicy Ignore lets pods through meanwhile, so retry until one is held.
  return eventually(
    `a pod for ${name} held by the webhook`,
    async () => {
      const pod = `${name}-serve-${++attempt}`;
      await env.cluster.apply([
        {
          apiVersion: "v1",
          kind: "Pod",
          metadata: { name: pod, namespace: modelNamespace },
          spec: { containers: [{ name: "serve", image }] },
        },
      ]);
      const created: Json = await env.admin.resource(Resources.Pod).get(pod, modelNamespace);
      const held = (created.spec.schedulingGates ?? []).some((g: Json) => g.name === gate);
      return held || !untilHeld ? pod : undefined;
    },
    60_000,
    500,
  );
}

/**
 * Polls SubjectAccessReviews for what the rule grants (each verb on its first resource) until the
 * authorizer refuses one of them (`granted` false) or allows them all (`granted` true).
 */
async function waitAuthorization(env: ChartStowage, rule: RenderedRule, granted: boolean): Promise<void> {
  const real = env.cluster.api.real;
  const grantee = rule.grantees[0];
  if (!real || !grantee) return;
  const [, saNamespace] = /^system:serviceaccount:([^:]+):/.exec(grantee.serviceAccount) ?? [];
  const [resource, subresource] = rule.rule.resources[0].split("/");
  const allowed = async (verb: string): Promise<boolean> => {
    const res = await real.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
      apiVersion: "authorization.k8s.io/v1",
      kind: "SubjectAccessReview",
      spec: {
        user: grantee.serviceAccount,
        groups: ["system:serviceaccounts", `system:serviceaccounts:${saNamespace}`, "system:authenticated"],
        resourceAttributes: {
          verb,
          group: rule.rule.apiGroups[0],
          resource,
          ...(subresource ? { subresource } : {}),
          namespace: grantee.namespace ?? rule.role.namespace ?? modelNamespace,
        },
      },
    });
    return res.body?.status?.allowed === true;
  };
  // A rule another rendered rule duplicates stays granted: give up waiting after a while, the
  // experiment then fails saying no request was refused.
  await eventually(
    `${rule.id} ${granted ? "granted" : "refused"} in the authorizer`,
    async () => {
      const answers = await Promise.all(rule.rule.verbs.map(allowed));
      return granted ? answers.every(Boolean) : answers.some((a) => !a);
    },
    10_000,
    100,
  ).catch(() => {});
}

/** The requests `user` made that `rule` grants (on the double, which logs no user: any request it grants `user`). */
export function grantedBy(rule: RenderedRule, requests: LoggedRequest[], user: string): LoggedRequest[] {
  return requests.filter((r) => (r.user === undefined || r.user === user) && ruleGrants(rule, r, user));
}

/** Which path of which process needs a rendered rule: every rule the chart renders has one. */
export interface Need {
  component: "controller" | "webhook" | "agent";
  what: string;
  /** only a cluster without events.k8s.io/v1 takes this path (the core/v1 Events fallback) */
  eventsV1Off?: boolean;
}

const needs: Record<string, Need> = {
  "ClusterRole/stowage-controller-cluster:/nodes": {
    component: "controller",
    what: "the planner (and platforms: auto) read Nodes, the planner patches warm labels and lifts the warming taint",
  },
  "ClusterRole/stowage-controller-cluster:stowage.dev/nodecaches": {
    component: "controller",
    what: "the planner writes each node's NodeCache",
  },
  "ClusterRole/stowage-controller-cluster:events.k8s.io,/events": {
    component: "controller",
    what: "the controller records Events (Synced on ModelImages, WarmingComplete on Nodes)",
  },
  "ClusterRole/stowage-controller-cluster:/pods": {
    component: "webhook",
    what: "the gate controller watches held pods and lifts their scheduling gate",
  },
  "ClusterRole/stowage-controller-cluster:admissionregistration.k8s.io/mutatingwebhookconfigurations": {
    component: "webhook",
    what: "the controller publishes its webhook CA in the configuration's caBundle",
  },
  "ClusterRole/stowage-controller-cluster:/namespaces": {
    component: "webhook",
    what: "the webhook reads namespaces for the hold-pods opt-out label",
  },
  "ClusterRole/stowage-controller-namespaced:stowage.dev/modelimages": {
    component: "controller",
    what: "the ModelImage informer and its cleanup finalizer",
  },
  "ClusterRole/stowage-controller-namespaced:stowage.dev/modelimages/status": {
    component: "controller",
    what: "ModelImage status (Ready, Synced, Prewarmed)",
  },
  "ClusterRole/stowage-controller-namespaced:/secrets": {
    component: "controller",
    what: "a ModelImage's pull secrets, read by name",
  },
  "Role/stowage-controller-leader-election:coordination.k8s.io/leases": {
    component: "controller",
    what: "leader election on the Lease",
  },
  "Role/stowage-controller-leader-election:/secrets": {
    component: "webhook",
    what: "the webhook creates and renews its serving certificate Secret",
  },
  "ClusterRole/stowage-agent:stowage.dev/nodecaches": {
    component: "agent",
    what: "the agent watches its node's NodeCache",
  },
  "ClusterRole/stowage-agent:stowage.dev/nodecaches/status": {
    component: "agent",
    what: "the agent reports pulls and its heartbeat in NodeCache status",
  },
  "ClusterRole/stowage-agent:events.k8s.io/events": {
    component: "agent",
    what: "the agent records Pulled and PullFailed Events",
  },
  "ClusterRole/stowage-agent:/events": {
    component: "agent",
    what: "the agent records its Events as core/v1 Events where events.k8s.io/v1 is not served",
    eventsV1Off: true,
  },
};

function needKey(rule: RenderedRule): string {
  return `${rule.role.kind}/${rule.role.name}:${rule.rule.apiGroups.join(",")}/${rule.rule.resources.join(",")}`;
}

export function needOf(rule: RenderedRule): Need | undefined {
  return needs[needKey(rule)];
}

/** Every statement of need that names no rendered rule (a rule the chart dropped or renamed). */
export function needsWithoutRule(rules: RenderedRule[]): string[] {
  const keys = new Set(rules.map(needKey));
  return Object.keys(needs).filter((key) => !keys.has(key));
}

/**
 * Takes `rule` away (the processes restart under the rest of the rendered RBAC), walks a probe
 * through, and returns the requests refused, once there is one; then puts the rule back. What
 * the test checks: each refused request is one the removed rule grants to its ServiceAccount.
 * `visible`, when given, waits for what a person would see of it (a condition, a log line) while
 * the rule is still away.
 */
export async function refusedWithout(
  env: ChartStowage,
  rule: RenderedRule,
  visible?: (probe: Probe) => Promise<void>,
): Promise<LoggedRequest[]> {
  await env.stopProcesses();
  await env.applyRbac(withoutRule(env.rbac, rule), rule, false);
  await env.resetRequests();
  try {
    await env.start({ waitReady: false });
    const probe = await env.probe({ holdPod: false });
    const refused = await eventually(
      `a request refused without ${rule.id}`,
      async () => {
        const denied = (await env.requests()).filter((r) => r.status === 403);
        return denied.length > 0 ? denied : undefined;
      },
      60_000,
    ).catch(withLogs(env));
    await visible?.(probe).catch(withLogs(env));
    return refused;
  } finally {
    await env.stopProcesses();
    await env.applyRbac(env.rbac, rule, true);
  }
}
