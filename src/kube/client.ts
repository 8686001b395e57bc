import { existsSync } from "node:fs";
import {
  AppsV1Api,
  CoordinationV1Api,
  CoreV1Api,
  EventsV1Api,
  HttpMethod,
  KubeConfig,
  RequestContext,
} from "@kubernetes/client-node";
import { fetch } from "undici";
import { type Reason, StowageError } from "../util/errors.ts";

/** Where a kind lives in the REST API. */
export interface ResourceType {
  group: string; // "" for the core group
  version: string;
  plural: string;
  kind: string;
  namespaced: boolean;
}

/** The built-in resources Stowage touches. */
export const Resources = {
  Namespace: { group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false },
  Node: { group: "", version: "v1", plural: "nodes", kind: "Node", namespaced: false },
  Pod: { group: "", version: "v1", plural: "pods", kind: "Pod", namespaced: true },
  Secret: { group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true },
  ConfigMap: { group: "", version: "v1", plural: "configmaps", kind: "ConfigMap", namespaced: true },
  CoreEvent: { group: "", version: "v1", plural: "events", kind: "Event", namespaced: true },
  Event: { group: "events.k8s.io", version: "v1", plural: "events", kind: "Event", namespaced: true },
  Lease: { group: "coordination.k8s.io", version: "v1", plural: "leases", kind: "Lease", namespaced: true },
  CustomResourceDefinition: {
    group: "apiextensions.k8s.io",
    version: "v1",
    plural: "customresourcedefinitions",
    kind: "CustomResourceDefinition",
    namespaced: false,
  },
} as const satisfies Record<string, ResourceType>;

export function apiVersionOf(type: ResourceType): string {
  return type.group ? `${type.group}/${type.version}` : type.version;
}

/** The minimum every Kubernetes object has. */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: ObjectMeta;
}

export interface ObjectMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
  deletionTimestamp?: string | Date;
  creationTimestamp?: string | Date;
  ownerReferences?: unknown[];
}

export interface ObjectList<T> {
  apiVersion?: string;
  kind?: string;
  metadata: { resourceVersion?: string; continue?: string };
  items: T[];
}

export interface ListOptions {
  namespace?: string;
  labelSelector?: string;
  fieldSelector?: string;
  limit?: number;
  continue?: string;
  resourceVersion?: string;
}

/** A Kubernetes API error, keeping the HTTP code and the Status reason ("Conflict", "Expired", ...). */
export class KubeApiError extends StowageError {
  readonly code: number;
  readonly statusReason: string;

  constructor(code: number, statusReason: string, message: string, options: { cause?: unknown } = {}) {
    super(reasonForStatus(code), message, {
      cause: options.cause,
      status: code,
      retryable: code === 0 || code === 409 || code === 429 || code >= 500,
    });
    this.name = "KubeApiError";
    this.code = code;
    this.statusReason = statusReason;
  }
}

function reasonForStatus(code: number): Reason {
  if (code === 404) return "NotFound";
  if (code === 409) return "Conflict";
  if (code === 401) return "AuthFailed";
  if (code === 403) return "Denied";
  if (code === 400 || code === 422) return "InvalidArgument";
  if (code === 429) return "RateLimited";
  if (code === 0) return "Timeout";
  return "Internal";
}

export function isNotFound(err: unknown): boolean {
  return err instanceof KubeApiError && err.code === 404;
}

export function isConflict(err: unknown): boolean {
  return err instanceof KubeApiError && err.code === 409;
}

export function isGone(err: unknown): boolean {
  return err instanceof KubeApiError && err.code === 410;
}

/**
 * Load a kubeconfig: an explicit file, else `KUBECONFIG`, else the in-cluster service
 * account, else ~/.kube/config.
 */
export function loadKubeConfig(options: { path?: string; inCluster?: boolean } = {}): KubeConfig {
  const kc = new KubeConfig();
  if (options.path) {
    kc.loadFromFile(options.path);
  } else if (options.inCluster) {
    kc.loadFromCluster();
  } else if (process.env.KUBECONFIG) {
    kc.loadFromDefault();
  } else if (
    process.env.KUBERNETES_SERVICE_HOST &&
    existsSync("/var/run/secrets/kubernetes.io/serviceaccount/token")
  ) {
    kc.loadFromCluster();
  } else {
    kc.loadFromDefault();
  }
  if (!kc.getCurrentCluster()) {
    throw new StowageError(
      "InvalidArgument",
      "no Kubernetes cluster configured: set KUBECONFIG or run in a pod",
    );
  }
  return kc;
}

export type MergePatch = Record<string, unknown>;
export type JsonPatchOp =
  | { op: "add" | "replace" | "test"; path: string; value: unknown }
  | { op: "remove"; path: string }
  | { op: "move" | "copy"; from: string; path: string };

export const PatchType = {
  merge: "application/merge-patch+json",
  json: "application/json-patch+json",
} as const;

/**
 * One client per cluster. Built-ins are reachable both through client-node's typed APIs
 * (`core`, `coordination`, ...) and through the generic `resource(type)` client, which is
 * the one custom resources use.
 */
export class KubeClient {
  readonly kubeConfig: KubeConfig;
  readonly #server: string;
  #core: CoreV1Api | undefined;
  #apps: AppsV1Api | undefined;
  #coordination: CoordinationV1Api | undefined;
  #events: EventsV1Api | undefined;

  constructor(kubeConfig: KubeConfig) {
    this.kubeConfig = kubeConfig;
    const cluster = kubeConfig.getCurrentCluster();
    if (!cluster) throw new StowageError("InvalidArgument", "kubeconfig has no current cluster");
    this.#server = cluster.server.replace(/\/+$/, "");
  }

  static fromFile(path: string): KubeClient {
    return new KubeClient(loadKubeConfig({ path }));
  }

  get core(): CoreV1Api {
    this.#core ??= this.kubeConfig.makeApiClient(CoreV1Api);
    return this.#core;
  }

  get apps(): AppsV1Api {
    this.#apps ??= this.kubeConfig.makeApiClient(AppsV1Api);
    return this.#apps;
  }

  get coordination(): CoordinationV1Api {
    this.#coordination ??= this.kubeConfig.makeApiClient(CoordinationV1Api);
    return this.#coordination;
  }

  get events(): EventsV1Api {
    this.#events ??= this.kubeConfig.makeApiClient(EventsV1Api);
    return this.#events;
  }

  resource<T extends KubeObject = KubeObject>(type: ResourceType): ObjectClient<T> {
    return new ObjectClient<T>(this, type);
  }

  /** One REST call with the kubeconfig's credentials and TLS settings; JSON in, JSON out. */
  async request<R>(
    method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE",
    path: string,
    options: {
      query?: Record<string, string | number | boolean | undefined>;
      body?: unknown;
      contentType?: string;
      signal?: AbortSignal;
    } = {},
  ): Promise<R> {
    const url = new URL(this.#server + path);
    for (const [name, value] of Object.entries(options.query ?? {})) {
      if (value !== undefined && value !== "") url.searchParams.set(name, String(value));
    }
    const ctx = new RequestContext(url.toString(), HttpMethod[method]);
    await this.kubeConfig.applySecurityAuthentication(ctx);
    const headers: Record<string, string> = { ...ctx.getHeaders(), accept: "application/json" };
    if (options.body !== undefined) headers["content-type"] = options.contentType ?? "application/json";
    let response: Awaited<ReturnType<typeof fetch>>;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        dispatcher: ctx.getDispatcher(),
        signal: options.signal,
      });
    } catch (err) {
      throw new KubeApiError(0, "ConnectionFailed", `${method} ${url.pathname}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const text = await response.text();
    if (!response.ok) {
      let status: { reason?: string; message?: string } = {};
      try {
        status = JSON.parse(text);
      } catch {
        // not a Status object: keep the raw text as the message
      }
      throw new KubeApiError(
        response.status,
        status.reason ?? response.statusText,
        `${method} ${url.pathname}: ${response.status} ${status.message ?? text.slice(0, 200)}`,
      );
    }
    return (text ? JSON.parse(text) : undefined) as R;
  }
}

export interface RequestOptions {
  signal?: AbortSignal;
}

/** get/list/create/update/patch/updateStatus/delete for one resource type. */
export class ObjectClient<T extends KubeObject> {
  readonly type: ResourceType;
  readonly #client: KubeClient;

  constructor(client: KubeClient, type: ResourceType) {
    this.#client = client;
    this.type = type;
  }

  /** The collection path, in a namespace when given (and the type is namespaced). */
  collectionPath(namespace?: string): string {
    const base = this.type.group
      ? `/apis/${this.type.group}/${this.type.version}`
      : `/api/${this.type.version}`;
    if (this.type.namespaced && namespace)
      return `${base}/namespaces/${encodeURIComponent(namespace)}/${this.type.plural}`;
    return `${base}/${this.type.plural}`;
  }

  objectPath(name: string, namespace?: string, subresource?: string): string {
    const path = `${this.collectionPath(namespace)}/${encodeURIComponent(name)}`;
    return subresource ? `${path}/${subresource}` : path;
  }

  get(name: string, namespace?: string, options: RequestOptions = {}): Promise<T> {
    return this.#client.request<T>("GET", this.objectPath(name, namespace), options);
  }

  /** The object, or undefined when it does not exist. */
  async find(name: string, namespace?: string): Promise<T | undefined> {
    try {
      return await this.get(name, namespace);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  list(options: ListOptions = {}): Promise<ObjectList<T>> {
    const { namespace, ...query } = options;
    return this.#client.request<ObjectList<T>>("GET", this.collectionPath(namespace), {
      query: { ...query },
    });
  }

  create(obj: T, options: RequestOptions = {}): Promise<T> {
    return this.#client.request<T>("POST", this.collectionPath(obj.metadata?.namespace), {
      ...options,
      body: this.#withTypeMeta(obj),
    });
  }

  /** PUT the whole object; fails with 409 when metadata.resourceVersion is stale. */
  update(obj: T, options: RequestOptions = {}): Promise<T> {
    return this.#client.request<T>("PUT", this.#pathOf(obj), { ...options, body: this.#withTypeMeta(obj) });
  }

  /** PUT through the /status subresource: only status changes are kept. */
  updateStatus(obj: T): Promise<T> {
    return this.#client.request<T>("PUT", this.#pathOf(obj, "status"), { body: this.#withTypeMeta(obj) });
  }

  /** A merge patch (RFC 7386) by default, or a JSON patch (RFC 6902); the content type is always explicit. */
  patch(
    name: string,
    patch: MergePatch | JsonPatchOp[],
    options: { namespace?: string; subresource?: "status"; type?: keyof typeof PatchType } = {},
  ): Promise<T> {
    const type = options.type ?? (Array.isArray(patch) ? "json" : "merge");
    return this.#client.request<T>("PATCH", this.objectPath(name, options.namespace, options.subresource), {
      body: patch,
      contentType: PatchType[type],
    });
  }

  patchStatus(name: string, patch: MergePatch, namespace?: string): Promise<T> {
    return this.patch(name, patch, { namespace, subresource: "status", type: "merge" });
  }

  async delete(name: string, namespace?: string): Promise<void> {
    await this.#client.request("DELETE", this.objectPath(name, namespace));
  }

  #pathOf(obj: T, subresource?: string): string {
    const name = obj.metadata?.name;
    if (!name) throw new StowageError("InvalidArgument", `${this.type.kind} without metadata.name`);
    return this.objectPath(name, obj.metadata?.namespace, subresource);
  }

  #withTypeMeta(obj: T): T {
    return { apiVersion: apiVersionOf(this.type), kind: this.type.kind, ...obj };
  }
}
