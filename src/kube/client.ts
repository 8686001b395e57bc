import { readFile } from "node:fs/promises";
import type { IncomingMessage } from "node:http";
import {
  Agent as HttpsAgent,
  type RequestOptions as HttpsRequestOptions,
  request as httpsRequest,
} from "node:https";
import type {
  AppsV1Api,
  CoordinationV1Api,
  CoreV1Api,
  EventsV1Api,
  KubeConfig,
} from "@kubernetes/client-node";
import { type Reason, StowageError } from "../util/errors.ts";
import { nodeHttp } from "../util/nodeHttp.ts";
import { clampTimerMs } from "../util/timer.ts";
import { stowageVersion } from "../util/version.ts";
import { type ClusterConfig, clientNodeKubeConfig, loadClusterConfig } from "./kubeconfig.ts";

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

export type MergePatch = Record<string, unknown>;
export type JsonPatchOp =
  | { op: "add" | "replace" | "test"; path: string; value: unknown }
  | { op: "remove"; path: string }
  | { op: "move" | "copy"; from: string; path: string };

export const PatchType = {
  merge: "application/merge-patch+json",
  json: "application/json-patch+json",
} as const;

/** client-node's typed APIs for built-ins, over the same cluster configuration. */
export interface TypedApis {
  kubeConfig: KubeConfig;
  core: CoreV1Api;
  apps: AppsV1Api;
  coordination: CoordinationV1Api;
  events: EventsV1Api;
}

type Method = "GET" | "POST" | "PUT" | "PATCH" | "DELETE";

export interface RequestInit {
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  contentType?: string;
  signal?: AbortSignal;
}

export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";

/**
 * One client per cluster: JSON over node:http(s) keep-alive connections with the cluster's TLS
 * material and credentials. (node:http rather than undici: importing undici costs ≈ 20 MB of RSS
 * and the controller's target is < 150 MB; these calls need nothing undici adds.)
 * Custom resources and built-ins alike go through `resource(type)`; client-node's typed APIs
 * are available through `typed()`, imported on first use (see kubeconfig.ts for why).
 */
/**
 * HTTPS_PROXY/HTTP_PROXY/NO_PROXY for the API server connection, as kubectl honours them, through
 * Node's built-in agent proxy support (`proxyEnv`, Node >= 24.5); undefined without a proxy. In a
 * pod the API server (KUBERNETES_SERVICE_HOST) and cluster names are never sent to a proxy.
 */
export function apiServerProxyEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv | undefined {
  const read = (name: string) =>
    env[name.toLowerCase()]?.trim() || env[name.toUpperCase()]?.trim() || undefined;
  const httpProxy = read("http_proxy");
  const httpsProxy = read("https_proxy");
  if (!httpProxy && !httpsProxy) return undefined;
  const noProxy = [
    read("no_proxy"),
    env.KUBERNETES_SERVICE_HOST?.trim(),
    "localhost",
    ".svc",
    ".cluster.local",
  ]
    .filter((entry): entry is string => Boolean(entry))
    .join(",");
  return { HTTP_PROXY: httpProxy, HTTPS_PROXY: httpsProxy, NO_PROXY: noProxy };
}

export class KubeClient {
  readonly config: ClusterConfig;
  readonly #agent: import("node:http").Agent;
  readonly #https: boolean;
  #typed: Promise<TypedApis> | undefined;
  #delegate: Promise<KubeConfig> | undefined;
  #fileToken: { value: string; readAt: number } | undefined;

  /** Sent as User-Agent (`stowage-controller/1.2.3`), for the API server's logs and audit. */
  readonly userAgent: string;
  /**
   * Sent as `fieldManager` on every create, update and patch, so `managedFields` names this
   * component (default: the User-Agent's product, `stowage-controller`). The API server would
   * otherwise derive it from the User-Agent, which a proxy or wrapper may rewrite.
   */
  readonly fieldManager: string;

  constructor(
    config: ClusterConfig,
    userAgent = `stowage/${stowageVersion()}`,
    fieldManager?: string,
    env: NodeJS.ProcessEnv = process.env,
  ) {
    this.config = config;
    this.userAgent = userAgent;
    this.fieldManager = fieldManager ?? (userAgent.split("/")[0].trim() || "stowage").slice(0, 128);
    this.#https = config.server.startsWith("https:");
    const proxyEnv = apiServerProxyEnv(env);
    this.#agent = this.#https
      ? new HttpsAgent({
          keepAlive: true,
          ca: config.tls.ca,
          cert: config.tls.cert,
          key: config.tls.key,
          rejectUnauthorized: !config.tls.insecureSkipTLSVerify,
          servername: config.tls.serverName,
          proxyEnv,
        })
      : new nodeHttp.Agent({ keepAlive: true, proxyEnv });
  }

  /** A client for the cluster `loadClusterConfig` resolves (explicit file, KUBECONFIG, in-cluster, ~/.kube/config). */
  static load(
    options: {
      path?: string;
      inCluster?: boolean;
      context?: string;
      userAgent?: string;
      fieldManager?: string;
    } = {},
  ): KubeClient {
    return new KubeClient(loadClusterConfig(options), options.userAgent, options.fieldManager);
  }

  get server(): string {
    return this.config.server;
  }

  typed(): Promise<TypedApis> {
    this.#typed ??= (async () => {
      const kc = await clientNodeKubeConfig(this.config.source);
      const { AppsV1Api, CoordinationV1Api, CoreV1Api, EventsV1Api } = await import(
        "@kubernetes/client-node"
      );
      return {
        kubeConfig: kc,
        core: kc.makeApiClient(CoreV1Api),
        apps: kc.makeApiClient(AppsV1Api),
        coordination: kc.makeApiClient(CoordinationV1Api),
        events: kc.makeApiClient(EventsV1Api),
      };
    })();
    return this.#typed;
  }

  resource<T extends KubeObject = KubeObject>(type: ResourceType): ObjectClient<T> {
    return new ObjectClient<T>(this, type);
  }

  /**
   * Longest a REST call (anything but a watch) may take to be answered in full, in ms. The API
   * server ends its own requests after 60 s (--request-timeout), so past this the connection is
   * taken for dead (a half-open socket behind a load balancer, a connection attempt lost under
   * load): the call fails with reason Timeout, which callers retry, instead of holding its
   * informer or reconcile until TCP gives up minutes later.
   */
  requestTimeoutMs = 70_000;

  /** One REST call; JSON in, JSON out; non-2xx answers become KubeApiError. */
  async request<R>(method: Method, path: string, init: RequestInit = {}): Promise<R> {
    // One controller for the caller's signal and the deadline, with the listener removed after:
    // AbortSignal.any on a long-lived caller signal (a controller's stop) keeps every request's
    // signal reachable from it until that signal is collected.
    const exchange = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      exchange.abort(new Error(`no answer within ${this.requestTimeoutMs} ms`));
    }, clampTimerMs(this.requestTimeoutMs));
    timer.unref();
    const callerAbort = () => exchange.abort(init.signal?.reason);
    if (init.signal?.aborted) callerAbort();
    else init.signal?.addEventListener("abort", callerAbort, { once: true });
    let response: IncomingMessage;
    let text: string;
    try {
      response = await this.#send(method, path, { ...init, signal: exchange.signal });
      text = await readText(response);
    } catch (err) {
      if (!timedOut || init.signal?.aborted) throw err;
      throw new KubeApiError(
        0,
        "Timeout",
        `${method} ${path}: no complete answer within ${this.requestTimeoutMs} ms; the connection is taken for dead`,
        { cause: err },
      );
    } finally {
      clearTimeout(timer);
      init.signal?.removeEventListener("abort", callerAbort);
    }
    const status = response.statusCode ?? 0;
    if (status < 200 || status > 299)
      throw apiError(method, path, status, response.statusMessage ?? "", text);
    return (text ? JSON.parse(text) : undefined) as R;
  }

  /**
   * Watch a collection: calls `onEvent` for each event until the server ends the stream
   * (resolves), the connection fails or nothing arrives for `inactivityMs` (rejects), or
   * `signal` aborts (resolves). A non-200 answer rejects with KubeApiError (410 when the
   * resourceVersion is too old).
   */
  async watch(
    path: string,
    query: Record<string, string | number | boolean | undefined>,
    onEvent: (type: WatchEventType, object: unknown) => void,
    options: { signal?: AbortSignal; inactivityMs?: number } = {},
  ): Promise<void> {
    const abort = new AbortController();
    const stop = () => abort.abort(options.signal?.reason);
    options.signal?.addEventListener("abort", stop, { once: true });
    let inactive = false;
    let timer: NodeJS.Timeout | undefined;
    const resetTimer = () => {
      clearTimeout(timer);
      timer = setTimeout(
        () => {
          inactive = true;
          abort.abort(new Error("watch inactive"));
        },
        clampTimerMs(options.inactivityMs ?? 120_000),
      );
      timer.unref();
    };
    try {
      resetTimer();
      const response = await this.#send("WATCH", path, {
        query: { ...query, watch: true },
        signal: abort.signal,
      });
      if (response.statusCode !== 200) {
        throw apiError(
          "WATCH",
          path,
          response.statusCode ?? 0,
          response.statusMessage ?? "",
          await readText(response),
        );
      }
      let buffered = "";
      response.setEncoding("utf8");
      for await (const chunk of response) {
        resetTimer();
        buffered += chunk as string;
        let newline = buffered.indexOf("\n");
        while (newline >= 0) {
          const line = buffered.slice(0, newline).trim();
          buffered = buffered.slice(newline + 1);
          if (line) {
            const event = JSON.parse(line) as { type: WatchEventType; object: unknown };
            onEvent(event.type, event.object);
          }
          newline = buffered.indexOf("\n");
        }
      }
    } catch (err) {
      if (options.signal?.aborted) return;
      if (inactive)
        throw new KubeApiError(
          0,
          "Timeout",
          `WATCH ${path}: no data for ${options.inactivityMs ?? 120_000} ms`,
        );
      throw err;
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", stop);
    }
  }

  /** Close pooled connections. */
  close(): void {
    this.#agent.destroy();
  }

  /** Send one request; resolves with the response once its headers arrived. */
  async #send(method: Method | "WATCH", path: string, init: RequestInit): Promise<IncomingMessage> {
    const url = new URL(this.config.server + path);
    for (const [name, value] of Object.entries(init.query ?? {})) {
      if (value !== undefined && value !== "") url.searchParams.set(name, String(value));
    }
    if (
      (method === "POST" || method === "PUT" || method === "PATCH") &&
      !url.searchParams.has("fieldManager")
    )
      url.searchParams.set("fieldManager", this.fieldManager);
    const body = init.body === undefined ? undefined : JSON.stringify(init.body);
    const options: HttpsRequestOptions = {
      method: method === "WATCH" ? "GET" : method,
      headers: { accept: "application/json", "user-agent": this.userAgent },
      agent: this.#agent,
    };
    if (body !== undefined) {
      Object.assign(options.headers!, {
        "content-type": init.contentType ?? "application/json",
        "content-length": Buffer.byteLength(body),
      });
    }
    await this.#authorize(options);
    return new Promise((resolve, reject) => {
      let response: IncomingMessage | undefined;
      const request = (this.#https ? httpsRequest : nodeHttp.request)(url, options, (received) => {
        response = received;
        // Readers see stream errors through iteration; this keeps a late one (after the reader
        // stopped) from becoming an uncaught exception.
        received.on("error", () => {});
        resolve(received);
      });
      // Abort only while the exchange is in flight: a response already read to the end (or a
      // signal firing after the request closed) is left alone.
      const signal = init.signal;
      const onAbort = () => {
        const reason = signal?.reason ?? new Error("aborted");
        if (!response) request.destroy(reason);
        else if (!response.complete) response.destroy(reason);
      };
      if (signal?.aborted) onAbort();
      else signal?.addEventListener("abort", onAbort, { once: true });
      request.on("close", () => signal?.removeEventListener("abort", onAbort));
      request.on("error", (err) => {
        if (init.signal?.aborted) reject(err);
        else
          reject(
            new KubeApiError(0, "ConnectionFailed", `${method} ${url.pathname}: ${err.message}`, {
              cause: err,
            }),
          );
      });
      request.end(body);
    });
  }

  /** Add credentials (and, for delegated auth, client-node's TLS agent) to the request options. */
  async #authorize(options: HttpsRequestOptions): Promise<void> {
    const headers = options.headers as Record<string, string | number>;
    if (this.config.delegateAuth) {
      // exec / auth-provider: client-node runs the plugin, caches the credential and its agent.
      this.#delegate ??= clientNodeKubeConfig(this.config.source);
      const delegated: HttpsRequestOptions = { headers: {} };
      await (await this.#delegate).applyToHTTPSOptions(delegated);
      Object.assign(headers, delegated.headers);
      if (delegated.auth) headers.authorization = `Basic ${Buffer.from(delegated.auth).toString("base64")}`;
      // Its agent carries TLS material (possibly an exec-issued client certificate).
      if (delegated.agent && this.#https) options.agent = delegated.agent;
      return;
    }
    const token = await this.#token();
    if (token) headers.authorization = `Bearer ${token}`;
    else if (this.config.basic) {
      const { username, password } = this.config.basic;
      headers.authorization = `Basic ${Buffer.from(`${username}:${password}`).toString("base64")}`;
    }
  }

  async #token(): Promise<string | undefined> {
    if (!this.config.tokenFile) return this.config.token;
    // Projected service-account tokens rotate: re-read the file every minute.
    if (!this.#fileToken || Date.now() - this.#fileToken.readAt > 60_000) {
      this.#fileToken = { value: (await readFile(this.config.tokenFile, "utf8")).trim(), readAt: Date.now() };
    }
    return this.#fileToken.value;
  }
}

async function readText(response: IncomingMessage): Promise<string> {
  response.setEncoding("utf8");
  let text = "";
  for await (const chunk of response) text += chunk;
  return text;
}

function apiError(
  method: string,
  path: string,
  code: number,
  statusText: string,
  body: string,
): KubeApiError {
  let status: { reason?: string; message?: string } = {};
  try {
    status = JSON.parse(body);
  } catch {
    // not a Status object: keep the raw text as the message
  }
  return new KubeApiError(
    code,
    status.reason ?? statusText,
    `${method} ${path}: ${code} ${status.message ?? body.slice(0, 200)}`,
  );
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
  async find(name: string, namespace?: string, options: RequestOptions = {}): Promise<T | undefined> {
    try {
      return await this.get(name, namespace, options);
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
