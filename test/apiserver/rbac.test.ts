import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startApiServer, type TestApiServer } from "../../testkit/apiserver/index.ts";
import { addServiceAccountUser, serviceAccountUser } from "../../testkit/apiserver/rbac.ts";

const controllerSa = { namespace: "stowage-system", name: "stowage-controller" };
const controllerUser = serviceAccountUser(controllerSa.namespace, controllerSa.name).user;

let api: TestApiServer;
let dir: string;
let controllerToken: string;

/** The bearer token a kubeconfig written by addServiceAccountUser carries. */
function tokenOf(kubeconfigPath: string): string {
  const config = new KubeConfig();
  config.loadFromFile(kubeconfigPath);
  return config.getCurrentUser()?.token ?? "";
}

async function call(
  token: string,
  method: string,
  path: string,
  body?: object,
): Promise<{ status: number; body: { message?: string; reason?: string; kind?: string } }> {
  const response = await fetch(`${api.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: response.status, body: (await response.json()) as { message?: string; reason?: string } };
}

const admin = (method: string, path: string, body?: object) => call("stowage-test-token", method, path, body);

beforeAll(async () => {
  api = await startApiServer({ rbac: true });
  dir = mkdtempSync(join(tmpdir(), "stowage-rbac-"));
  controllerToken = tokenOf(
    addServiceAccountUser(api, controllerSa.namespace, controllerSa.name, join(dir, "controller.kubeconfig")),
  );
  for (const name of ["stowage-system", "ml", "other"])
    await admin("POST", "/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name } });
  for (const namespace of ["ml", "other"])
    await admin("POST", `/api/v1/namespaces/${namespace}/secrets`, {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: "ngc", namespace },
      stringData: { token: "x" },
    });
});

afterAll(async () => {
  await api.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe("RBAC in the API double", () => {
  it("refuses a service account without bindings with the API server's Forbidden message", async () => {
    const denied = await call(controllerToken, "GET", "/api/v1/namespaces/ml/secrets/ngc");
    expect(denied.status).toBe(403);
    expect(denied.body.reason).toBe("Forbidden");
    expect(denied.body.message).toBe(
      `secrets "ngc" is forbidden: User "${controllerUser}" cannot get resource "secrets" in API group "" in the namespace "ml"`,
    );
    const clusterScope = await call(controllerToken, "GET", "/api/v1/nodes");
    expect(clusterScope.body.message).toBe(
      `nodes is forbidden: User "${controllerUser}" cannot list resource "nodes" in API group "" at the cluster scope`,
    );
  });

  it("answers 401 to a token it does not know and lets the admin (token or no credentials) through", async () => {
    expect((await call("not-a-token", "GET", "/api/v1/namespaces")).status).toBe(401);
    // kubectl sends no token to a plain-http server: no credentials is the test admin
    expect((await fetch(`${api.url}/api/v1/namespaces`)).status).toBe(200);
    expect((await admin("GET", "/api/v1/namespaces")).status).toBe(200);
  });

  it("grants a Role's rules through a RoleBinding only inside that namespace", async () => {
    await admin("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/ml/roles", {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "Role",
      metadata: { name: "read-secrets", namespace: "ml" },
      rules: [{ apiGroups: [""], resources: ["secrets"], verbs: ["get"] }],
    });
    await admin("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/ml/rolebindings", {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "RoleBinding",
      metadata: { name: "controller-reads-secrets", namespace: "ml" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "read-secrets" },
      subjects: [{ kind: "ServiceAccount", name: controllerSa.name, namespace: controllerSa.namespace }],
    });
    expect((await call(controllerToken, "GET", "/api/v1/namespaces/ml/secrets/ngc")).status).toBe(200);
    expect((await call(controllerToken, "GET", "/api/v1/namespaces/other/secrets/ngc")).status).toBe(403);
    // get does not imply list
    expect((await call(controllerToken, "GET", "/api/v1/namespaces/ml/secrets")).status).toBe(403);
  });

  it("grants a ClusterRole everywhere through a ClusterRoleBinding to a group, subresources named explicitly", async () => {
    await admin("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRole",
      metadata: { name: "node-reader" },
      rules: [
        { apiGroups: [""], resources: ["nodes"], verbs: ["get", "list", "watch"] },
        { apiGroups: [""], resources: ["nodes/status"], verbs: ["get"], resourceNames: ["gpu-1"] },
      ],
    });
    await admin("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRoleBinding",
      metadata: { name: "sa-read-nodes" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "node-reader" },
      subjects: [{ kind: "Group", name: "system:serviceaccounts:stowage-system" }],
    });
    await admin("POST", "/api/v1/nodes", { apiVersion: "v1", kind: "Node", metadata: { name: "gpu-1" } });
    await admin("POST", "/api/v1/nodes", { apiVersion: "v1", kind: "Node", metadata: { name: "gpu-2" } });
    expect((await call(controllerToken, "GET", "/api/v1/nodes")).status).toBe(200);
    expect((await call(controllerToken, "GET", "/api/v1/nodes/gpu-2")).status).toBe(200);
    expect((await call(controllerToken, "GET", "/api/v1/nodes/gpu-1/status")).status).toBe(200);
    const otherNodeStatus = await call(controllerToken, "GET", "/api/v1/nodes/gpu-2/status");
    expect(otherNodeStatus.status).toBe(403);
    expect(otherNodeStatus.body.message).toContain('cannot get resource "nodes/status"');
    // read-only: a write is still refused
    expect((await call(controllerToken, "DELETE", "/api/v1/nodes/gpu-2")).status).toBe(403);
  });

  it("drops a grant as soon as its binding is deleted", async () => {
    await admin(
      "DELETE",
      "/apis/rbac.authorization.k8s.io/v1/namespaces/ml/rolebindings/controller-reads-secrets",
    );
    expect((await call(controllerToken, "GET", "/api/v1/namespaces/ml/secrets/ngc")).status).toBe(403);
  });
});
