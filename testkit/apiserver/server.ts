import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import {
  builtinResources,
  checkBuiltinName,
  checkMicroTimes,
  checkPodUpdate,
  checkSecret,
  defaultWebhookConfiguration,
  dropEmptyBuiltinFields,
  foldSecretStringData,
  initialNamespaces,
  truncateTimes,
} from "./builtins.ts";
import { installCrdSupport } from "./crd.ts";
import {
  aggregatedDiscovery,
  aggregatedDiscoveryType,
  apiGroup,
  coreVersions,
  groupList,
  resourceList,
  versionInfo,
  wantsAggregated,
} from "./discovery.ts";
import {
  ApiError,
  badRequest,
  fieldErrors,
  invalid,
  methodNotAllowed,
  qualifiedResource,
  statusObject,
  unsupportedMediaType,
} from "./errors.ts";
import { openApiGroupVersion, openApiRoot } from "./openapi.ts";
import { decodeKubeProtobuf } from "./protobuf.ts";
import { adminUser } from "./rbac.ts";
import { type ResourceDef, ResourceRegistry } from "./resources.ts";
import { ApiCore, bootstrapNamespaces, type FieldValidation, type WriteContext } from "./rest.ts";
import { type ObjectFilter, parseFieldSelector, parseLabelSelector } from "./selectors.ts";
import { Store } from "./store.ts";
import { type IncludeObject, toTable, wantsTable } from "./table.ts";
import type { Json, KubeObject } from "./types.ts";
import { type OpenWatch, serveWatch } from "./watch.ts";

export type Verb =
  | "get"
  | "list"
  | "watch"
  | "create"
  | "update"
  | "patch"
  | "delete"
  | "deletecollection"
  | "discovery";

export interface RequestLogEntry {
  method: string;
  path: string;
  verb: string;
  status: number;
}

/** What a resource request is about, parsed from its path (apiserver's RequestInfo). */
export interface RequestInfo {
  verb: Verb;
  group: string;
  version: string;
  resource: string;
  subresource?: string;
  namespace?: string;
  name?: string;
}

/**
 * The authorization step of the request pipeline (RBAC comes later): return a reason to refuse the
 * request with 403 Forbidden, or undefined to let it through.
 */
export type Authorizer = (request: RequestInfo & { user: string; groups: string[] }) => string | undefined;

/** Who sent a request: what admission webhooks see as `userInfo`. */
export interface Identity {
  user: string;
  groups: string[];
  uid?: string;
}

/** Who a request's bearer token is (testkit/apiserver/rbac.ts); undefined refuses it with 401. */
export type Authenticator = (token: string | undefined) => Identity | undefined;

export interface ServerOptions {
  historyLimit?: number;
  bookmarkIntervalMs?: number;
}

async function readRaw(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function readBody(req: IncomingMessage): Promise<string> {
  const type = String(req.headers["content-type"] ?? "");
  if (type.includes("protobuf") || type.includes("cbor")) throw unsupportedMediaType(type);
  return (await readRaw(req)).toString("utf8");
}

/** A create/update body: JSON, or the protobuf kubectl's typed clients send for a few kinds. */
async function readObject(req: IncomingMessage, def: ResourceDef): Promise<Json> {
  const type = String(req.headers["content-type"] ?? "");
  if (type.includes("application/vnd.kubernetes.protobuf"))
    return decodeKubeProtobuf(await readRaw(req), type);
  const text = await readBody(req);
  if (text.trim() === "") return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw badRequest(
      `the object provided is unrecognized (must be of type ${def.kind}): couldn't get version/kind; json parse error: ${goJsonSyntaxError(text, err as Error)} (${text})`,
    );
  }
}

/** How Go's encoding/json words a syntax error: truncated input, or the first character it could not take. */
function goJsonSyntaxError(text: string, err: Error): string {
  const at = Number(/at position (\d+)/.exec(err.message)?.[1] ?? text.length);
  if (at >= text.trimEnd().length) return "unexpected end of JSON input";
  return `invalid character '${text[at]}' looking for beginning of value`;
}

function parseJson(text: string): Json {
  if (text.trim() === "") return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw badRequest(`error decoding request body: ${(err as Error).message}`);
  }
}

/**
 * The HTTP face of the test double: one pipeline per request — parse the path into a RequestInfo,
 * (authorize: not yet), dispatch to discovery or the REST core (which runs admission), write JSON.
 */
export class ApiHttpServer {
  readonly store: Store;
  readonly registry = new ResourceRegistry();
  readonly core: ApiCore;
  private readonly server: Server;
  readonly authorizers: Authorizer[] = [];
  /** unset: the token itself is the user name (no authentication) */
  authenticator: Authenticator | undefined;
  private readonly watches = new Set<OpenWatch>();
  private readonly log: RequestLogEntry[] = [];
  private readonly bookmarkIntervalMs: number;
  private address = "";

  constructor(options: ServerOptions = {}) {
    this.store = new Store({ historyLimit: options.historyLimit });
    this.bookmarkIntervalMs = options.bookmarkIntervalMs ?? 1000;
    for (const def of builtinResources()) this.registry.add(def);
    this.core = new ApiCore(this.store, this.registry);
    this.core.addPreparer((def, obj, old) => {
      const named = checkBuiltinName(def, obj, old);
      return checkPodUpdate(
        def,
        dropEmptyBuiltinFields(
          def,
          checkSecret(def, foldSecretStringData(def, truncateTimes(def, checkMicroTimes(def, named))), old),
        ),
        old,
      );
    });
    this.core.addPreparer((def, obj) => defaultWebhookConfiguration(def, obj));
    installCrdSupport(this.core);
    bootstrapNamespaces(this.core, initialNamespaces);
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err) => this.fail(req, res, err, "unknown"));
    });
    this.server.keepAliveTimeout = 60_000;
  }

  async listen(port = 0): Promise<string> {
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, "127.0.0.1", () => resolve());
    });
    const { port: bound } = this.server.address() as AddressInfo;
    this.address = `127.0.0.1:${bound}`;
    return `http://${this.address}`;
  }

  dropWatches(): void {
    for (const watch of [...this.watches]) watch.close();
  }

  requestLog(): RequestLogEntry[] {
    return this.log.map((e) => ({ ...e }));
  }

  resetRequestLog(): void {
    this.log.length = 0;
  }

  async close(): Promise<void> {
    this.dropWatches();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private record(req: IncomingMessage, verb: string, status: number): void {
    const url = new URL(req.url ?? "/", "http://localhost");
    this.log.push({ method: req.method ?? "GET", path: url.pathname, verb, status });
  }

  private send(
    req: IncomingMessage,
    res: ServerResponse,
    verb: string,
    status: number,
    body: Json,
    contentType = "application/json",
    warnings: string[] = [],
  ): void {
    this.record(req, verb, status);
    const headers: Record<string, string | string[]> = {
      "Content-Type": contentType,
      "Cache-Control": "no-cache, private",
    };
    if (warnings.length > 0) headers.Warning = warnings.map((w) => `299 - ${JSON.stringify(w)}`);
    const text = JSON.stringify(body);
    headers["Content-Length"] = String(Buffer.byteLength(text));
    res.writeHead(status, headers);
    res.end(text);
  }

  private fail(req: IncomingMessage, res: ServerResponse, err: unknown, verb: string): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const apiError =
      err instanceof ApiError
        ? err
        : new ApiError(
            500,
            "InternalError",
            `Internal error occurred: ${(err as Error)?.message ?? String(err)}`,
          );
    this.send(req, res, verb, apiError.code, apiError.toStatus());
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://localhost");
    const path = url.pathname.replace(/\/+$/, "") || "/";
    const accept = req.headers.accept;
    const segments = path.split("/").filter(Boolean);

    if (req.method === "GET") {
      if (path === "/version") return this.send(req, res, "get", 200, versionInfo());
      if (path === "/healthz" || path === "/readyz" || path === "/livez") {
        this.record(req, "get", 200);
        res.writeHead(200, { "Content-Type": "text/plain" });
        res.end("ok");
        return;
      }
      if (path === "/openapi/v3") return this.send(req, res, "get", 200, openApiRoot(this.registry));
      if (path.startsWith("/openapi/v3/")) {
        const rest = segments.slice(2);
        const [group, version] = rest[0] === "api" ? ["", rest[1]] : [rest[1], rest[2]];
        const doc = openApiGroupVersion(this.registry, group ?? "", version ?? "");
        if (doc) return this.send(req, res, "get", 200, doc);
      }
      if (path === "/api") {
        if (wantsAggregated(accept))
          return this.send(
            req,
            res,
            "get",
            200,
            aggregatedDiscovery(this.registry, true),
            aggregatedDiscoveryType,
          );
        return this.send(req, res, "get", 200, coreVersions(this.address));
      }
      if (path === "/apis") {
        if (wantsAggregated(accept))
          return this.send(
            req,
            res,
            "get",
            200,
            aggregatedDiscovery(this.registry, false),
            aggregatedDiscoveryType,
          );
        return this.send(req, res, "get", 200, groupList(this.registry));
      }
      if (segments[0] === "apis" && segments.length === 2) {
        const group = apiGroup(this.registry, segments[1]);
        if (group) return this.send(req, res, "get", 200, group);
      }
      if (
        (segments[0] === "api" && segments.length === 2) ||
        (segments[0] === "apis" && segments.length === 3)
      ) {
        const [group, version] = segments[0] === "api" ? ["", segments[1]] : [segments[1], segments[2]];
        if (this.registry.hasGroupVersion(group, version))
          return this.send(req, res, "get", 200, resourceList(this.registry, group, version));
      }
    }

    const info = this.parseRequestInfo(req.method ?? "GET", url, segments);
    if (!info) {
      return this.send(
        req,
        res,
        "unknown",
        404,
        statusObject(404, "NotFound", "the server could not find the requested resource", {}),
      );
    }
    const def = this.registry.find(info.group, info.version, info.resource);
    if (!def) {
      return this.send(
        req,
        res,
        info.verb,
        404,
        statusObject(404, "NotFound", "the server could not find the requested resource", {}),
      );
    }
    try {
      const user = this.authorize(req, info, def);
      await this.serveResource(req, res, url, info, def, user);
    } catch (err) {
      this.fail(req, res, err, info.verb);
    }
  }

  /** Who sent the request (the test admin when authentication is off); throws 401 or 403. */
  private authorize(req: IncomingMessage, info: RequestInfo, def: ResourceDef): Identity {
    if (this.authorizers.length === 0 && !this.authenticator) return adminUser;
    const bearer = /^Bearer\s+(.+)$/i.exec(String(req.headers.authorization ?? ""))?.[1];
    const identity = this.authenticator
      ? this.authenticator(bearer)
      : { user: bearer ?? "system:anonymous", groups: [] };
    if (!identity) throw new ApiError(401, "Unauthorized", "Unauthorized");
    const { user, groups } = identity;
    for (const authorizer of this.authorizers) {
      const denied = authorizer({ ...info, user, groups });
      if (denied === undefined) continue;
      const target = info.name
        ? `${qualifiedResource(def.group, def.plural)} "${info.name}"`
        : qualifiedResource(def.group, def.plural);
      const where = info.namespace ? ` in the namespace "${info.namespace}"` : " at the cluster scope";
      const resource = info.subresource ? `${def.plural}/${info.subresource}` : def.plural;
      throw new ApiError(
        403,
        "Forbidden",
        `${target} is forbidden: User "${user}" cannot ${info.verb} resource "${resource}" in API group "${def.group}"${where}${denied ? `: ${denied}` : ""}`,
        { name: info.name, ...(def.group ? { group: def.group } : {}), kind: def.plural },
      );
    }
    return identity;
  }

  private parseRequestInfo(method: string, url: URL, segments: string[]): RequestInfo | undefined {
    let group: string;
    let version: string;
    let rest: string[];
    if (segments[0] === "api" && segments.length >= 3) {
      group = "";
      version = segments[1];
      rest = segments.slice(2);
    } else if (segments[0] === "apis" && segments.length >= 4) {
      group = segments[1];
      version = segments[2];
      rest = segments.slice(3);
    } else return undefined;
    let namespace: string | undefined;
    if (rest[0] === "namespaces" && rest.length >= 3) {
      const inner = this.registry.find(group, version, rest[2]);
      if (inner?.namespaced) {
        namespace = rest[1];
        rest = rest.slice(2);
      }
    }
    const [resource, name, subresource] = rest;
    if (rest.length > 3) return undefined;
    // /api/v1/namespaces/x/<unknown> is an unknown namespaced resource, not a namespace subresource
    if (resource === "namespaces" && subresource && !["status", "finalize"].includes(subresource))
      return undefined;
    // the apiserver's RequestInfo: a namespace is in its own namespace (RBAC Roles there may grant it)
    if (group === "" && resource === "namespaces" && name) namespace = name;
    const watch = url.searchParams.get("watch");
    let verb: Verb;
    switch (method) {
      case "GET":
        verb = name ? "get" : watch === "true" || watch === "1" ? "watch" : "list";
        break;
      case "POST":
        verb = "create";
        break;
      case "PUT":
        verb = "update";
        break;
      case "PATCH":
        verb = "patch";
        break;
      case "DELETE":
        verb = name ? "delete" : "deletecollection";
        break;
      default:
        verb = "get";
    }
    return { verb, group, version, resource, name, subresource, namespace };
  }

  private filterFrom(url: URL, def: ResourceDef): ObjectFilter {
    const fields = ["metadata.name", "metadata.namespace", ...def.selectableFields];
    return {
      labels: parseLabelSelector(url.searchParams.get("labelSelector")),
      fields: parseFieldSelector(
        url.searchParams.get("fieldSelector"),
        fields,
        !!def.schema || def.selectableFields.length > 0,
      ),
    };
  }

  private writeContext(req: IncomingMessage, url: URL, verb: Verb, user: Identity): WriteContext {
    const validation = url.searchParams.get("fieldValidation");
    if (validation && !["Strict", "Warn", "Ignore"].includes(validation)) {
      const options =
        verb === "create" ? "CreateOptions" : verb === "update" ? "UpdateOptions" : "PatchOptions";
      throw invalid(options, "meta.k8s.io", "", [
        fieldErrors.notSupported("fieldValidation", validation, ["", "Ignore", "Strict", "Warn"]),
      ]);
    }
    return {
      user,
      dryRun: url.searchParams.getAll("dryRun").includes("All"),
      fieldManager: url.searchParams.get("fieldManager") ?? undefined,
      fieldValidation: (validation as FieldValidation | null) ?? "Warn",
      userAgent: req.headers["user-agent"],
      warnings: [],
    };
  }

  private async serveResource(
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
    info: RequestInfo,
    def: ResourceDef,
    user: Identity,
  ): Promise<void> {
    const namespace = def.namespaced ? info.namespace : undefined;
    const accept = req.headers.accept;
    const include = (url.searchParams.get("includeObject") ?? "Metadata") as IncludeObject;
    // a subresource the kind does not have is not routed at all
    if (info.subresource && !def.subresources.includes(info.subresource))
      throw new ApiError(404, "NotFound", "the server could not find the requested resource", {});
    switch (info.verb) {
      case "get": {
        const obj = this.core.get(def, namespace, info.name!);
        if (wantsTable(accept))
          return this.send(
            req,
            res,
            "get",
            200,
            toTable(def, [obj], { resourceVersion: obj.metadata.resourceVersion }, include),
          );
        return this.send(req, res, "get", 200, obj);
      }
      case "list": {
        const limit = Number(url.searchParams.get("limit") ?? "0") || undefined;
        const list = this.core.list(def, namespace, {
          filter: this.filterFrom(url, def),
          limit,
          continueToken: url.searchParams.get("continue") ?? undefined,
          // NotOlderThan (or no match) is served from current state, which is never older
          exactRevision:
            url.searchParams.get("resourceVersionMatch") === "Exact"
              ? Number(url.searchParams.get("resourceVersion"))
              : undefined,
        });
        if (wantsTable(accept))
          return this.send(req, res, "list", 200, toTable(def, list.items, list.metadata, include));
        return this.send(req, res, "list", 200, list);
      }
      case "watch": {
        const timeout = url.searchParams.get("timeoutSeconds");
        serveWatch(
          this.core,
          {
            def,
            namespace,
            filter: this.filterFrom(url, def),
            resourceVersion: url.searchParams.get("resourceVersion") ?? undefined,
            timeoutSeconds: timeout ? Number(timeout) : undefined,
            allowBookmarks: url.searchParams.get("allowWatchBookmarks") === "true",
            bookmarkIntervalMs: this.bookmarkIntervalMs,
            table: wantsTable(accept) ? { include } : undefined,
            sendInitialEvents: url.searchParams.get("sendInitialEvents") === "true",
          },
          req,
          res,
          (watch) => {
            this.watches.add(watch);
            return () => this.watches.delete(watch);
          },
        );
        this.record(req, "watch", 200);
        return;
      }
      case "create": {
        if (info.name)
          throw methodNotAllowed(`the server does not allow this method on the requested resource`);
        const ctx = this.writeContext(req, url, info.verb, user);
        const body = await readObject(req, def);
        const created = await this.core.create(def, namespace, body, ctx);
        return this.send(req, res, "create", 201, created, "application/json", ctx.warnings);
      }
      case "update": {
        if (!info.name)
          throw methodNotAllowed("the server does not allow this method on the requested resource");
        const ctx = this.writeContext(req, url, info.verb, user);
        const body = await readObject(req, def);
        const updated = await this.core.update(def, namespace, info.name, body, info.subresource, ctx);
        return this.send(req, res, "update", 200, updated, "application/json", ctx.warnings);
      }
      case "patch": {
        if (!info.name)
          throw methodNotAllowed("the server does not allow this method on the requested resource");
        const ctx = {
          ...this.writeContext(req, url, info.verb, user),
          force: url.searchParams.get("force") === "true",
        };
        const body = await readBody(req);
        const patched = await this.core.patch(
          def,
          namespace,
          info.name,
          String(req.headers["content-type"] ?? ""),
          body,
          info.subresource,
          ctx,
        );
        // an apply that created the object answers 201 like the real server
        const status = ctx.created ? 201 : 200;
        return this.send(req, res, "patch", status, patched, "application/json", ctx.warnings);
      }
      case "delete": {
        const ctx = this.writeContext(req, url, info.verb, user);
        const options = { ...(parseJson(await readBody(req)) ?? {}) };
        // DeleteOptions may also come as query parameters
        const policy = url.searchParams.get("propagationPolicy");
        if (policy) options.propagationPolicy = policy;
        if (url.searchParams.get("orphanDependents") === "true") options.orphanDependents = true;
        const deleted = await this.core.delete(def, namespace, info.name!, options, ctx);
        return this.send(req, res, "delete", 200, deleted);
      }
      case "deletecollection": {
        const ctx = this.writeContext(req, url, info.verb, user);
        const list = this.core.list(def, namespace, { filter: this.filterFrom(url, def) });
        const deleted: KubeObject[] = [];
        for (const item of list.items) {
          const answer = await this.core.delete(
            def,
            item.metadata.namespace,
            item.metadata.name,
            undefined,
            ctx,
          );
          deleted.push(answer.kind === "Status" ? item : answer);
        }
        return this.send(req, res, "deletecollection", 200, { ...list, items: deleted });
      }
      default:
        throw methodNotAllowed("the server does not allow this method on the requested resource");
    }
  }
}
