/**
 * RBAC proved, not claimed: the real controller process runs as the chart's ServiceAccount,
 * bound to exactly the rule lists the chart ships (charts/stowage/files/rbac/*.yaml, bound the way
 * templates/controller-rbac.yaml binds them), against an API double that enforces RBAC. A missing
 * permission makes the ModelImage fail to become Ready, or shows up as a 403 in the request log.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { loadCrd } from "../../src/api/crds.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type KubeObject, startApiServer, type TestApiServer } from "../../testkit/apiserver/index.ts";
import { addServiceAccountUser } from "../../testkit/apiserver/rbac.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { dockerConfigSecret, eventually, modelImage, root } from "./helpers.ts";

const releaseNamespace = "stowage-system";
const serviceAccount = "stowage-controller";
const teamUser = { username: "ml-team", password: "team-Pa55word" };
const rbacGroup = "rbac.authorization.k8s.io";

async function chartRules(file: string): Promise<object[]> {
  return parse(await readFile(join(root, "charts/stowage/files/rbac", file), "utf8")) as object[];
}

const subjects = [{ kind: "ServiceAccount", name: serviceAccount, namespace: releaseNamespace }];
const roleRef = (kind: string, name: string) => ({ apiGroup: rbacGroup, kind, name });

/** What templates/controller-rbac.yaml renders for release "stowage" (webhook off). */
async function controllerRbac(
  watchNamespaces: string[],
  dropRule?: (rule: object) => boolean,
): Promise<object[]> {
  const namespaced = (await chartRules("controller-namespaced.yaml")).filter((r) => !dropRule?.(r));
  const objects: object[] = [
    {
      apiVersion: `${rbacGroup}/v1`,
      kind: "ClusterRole",
      metadata: { name: "stowage-controller-cluster" },
      rules: await chartRules("controller-cluster.yaml"),
    },
    {
      apiVersion: `${rbacGroup}/v1`,
      kind: "ClusterRoleBinding",
      metadata: { name: "stowage-controller-cluster" },
      roleRef: roleRef("ClusterRole", "stowage-controller-cluster"),
      subjects,
    },
    {
      apiVersion: `${rbacGroup}/v1`,
      kind: "ClusterRole",
      metadata: { name: "stowage-controller-namespaced" },
      rules: namespaced,
    },
    {
      apiVersion: `${rbacGroup}/v1`,
      kind: "Role",
      metadata: { name: "stowage-controller-leader-election", namespace: releaseNamespace },
      rules: await chartRules("controller-leader-election.yaml"),
    },
    {
      apiVersion: `${rbacGroup}/v1`,
      kind: "RoleBinding",
      metadata: { name: "stowage-controller-leader-election", namespace: releaseNamespace },
      roleRef: roleRef("Role", "stowage-controller-leader-election"),
      subjects,
    },
  ];
  if (watchNamespaces.length === 0) {
    objects.push({
      apiVersion: `${rbacGroup}/v1`,
      kind: "ClusterRoleBinding",
      metadata: { name: "stowage-controller-namespaced" },
      roleRef: roleRef("ClusterRole", "stowage-controller-namespaced"),
      subjects,
    });
  }
  for (const namespace of watchNamespaces) {
    objects.push({
      apiVersion: `${rbacGroup}/v1`,
      kind: "RoleBinding",
      metadata: { name: "stowage-controller", namespace },
      roleRef: roleRef("ClusterRole", "stowage-controller-namespaced"),
      subjects,
    });
  }
  return objects;
}

interface Env {
  api: TestApiServer;
  dir: string;
  controllerKubeconfig: string;
  kubectl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }>;
  apply(documents: object[]): Promise<void>;
}

async function startEnv(): Promise<Env> {
  const api = await startApiServer({
    rbac: true,
    crds: [loadCrd("stowage.dev_modelimages") as unknown as KubeObject],
  });
  const dir = await mkdtemp(join(tmpdir(), "stowage-rbac-e2e-"));
  const controllerKubeconfig = addServiceAccountUser(
    api,
    releaseNamespace,
    serviceAccount,
    join(dir, "controller.kubeconfig"),
  );
  let files = 0;
  const kubectl = (args: string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(
        "/usr/bin/kubectl",
        ["--kubeconfig", api.kubeconfigPath, "--cache-dir", join(dir, "kube-cache"), ...args],
        { env: { ...process.env, HOME: dir, KUBECONFIG: "" }, timeout: 60_000 },
        (error, stdout, stderr) =>
          resolve({ code: error ? (typeof error.code === "number" ? error.code : 1) : 0, stdout, stderr }),
      );
    });
  const apply = async (documents: object[]) => {
    const file = join(dir, `manifest-${++files}.yaml`);
    await writeFile(file, documents.map((d) => stringify(d)).join("---\n"));
    const run = await kubectl(["apply", "-f", file]);
    if (run.code !== 0) throw new Error(`kubectl apply failed: ${run.stderr}`);
  };
  return { api, dir, controllerKubeconfig, kubectl, apply };
}

async function condition(env: Env, namespace: string, name: string, type: string) {
  const run = await env.kubectl(["get", "mi", name, "-n", namespace, "-o", "json"]);
  if (run.code !== 0) return undefined;
  const mi = JSON.parse(run.stdout) as {
    status?: { conditions?: { type: string; status: string; reason?: string; message?: string }[] };
  };
  return mi.status?.conditions?.find((c) => c.type === type);
}

const namespaceObject = (name: string) => ({ apiVersion: "v1", kind: "Namespace", metadata: { name } });

let upstream: RunningRegistry;
let cache: RunningRegistry;

beforeAll(async () => {
  [upstream, cache] = await Promise.all([
    startRegistry({ auth: "htpasswd", users: [teamUser] }),
    startRegistry(),
  ]);
  const owner = new RegistryClient({ credentials: () => teamUser, insecureHosts: [upstream.host] });
  await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "team/model" }, "v1");
  await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "team/other" }, "v1");
  await owner.close();
});

afterAll(async () => {
  await Promise.all([upstream?.stop(), cache?.stop()]);
});

describe("the controller with exactly the chart's RBAC", () => {
  let env: Env;
  let controller: ControllerProcess | undefined;

  beforeAll(async () => {
    env = await startEnv();
    await env.apply([namespaceObject(releaseNamespace), namespaceObject("ml")]);
    await env.apply(await controllerRbac([]));
    await env.apply([dockerConfigSecret("team-registry", "ml", upstream.host, teamUser)]);
  });

  afterAll(async () => {
    await controller?.kill("SIGTERM");
    await env?.api.stop();
    if (env) await rm(env.dir, { recursive: true, force: true });
  });

  it("lets the ServiceAccount get a Secret by name but not list Secrets (its identity really is checked)", async () => {
    const response = await fetch(`${env.api.url}/api/v1/namespaces/ml/secrets/team-registry`, {
      headers: {
        authorization: `Bearer ${(await readFile(env.controllerKubeconfig, "utf8")).match(/token: (\S+)/)?.[1]}`,
      },
    });
    expect(response.status).toBe(200);
    const list = await fetch(`${env.api.url}/api/v1/namespaces/ml/secrets`, {
      headers: {
        authorization: `Bearer ${(await readFile(env.controllerKubeconfig, "utf8")).match(/token: (\S+)/)?.[1]}`,
      },
    });
    expect(list.status).toBe(403);
    expect(((await list.json()) as { message: string }).message).toBe(
      `secrets is forbidden: User "system:serviceaccount:${releaseNamespace}:${serviceAccount}" cannot list resource "secrets" in API group "" in the namespace "ml"`,
    );
  });

  it("makes a ModelImage with a pull secret Ready, holding the Lease, without a single 403", async () => {
    env.api.resetRequestLog();
    controller = await startControllerProcess({
      kubeconfig: env.controllerKubeconfig,
      cacheRegistry: cache.url,
      args: ["--insecure-registry", upstream.host],
    });
    await env.apply([
      modelImage(
        "team-model",
        { image: `${upstream.host}/team/model:v1`, pullSecrets: [{ name: "team-registry" }] },
        "ml",
      ),
    ]);
    const ready = await eventually(
      "ml/team-model Ready=True",
      async () => ((await condition(env, "ml", "team-model", "Ready"))?.status === "True" ? true : undefined),
      90_000,
    );
    expect(ready).toBe(true);
    const lease = await env.kubectl([
      "get",
      "lease",
      "stowage-controller",
      "-n",
      releaseNamespace,
      "-o",
      "json",
    ]);
    expect(JSON.parse(lease.stdout).spec.holderIdentity).toBe(controller.identity);
    const forbidden = env.api.requestLog().filter((entry) => entry.status === 403);
    expect(forbidden).toEqual([]);
  });

  it("reports the missing permission on the ModelImage when the chart's secrets rule is taken away", async () => {
    await env.apply(
      await controllerRbac([], (rule) => (rule as { resources: string[] }).resources.includes("secrets")),
    );
    await env.apply([
      modelImage(
        "team-other",
        { image: `${upstream.host}/team/other:v1`, pullSecrets: [{ name: "team-registry" }] },
        "ml",
      ),
    ]);
    const denied = await eventually(
      "ml/team-other reports the refused secret",
      async () => {
        const ready = await condition(env, "ml", "team-other", "Ready");
        return ready?.status === "False" && /forbidden/.test(ready.message ?? "") ? ready : undefined;
      },
      90_000,
    );
    expect(denied.message).toContain(
      `User "system:serviceaccount:${releaseNamespace}:${serviceAccount}" cannot get resource "secrets" in API group "" in the namespace "ml"`,
    );
    expect(denied.message).toContain("the controller needs get on secrets in that namespace");
  });
});

describe("the controller with the chart's RBAC for watchNamespaces", () => {
  let env: Env;
  let controller: ControllerProcess | undefined;

  beforeAll(async () => {
    env = await startEnv();
    await env.apply([namespaceObject(releaseNamespace), namespaceObject("ml"), namespaceObject("research")]);
    await env.apply(await controllerRbac(["ml"]));
    await env.apply([dockerConfigSecret("team-registry", "ml", upstream.host, teamUser)]);
  });

  afterAll(async () => {
    await controller?.kill("SIGTERM");
    await env?.api.stop();
    if (env) await rm(env.dir, { recursive: true, force: true });
  });

  it("syncs ModelImages in the watched namespace with RoleBindings only there, without a single 403", async () => {
    env.api.resetRequestLog();
    controller = await startControllerProcess({
      kubeconfig: env.controllerKubeconfig,
      cacheRegistry: cache.url,
      args: ["--insecure-registry", upstream.host, "--namespace", "ml"],
    });
    await env.apply([
      modelImage(
        "team-model",
        { image: `${upstream.host}/team/model:v1`, pullSecrets: [{ name: "team-registry" }] },
        "ml",
      ),
    ]);
    await eventually(
      "ml/team-model Ready=True",
      async () => ((await condition(env, "ml", "team-model", "Ready"))?.status === "True" ? true : undefined),
      90_000,
    );
    expect(env.api.requestLog().filter((entry) => entry.status === 403)).toEqual([]);
    // and the same identity can read nothing in a namespace it does not watch
    const token = (await readFile(env.controllerKubeconfig, "utf8")).match(/token: (\S+)/)?.[1];
    const elsewhere = await fetch(
      `${env.api.url}/apis/stowage.dev/v1alpha1/namespaces/research/modelimages`,
      {
        headers: { authorization: `Bearer ${token}` },
      },
    );
    expect(elsewhere.status).toBe(403);
  });
});
