/**
 * One way for tests to get a Kubernetes API, whichever backs it: the project's API double
 * (fast, in-process, the default) or the real control plane built from tools/k8s
 * (`STOWAGE_TEST_APISERVER=real`, set by the `real-k8s` test project). Suites written against
 * this run unchanged on both; what only the double can do (its request hooks, webhook service
 * mapping) is reached through `double`, and a suite that needs it says so.
 */
import { writeFile } from "node:fs/promises";
import { type KubeObject, startApiServer, type TestApiServer } from "./apiserver/index.ts";
import { addServiceAccountUser } from "./apiserver/rbac.ts";
import {
  type ControlPlane,
  type ControlPlaneOptions,
  type CrdShape,
  isControlPlaneComponent,
  startControlPlane,
} from "./controlplane/index.ts";

export type ApiBackend = "double" | "real";

/** The backend this test run asked for: `STOWAGE_TEST_APISERVER` (`double` unless `real`). */
export function apiBackend(): ApiBackend {
  const asked = process.env.STOWAGE_TEST_APISERVER ?? "double";
  if (asked !== "double" && asked !== "real") {
    throw new Error(`STOWAGE_TEST_APISERVER must be "double" or "real", not "${asked}"`);
  }
  return asked;
}

export interface RequestLogEntry {
  method: string;
  path: string;
  verb: string;
  status: number;
  /** who asked (real only: the double does not record it) */
  user?: string;
}

export interface TestCluster {
  backend: ApiBackend;
  url: string;
  /** an admin's kubeconfig */
  kubeconfigPath: string;
  kubeconfig: string;
  /** creates an object as the admin; a CRD is returned once it is served */
  create(obj: KubeObject): Promise<KubeObject>;
  /**
   * A kubeconfig file that authenticates as ServiceAccount `namespace/name` with a real token
   * (real: TokenRequest; double: a token the double maps to that identity when started with `rbac`).
   */
  serviceAccountKubeconfig(namespace: string, name: string, path: string): Promise<string>;
  /**
   * Requests answered so far (real: from the audit log, without the control plane's own
   * components, which the double does not have: what tests and the code they run asked).
   */
  requestLog(): Promise<RequestLogEntry[]>;
  resetRequestLog(): Promise<void>;
  /**
   * Drops the watch history up to now, so a watch from an older resourceVersion gets 410 Gone.
   * Real: compacts etcd, which the apiserver answers with 410 only for a resource it does not
   * keep in its watch cache (start it with `--watch-cache-sizes=RESOURCE#0`); the cache serves
   * its history from memory, as in a real cluster.
   */
  compact(): Promise<void>;
  /** the API double, when that is the backend */
  double?: TestApiServer;
  /** the real control plane, when that is the backend */
  real?: ControlPlane;
  stop(): Promise<void>;
}

export interface TestClusterOptions {
  backend?: ApiBackend;
  /** CRDs to serve before the cluster is handed out */
  crds?: KubeObject[];
  /** double only: enforce RBAC (the real apiserver always does; its admin is `system:masters`) */
  rbac?: boolean;
  /** real only */
  controlPlane?: ControlPlaneOptions;
}

export async function startTestCluster(options: TestClusterOptions = {}): Promise<TestCluster> {
  const backend = options.backend ?? apiBackend();
  if (backend === "double") {
    const api = await startApiServer({ crds: options.crds, rbac: options.rbac });
    return {
      backend,
      url: api.url,
      kubeconfigPath: api.kubeconfigPath,
      kubeconfig: api.kubeconfig,
      create: (obj) => api.create(obj),
      async serviceAccountKubeconfig(namespace, name, path) {
        return addServiceAccountUser(api, namespace, name, path);
      },
      requestLog: async () => api.requestLog(),
      resetRequestLog: async () => api.resetRequestLog(),
      compact: async () => api.compact(),
      double: api,
      stop: () => api.stop(),
    };
  }
  // CRDs go in before the controller-manager starts, so its garbage collector knows them.
  const plane = await startControlPlane({ ...options.controlPlane, crds: options.crds });
  try {
    const create = (obj: KubeObject) => createObject(plane, obj);
    return {
      backend,
      url: plane.url,
      kubeconfigPath: plane.kubeconfigPath,
      kubeconfig: plane.kubeconfig,
      create,
      async serviceAccountKubeconfig(namespace, name, path) {
        await ensureNamespace(plane, namespace);
        const identity = await plane.kubeconfigForServiceAccount(namespace, name);
        await writeFile(path, identity.kubeconfig, { mode: 0o600 });
        return path;
      },
      requestLog: async () =>
        (await plane.requestLog()).filter((entry) => !isControlPlaneComponent(entry.user)),
      resetRequestLog: () => plane.resetRequestLog(),
      async compact() {
        await plane.compact();
      },
      real: plane,
      stop: () => plane.stop(),
    };
  } catch (err) {
    await plane.stop();
    throw err;
  }
}

async function ensureNamespace(plane: ControlPlane, namespace: string): Promise<void> {
  const res = await plane.request("POST", "/api/v1/namespaces", {
    apiVersion: "v1",
    kind: "Namespace",
    metadata: { name: namespace },
  });
  if (res.status !== 201 && res.status !== 409) {
    throw new Error(`creating namespace ${namespace}: ${res.status} ${JSON.stringify(res.body)}`);
  }
}

interface ApiResourceList {
  resources: { name: string; kind: string; namespaced: boolean }[];
}

const discovery = new WeakMap<ControlPlane, Map<string, ApiResourceList>>();

/** The REST path of `obj`'s collection, found through discovery as kubectl finds it. */
async function collectionPath(plane: ControlPlane, obj: KubeObject): Promise<string> {
  const apiVersion = obj.apiVersion ?? "";
  const base = apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
  let cache = discovery.get(plane);
  if (!cache) {
    cache = new Map();
    discovery.set(plane, cache);
  }
  let list = cache.get(base);
  const find = () => list?.resources.find((r) => r.kind === obj.kind && !r.name.includes("/"));
  if (!find()) {
    const res = await plane.request("GET", base);
    if (res.status !== 200) throw new Error(`no API serves ${apiVersion} (${res.status})`);
    list = res.body as ApiResourceList;
    cache.set(base, list);
  }
  const resource = find();
  if (!resource) throw new Error(`no resource serves ${obj.kind} in ${apiVersion}`);
  const namespace = obj.metadata?.namespace ?? "default";
  return resource.namespaced
    ? `${base}/namespaces/${namespace}/${resource.name}`
    : `${base}/${resource.name}`;
}

async function createObject(plane: ControlPlane, obj: KubeObject): Promise<KubeObject> {
  const path = await collectionPath(plane, obj);
  const res = await plane.request("POST", path, obj);
  if (res.status !== 201 && res.status !== 200) {
    throw new Error(
      `creating ${obj.kind} ${obj.metadata?.name}: ${res.status} ${res.body?.message ?? JSON.stringify(res.body)}`,
    );
  }
  if (obj.kind === "CustomResourceDefinition") {
    await plane.waitForCrd(res.body as CrdShape);
    discovery.get(plane)?.clear();
  }
  return res.body as KubeObject;
}
