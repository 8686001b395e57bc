/**
 * The chart's life on a real control plane, driven by the real helm: install, upgrade with changed
 * values, the controller run exactly as the installed Deployment says (its args and env, resolved
 * as the kubelet resolves them, its image's entrypoint, a token of its ServiceAccount bound to one
 * of its pods), rollback, and uninstall, after which nothing Stowage made is left but what must be.
 *
 * What cannot exist here is replaced through chart VALUES, never by editing a manifest: the cache
 * registry is a real registry on 127.0.0.1 (cache.enabled=false, cache.externalUrl), the upstream
 * is one too (controller.insecureRegistries), and ports are free ones (controller.healthPort,
 * webhook.port). The API server address, which a pod finds in KUBERNETES_SERVICE_HOST and its
 * token mount, comes in a kubeconfig (KUBECONFIG) holding the TokenRequest token.
 */
import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments, stringify } from "yaml";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type ControllerProcess, startControllerCommand } from "../../testkit/controllerProcess.ts";
import { type ControlPlane, startControlPlane } from "../../testkit/controlplane/index.ts";
import { helm, helmOk } from "../../testkit/helm.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { kubectlOk } from "../../testkit/kubectl.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually } from "../e2e/helpers.ts";
import { root } from "../support/run.ts";

// biome-ignore lint/suspicious/noExplicitAny: objects read back from the API server as free-form JSON
type Json = any;

const chartDir = join(root, "charts/stowage");
const RELEASE = "stowage";
const NAMESPACE = "stowage-system";
const SERVICE_ACCOUNT = "stowage-controller";
const SA_USER = `system:serviceaccount:${NAMESPACE}:${SERVICE_ACCOUNT}`;
const WATCHED = "ml";

let plane: ControlPlane;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let dir: string;
let upstreamDigest: string;
let controller: ControllerProcess | undefined;
const ports = { health: 0, webhook: 0 };

/** Values of revision 1: the chart's defaults (in-cluster cache on a volume), with the webhook on. */
/**
 * No kubelet runs pods on this control plane, so the pre-delete hook Job (`stowage uninstall`)
 * would never finish and `helm uninstall` would wait for it; test/real/chart-on-kubelet.test.ts
 * runs that hook on a real kubelet.
 */
const noUninstallHook = { uninstallCleanup: { enabled: false } };

function installValues() {
  return {
    controller: { healthPort: ports.health },
    agent: noUninstallHook,
    webhook: { enabled: true, port: ports.webhook },
  };
}

/** Values of revision 2: the cache and upstream on loopback, one watched namespace, debug logs. */
function upgradeValues() {
  return {
    controller: { healthPort: ports.health, logLevel: "debug", insecureRegistries: [upstream.host] },
    agent: noUninstallHook,
    webhook: { enabled: true, port: ports.webhook },
    cache: { enabled: false, externalUrl: cache.url },
    watchNamespaces: [WATCHED],
  };
}

const admin = () => ({ kubeconfig: plane.kubeconfigPath, dir });
const helmAdmin = () => ({ kubeconfig: plane.kubeconfigPath, dir });

async function valuesFile(name: string, values: object): Promise<string> {
  const path = join(dir, `${name}.yaml`);
  await writeFile(path, stringify(values));
  return path;
}

function documents(text: string): Json[] {
  return parseAllDocuments(text)
    .map((doc) => doc.toJS())
    .filter((obj) => obj !== null);
}

async function manifest(revision?: number): Promise<Json[]> {
  const args = ["get", "manifest", RELEASE, "--namespace", NAMESPACE];
  if (revision !== undefined) args.push("--revision", String(revision));
  return documents(await helmOk(args, helmAdmin()));
}

function one(objects: Json[], kind: string, name: string): Json {
  const found = objects.filter((o) => o.kind === kind && o.metadata.name === name);
  if (found.length !== 1) throw new Error(`expected one ${kind} ${name}, found ${found.length}`);
  return found[0];
}

async function get(path: string): Promise<Json | undefined> {
  const res = await plane.request("GET", path);
  if (res.status === 404) return undefined;
  if (res.status !== 200) throw new Error(`GET ${path}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

/** Every object of `objects` as the API server has it now (fails when one is missing). */
async function live(objects: Json[]): Promise<Json[]> {
  const out = await kubectlOk(["get", "-f", "-", "-o", "json"], {
    ...admin(),
    stdin: objects.map((o) => stringify(o)).join("---\n"),
  });
  const parsed = JSON.parse(out);
  return parsed.kind === "List" ? parsed.items : [parsed];
}

const key = (o: Json) => `${o.kind} ${o.metadata.namespace ?? ""}/${o.metadata.name}`;

// ---- the container as the kubelet would run it --------------------------------------------

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    fieldRef?: { fieldPath: string };
    secretKeyRef?: { name: string; key: string; optional?: boolean };
    configMapKeyRef?: { name: string; key: string; optional?: boolean };
    resourceFieldRef?: unknown;
  };
}

/** `$(NAME)` references expanded as the kubelet does: `$$` escapes, unknown names stay as they are. */
function expand(text: string, env: Record<string, string>): string {
  return text.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (match, name: string | undefined) =>
    match === "$$" ? "$" : name !== undefined && name in env ? env[name] : match,
  );
}

/** The downward API fields the kubelet resolves for `fieldRef`. */
function podField(pod: Json, path: string): string {
  const mapKey = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(path);
  if (mapKey) return pod.metadata[mapKey[1]]?.[mapKey[2]] ?? "";
  const fields: Record<string, string | undefined> = {
    "metadata.name": pod.metadata.name,
    "metadata.namespace": pod.metadata.namespace,
    "metadata.uid": pod.metadata.uid,
    "spec.nodeName": pod.spec.nodeName,
    "spec.serviceAccountName": pod.spec.serviceAccountName,
    "status.hostIP": pod.status?.hostIP,
    "status.podIP": pod.status?.podIP,
  };
  if (!(path in fields)) throw new Error(`fieldRef ${path} is not resolved by this test`);
  return fields[path] ?? "";
}

/** The container's environment from its pod spec: values, fieldRefs, and keys of Secrets and ConfigMaps. */
async function containerEnv(container: Json, pod: Json): Promise<Record<string, string>> {
  if (container.envFrom) throw new Error("envFrom is not resolved by this test");
  const env: Record<string, string> = {};
  for (const variable of (container.env ?? []) as EnvVar[]) {
    const from = variable.valueFrom;
    if (!from) {
      env[variable.name] = expand(variable.value ?? "", env);
    } else if (from.fieldRef) {
      env[variable.name] = podField(pod, from.fieldRef.fieldPath);
    } else if (from.secretKeyRef || from.configMapKeyRef) {
      const ref = (from.secretKeyRef ?? from.configMapKeyRef)!;
      const kind = from.secretKeyRef ? "secrets" : "configmaps";
      const obj = await get(`/api/v1/namespaces/${pod.metadata.namespace}/${kind}/${ref.name}`);
      const data = from.secretKeyRef ? obj?.data?.[ref.key] : obj?.data?.[ref.key];
      if (data === undefined) {
        if (ref.optional) continue;
        throw new Error(
          `${kind} ${ref.name} key ${ref.key} is missing: the kubelet would not start the container`,
        );
      }
      env[variable.name] = from.secretKeyRef ? Buffer.from(data, "base64").toString("utf8") : data;
    } else {
      throw new Error(`env ${variable.name}: valueFrom ${JSON.stringify(from)} is not resolved by this test`);
    }
  }
  return env;
}

/** The runtime stage of the Dockerfile: its ENTRYPOINT, ENV and WORKDIR. */
function imageConfig(): { entrypoint: string[]; env: Record<string, string>; workdir: string } {
  const lines = readFileSync(join(root, "Dockerfile"), "utf8").split("\n");
  const stage = lines.slice(lines.map((l) => /^FROM /.test(l)).lastIndexOf(true));
  const env: Record<string, string> = {};
  let entrypoint: string[] = [];
  let workdir = "/";
  for (const line of stage) {
    const instruction = /^(ENV|ENTRYPOINT|WORKDIR)\s+(.*)$/.exec(line);
    if (!instruction) continue;
    if (instruction[1] === "ENTRYPOINT") entrypoint = JSON.parse(instruction[2]);
    if (instruction[1] === "WORKDIR") workdir = instruction[2].trim();
    if (instruction[1] === "ENV")
      for (const pair of instruction[2].matchAll(/(\w+)=("[^"]*"|\S+)/g))
        env[pair[1]] = pair[2].replace(/^"|"$/g, "");
  }
  return { entrypoint, env, workdir };
}

// ---- what exists, for the uninstall check -------------------------------------------------

interface Found {
  kind: string;
  namespace?: string;
  name: string;
}

/** Every object of every listable kind, namespaced and cluster-scoped, that carries the release's label or name. */
async function objectsOfTheRelease(): Promise<Found[]> {
  const kinds = (await kubectlOk(["api-resources", "--verbs=list", "-o", "name"], admin()))
    .trim()
    .split("\n");
  const list = JSON.parse(
    await kubectlOk(["get", kinds.join(","), "--all-namespaces", "-o", "json"], admin()),
  );
  const seen = new Set<string>();
  const found: Found[] = [];
  for (const item of list.items as Json[]) {
    const labels = item.metadata?.labels ?? {};
    const ours =
      labels["app.kubernetes.io/instance"] === RELEASE || String(item.metadata?.name).includes("stowage");
    const id = `${item.kind} ${item.metadata?.namespace ?? ""}/${item.metadata?.name}`;
    if (!ours || seen.has(id)) continue;
    seen.add(id);
    found.push({ kind: item.kind, namespace: item.metadata?.namespace, name: item.metadata?.name });
  }
  return found.sort((a, b) =>
    `${a.kind}${a.namespace}${a.name}`.localeCompare(`${b.kind}${b.namespace}${b.name}`),
  );
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "stowage-helm-lifecycle-"));
  [plane, upstream, cache, ports.health, ports.webhook] = await Promise.all([
    startControlPlane(),
    startRegistry(),
    startRegistry(),
    freePort(),
    freePort(),
  ]);
  const owner = new RegistryClient({ insecureHosts: [upstream.host] });
  upstreamDigest = (
    await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "models/tiny" }, "v1")
  ).digest;
  await owner.close();
  await kubectlOk(["create", "namespace", WATCHED], admin());
});

afterAll(async () => {
  await controller?.kill("SIGKILL");
  await Promise.all([plane?.stop(), upstream?.stop(), cache?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("the chart installed, upgraded, rolled back and uninstalled by the real helm", () => {
  let revision1: Json[];

  it("installs the CRDs first, then every object it renders; the Deployment makes pods as its ServiceAccount", async () => {
    await helmOk(
      [
        "install",
        RELEASE,
        chartDir,
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "-f",
        await valuesFile("install", installValues()),
      ],
      helmAdmin(),
    );
    const status = JSON.parse(
      await helmOk(["status", RELEASE, "--namespace", NAMESPACE, "-o", "json"], helmAdmin()),
    );
    expect({ version: status.version, status: status.info.status }).toEqual({
      version: 1,
      status: "deployed",
    });
    for (const crd of ["modelimages.stowage.dev", "nodecaches.stowage.dev"])
      expect(await get(`/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${crd}`)).toBeDefined();

    revision1 = await manifest();
    const present = await live(revision1);
    expect(present.map(key).sort()).toEqual(revision1.map(key).sort());
    expect(revision1.map((o) => o.kind)).toEqual(
      expect.arrayContaining(["Deployment", "StatefulSet", "Lease", "MutatingWebhookConfiguration"]),
    );

    // the controller-manager acts on what helm applied: pods of the Deployment, the cache's claim
    const pods = await eventually("the Deployment's two pods", async () => {
      const list = await get(
        `/api/v1/namespaces/${NAMESPACE}/pods?labelSelector=app.kubernetes.io/component=controller`,
      );
      return list.items.length === 2 ? list.items : undefined;
    });
    expect(pods.map((p: Json) => p.spec.serviceAccountName)).toEqual([SERVICE_ACCOUNT, SERVICE_ACCOUNT]);
    await eventually("the cache StatefulSet's claim", () =>
      get(`/api/v1/namespaces/${NAMESPACE}/persistentvolumeclaims/data-stowage-cache-0`),
    );
  });

  it("upgrades with changed values: what is no longer rendered goes, the new objects come", async () => {
    await helmOk(
      [
        "upgrade",
        RELEASE,
        chartDir,
        "--namespace",
        NAMESPACE,
        "-f",
        await valuesFile("upgrade", upgradeValues()),
      ],
      helmAdmin(),
    );
    const status = JSON.parse(
      await helmOk(["status", RELEASE, "--namespace", NAMESPACE, "-o", "json"], helmAdmin()),
    );
    expect({ version: status.version, status: status.info.status }).toEqual({
      version: 2,
      status: "deployed",
    });
    const revision2 = await manifest();
    await live(revision2);

    const gone = revision1.filter((o) => !revision2.some((n) => key(n) === key(o))).map(key);
    expect(gone.sort()).toEqual(
      [
        `ClusterRoleBinding /stowage-controller-namespaced`,
        `ConfigMap ${NAMESPACE}/stowage-cache`,
        // the front's node-token key goes with the cache
        `Secret ${NAMESPACE}/stowage-node-token`,
        `Service ${NAMESPACE}/stowage-cache`,
        `Service ${NAMESPACE}/stowage-cache-headless`,
        `StatefulSet ${NAMESPACE}/stowage-cache`,
      ].sort(),
    );
    for (const path of [
      `/apis/apps/v1/namespaces/${NAMESPACE}/statefulsets/stowage-cache`,
      `/api/v1/namespaces/${NAMESPACE}/services/stowage-cache`,
      `/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/stowage-controller-namespaced`,
    ])
      expect(await get(path), path).toBeUndefined();
    // the claim goes with its StatefulSet (persistentVolumeClaimRetentionPolicy), collected by the GC
    await eventually(
      "the cache's claim is deleted with the StatefulSet",
      async () =>
        (await get(`/api/v1/namespaces/${NAMESPACE}/persistentvolumeclaims/data-stowage-cache-0`)) ===
        undefined,
    );
    expect(
      await get(`/apis/rbac.authorization.k8s.io/v1/namespaces/${WATCHED}/rolebindings/stowage-controller`),
    ).toBeDefined();

    const deployment = await get(`/apis/apps/v1/namespaces/${NAMESPACE}/deployments/stowage-controller`);
    const args: string[] = deployment.spec.template.spec.containers[0].args;
    expect(args).toEqual(
      expect.arrayContaining([
        `--cache-registry=${cache.url}`,
        `--insecure-registry=${upstream.host}`,
        `--namespace=${WATCHED}`,
        "--log-level=debug",
      ]),
    );
  });

  it("runs the controller with the args, env and ServiceAccount the chart rendered; a ModelImage goes Ready", async () => {
    const rendered = await manifest();
    const deployment = one(rendered, "Deployment", "stowage-controller");
    const podSpec = deployment.spec.template.spec;
    const container = podSpec.containers.find((c: Json) => c.name === "controller");
    expect(podSpec.serviceAccountName).toBe(SERVICE_ACCOUNT);
    one(rendered, "ServiceAccount", SERVICE_ACCOUNT);

    // A pod of this revision (the ReplicaSet made it; no kubelet runs it): its name, namespace and
    // uid are what the kubelet gives the container and binds the token to.
    const pod = await eventually("a pod of the upgraded Deployment", async () => {
      const list = await get(
        `/api/v1/namespaces/${NAMESPACE}/pods?labelSelector=app.kubernetes.io/component=controller`,
      );
      // the upgrade changed the args, so equal args mean this revision's pod template
      return list.items.find(
        (p: Json) => JSON.stringify(p.spec.containers[0].args) === JSON.stringify(container.args),
      );
    });
    const tokenRequest = await plane.request(
      "POST",
      `/api/v1/namespaces/${NAMESPACE}/serviceaccounts/${podSpec.serviceAccountName}/token`,
      {
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenRequest",
        spec: {
          expirationSeconds: 3607,
          boundObjectRef: { apiVersion: "v1", kind: "Pod", name: pod.metadata.name, uid: pod.metadata.uid },
        },
      },
    );
    expect(tokenRequest.status).toBe(201);
    const identity = await plane.kubeconfigForToken(tokenRequest.body.status.token, SA_USER);
    const whoami = JSON.parse(
      await kubectlOk(["auth", "whoami", "-o", "json"], { kubeconfig: identity.kubeconfigPath, dir }),
    );
    expect(whoami.status.userInfo.username).toBe(SA_USER);

    // The image runs `node /app/bin/stowage.js <args>` from /app; here that is bin/stowage.js in the repository.
    const image = imageConfig();
    expect(image.workdir).toBe("/app");
    expect(image.entrypoint).toEqual(["/nodejs/bin/node", "/app/bin/stowage.js"]);
    expect(container.command).toBeUndefined();
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOSTNAME: pod.metadata.name,
      ...image.env,
      ...(await containerEnv(container, pod)),
      KUBECONFIG: identity.kubeconfigPath,
    };
    expect(env.STOWAGE_IDENTITY).toBe(pod.metadata.name);
    expect(env.POD_NAMESPACE).toBe(NAMESPACE);
    const argv = (container.args as string[]).map((arg) => expand(arg, env));
    expect(argv[0]).toBe("controller");

    await plane.resetRequestLog();
    controller = await startControllerCommand(argv, {
      env,
      identity: pod.metadata.name,
      readyTimeoutMs: 60_000,
    });
    expect(controller.healthPort).toBe(ports.health);

    await kubectlOk(["apply", "-f", "-"], {
      ...admin(),
      stdin: stringify({
        apiVersion: "stowage.dev/v1alpha1",
        kind: "ModelImage",
        metadata: { name: "tiny", namespace: WATCHED },
        spec: { image: `${upstream.host}/models/tiny:v1` },
      }),
    });
    const ready = await eventually(
      "ModelImage ml/tiny Ready=True",
      async () => {
        const mi = await get(`/apis/stowage.dev/v1alpha1/namespaces/${WATCHED}/modelimages/tiny`);
        const condition = mi?.status?.conditions?.find((c: Json) => c.type === "Ready");
        return condition?.status === "True" ? mi : undefined;
      },
      90_000,
    ).catch(async (err: Error) => {
      const mi = await get(`/apis/stowage.dev/v1alpha1/namespaces/${WATCHED}/modelimages/tiny`);
      const requests = (await plane.requestLog()).filter((r) => r.user === SA_USER && r.verb !== "watch");
      throw new Error(
        `${err.message}\nstatus: ${JSON.stringify(mi?.status)}\ncontroller requests: ${JSON.stringify(requests.slice(-40))}\ncontroller log:\n${controller?.stderr().slice(-4000)}`,
      );
    });
    const variant = ready.status.variants[0];
    expect(variant.sourceDigest).toBe(upstreamDigest);
    const cached = await fetch(
      `${cache.url}/v2/${upstream.host.replace(":", "_")}/models/tiny/manifests/${variant.cacheDigest}`,
      {
        method: "HEAD",
        headers: {
          accept:
            "application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json",
        },
      },
    );
    expect(cached.status).toBe(200);

    // the leader Lease the chart rendered, held under the pod's name (STOWAGE_IDENTITY from metadata.name)
    const lease = await get(`/apis/coordination.k8s.io/v1/namespaces/${NAMESPACE}/leases/stowage-controller`);
    expect(lease.spec.holderIdentity).toBe(pod.metadata.name);
    expect(lease.metadata.labels["app.kubernetes.io/managed-by"]).toBe("Helm");
    // the webhook's certificate Secret, owned by the chart's MutatingWebhookConfiguration, whose caBundle it filled
    const webhookConfiguration = await eventually("the caBundle is patched in", async () => {
      const mwc = await get(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/stowage-webhook",
      );
      return mwc?.webhooks?.[0]?.clientConfig?.caBundle ? mwc : undefined;
    });
    const secret = await get(`/api/v1/namespaces/${NAMESPACE}/secrets/stowage-webhook-tls`);
    expect(secret.metadata.ownerReferences).toEqual([
      {
        apiVersion: "admissionregistration.k8s.io/v1",
        kind: "MutatingWebhookConfiguration",
        name: "stowage-webhook",
        uid: webhookConfiguration.metadata.uid,
      },
    ]);

    // The API server's own record: the controller's requests came as the chart's ServiceAccount,
    // and RBAC refused none of them.
    const requests = (await plane.requestLog()).filter((r) => r.user === SA_USER);
    const did = (verb: string, pathPart: string) =>
      requests.some((r) => r.verb === verb && r.path.includes(pathPart) && r.status < 300);
    expect(did("update", `/namespaces/${WATCHED}/modelimages/tiny/status`)).toBe(true);
    expect(did("update", `/namespaces/${NAMESPACE}/leases/stowage-controller`)).toBe(true);
    expect(did("create", `/namespaces/${NAMESPACE}/secrets`)).toBe(true);
    expect(did("patch", "/mutatingwebhookconfigurations/stowage-webhook")).toBe(true);
    expect(requests.filter((r) => r.status === 401 || r.status === 403)).toEqual([]);

    const exit = await controller.kill("SIGTERM");
    controller = undefined;
    expect(exit.code).toBe(0);
  });

  it("rolls back to revision 1: its objects and Deployment return, the controller's Lease and Secret stay", async () => {
    const webhookUid = (
      await get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/stowage-webhook")
    ).metadata.uid;
    // what the controller wrote into the Lease: released on SIGTERM, no holder, its times kept
    const leaseBefore = await get(
      `/apis/coordination.k8s.io/v1/namespaces/${NAMESPACE}/leases/stowage-controller`,
    );
    expect(leaseBefore.spec).toMatchObject({ holderIdentity: "", leaseTransitions: expect.any(Number) });
    expect(leaseBefore.spec.acquireTime).toBeDefined();
    await helmOk(["rollback", RELEASE, "1", "--namespace", NAMESPACE], helmAdmin());
    const history = JSON.parse(
      await helmOk(["history", RELEASE, "--namespace", NAMESPACE, "-o", "json"], helmAdmin()),
    );
    expect(history.map((h: Json) => [h.revision, h.status, h.description])).toEqual([
      [1, "superseded", "Install complete"],
      [2, "superseded", "Upgrade complete"],
      [3, "deployed", "Rollback to 1"],
    ]);
    const revision3 = await manifest();
    expect(revision3).toEqual(revision1);
    await live(revision3);
    expect(
      await get(`/apis/rbac.authorization.k8s.io/v1/namespaces/${WATCHED}/rolebindings/stowage-controller`),
    ).toBeUndefined();
    const deployment = await get(`/apis/apps/v1/namespaces/${NAMESPACE}/deployments/stowage-controller`);
    expect(deployment.spec.template.spec.containers[0].args).toEqual(
      one(revision1, "Deployment", "stowage-controller").spec.template.spec.containers[0].args,
    );
    await eventually("the cache's claim is back with the StatefulSet", () =>
      get(`/api/v1/namespaces/${NAMESPACE}/persistentvolumeclaims/data-stowage-cache-0`),
    );
    // Helm applies only the fields it renders: the spec the controller wrote into the Lease survives
    const lease = await get(`/apis/coordination.k8s.io/v1/namespaces/${NAMESPACE}/leases/stowage-controller`);
    expect(lease.spec).toEqual(leaseBefore.spec);
    expect(lease.metadata.uid).toBe(leaseBefore.metadata.uid);
    const webhook = await get(
      "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/stowage-webhook",
    );
    expect(webhook.metadata.uid).toBe(webhookUid);
    expect(webhook.webhooks[0].clientConfig.caBundle).toBeDefined();
    expect(await get(`/api/v1/namespaces/${NAMESPACE}/secrets/stowage-webhook-tls`)).toBeDefined();
  });

  it("uninstalls: nothing of Stowage is left but the CRDs (Helm never deletes crds/), their objects, the namespace and Events", async () => {
    const before = await objectsOfTheRelease();
    // what the check must see go: objects helm applied and objects made at run time
    for (const expected of [
      { kind: "Deployment", namespace: NAMESPACE, name: "stowage-controller" },
      { kind: "Pod", namespace: NAMESPACE, name: expect.stringMatching(/^stowage-controller-/) },
      { kind: "PersistentVolumeClaim", namespace: NAMESPACE, name: "data-stowage-cache-0" },
      { kind: "Lease", namespace: NAMESPACE, name: "stowage-controller" },
      { kind: "Secret", namespace: NAMESPACE, name: "stowage-webhook-tls" },
      { kind: "MutatingWebhookConfiguration", name: "stowage-webhook" },
      { kind: "ClusterRole", name: "stowage-controller-cluster" },
    ])
      expect(before).toContainEqual(expected);

    const uninstalled = await helm(["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"], helmAdmin());
    expect({ code: uninstalled.code, stderr: uninstalled.stderr }).toEqual({ code: 0, stderr: "" });

    // What may stay, and why: the CRDs (Helm installs crds/ and never deletes them) with the
    // APIService the API server registers for their group, the namespace (Helm does not delete one
    // made by --create-namespace), and Events (the API server expires them).
    const allowed = (o: Found) =>
      (o.kind === "CustomResourceDefinition" &&
        ["modelimages.stowage.dev", "nodecaches.stowage.dev"].includes(o.name)) ||
      (o.kind === "APIService" && o.name === "v1alpha1.stowage.dev") ||
      (o.kind === "Namespace" && o.name === NAMESPACE) ||
      o.kind === "Event";
    const left = await eventually(
      "only what may stay is left (the garbage collector deletes pods, the claim and the Secret)",
      async () => {
        const now = await objectsOfTheRelease();
        return now.every(allowed) ? now : undefined;
      },
      60_000,
    ).catch(async (err: Error) => {
      throw new Error(
        `${err.message}; left: ${JSON.stringify((await objectsOfTheRelease()).filter((o) => !allowed(o)))}`,
      );
    });
    expect(left.filter((o) => o.kind === "CustomResourceDefinition").map((o) => o.name)).toEqual([
      "modelimages.stowage.dev",
      "nodecaches.stowage.dev",
    ]);
    expect(left.some((o) => o.kind === "Namespace" && o.name === NAMESPACE)).toBe(true);
    // the CRDs' objects stay with them
    const mi = await get(`/apis/stowage.dev/v1alpha1/namespaces/${WATCHED}/modelimages/tiny`);
    expect(mi?.spec.image).toBe(`${upstream.host}/models/tiny:v1`);
    const releases = await helmOk(["list", "--all-namespaces", "-o", "json"], helmAdmin());
    expect(JSON.parse(releases)).toEqual([]);
  });
});
