/**
 * HTTP plumbing for registry traffic: one pooled keep-alive undici Agent per client, TLS
 * verified against the system CAs plus any extra CAs, plain HTTP only for hosts the user
 * names as insecure, deadlines on every request (deadlines.ts), redirects followed only as
 * redirects.ts allows, and HTTPS_PROXY/HTTP_PROXY/NO_PROXY honoured (proxy.ts).
 */

import { createRequire } from "node:module";
import { Readable } from "node:stream";
import { rootCertificates } from "node:tls";
import type { Dispatcher, Agent as UndiciAgent } from "undici";
import { bulkRequest } from "./bulkHttp.ts";
import { type Deadlines, deadlines, watchStreamedBody } from "./deadlines.ts";
import { isNamedHost, isSingleLabelHost, type ProxySettings, proxyConfig } from "./proxy.ts";
import { checkRedirectHop, type HostResolver, MAX_REDIRECT_HOPS, mayFollowRedirects } from "./redirects.ts";
import { registryApiHost } from "./reference.ts";

export interface TransportOptions {
  insecureHosts?: string[];
  caPem?: string | string[];
  maxConnectionsPerHost?: number;
  userAgent?: string;
  /** Headers deadline of every request (ms, default 30 s). */
  requestTimeoutMs?: number;
  /** A body (download or upload) that moves no byte for this long is abandoned (ms, default 60 s). */
  stallTimeoutMs?: number;
  /** After an upload's last byte, how long the registry may take to answer (ms, default 5 min). */
  commitTimeoutMs?: number;
  /** Proxy from the environment; false: never a proxy. */
  proxy?: ProxySettings | false;
  /** Resolves the host of a redirect before it is followed (tests); default the system resolver. */
  resolveHost?: HostResolver;
}

export type HttpMethod = "GET" | "HEAD" | "PUT" | "POST" | "PATCH" | "DELETE";

export interface SendOptions {
  method: HttpMethod;
  url: string;
  headers?: Record<string, string>;
  /** A stream or async iterable of Buffers is sent as it comes, watched by deadlines.ts. */
  body?: Buffer | string | Readable | AsyncIterable<Buffer> | null;
  signal?: AbortSignal;
  /** Follow at most this many redirects of a blob read (redirects.ts; never more than 5). */
  maxRedirects?: number;
  /**
   * A whole large blob's GET or monolithic PUT: on a connection of its own, its body read into
   * reused buffers (bulkHttp.ts), unless it goes through a proxy.
   */
  bulk?: boolean;
  /** With `bulk`: the upload's chunks are its alone, and their buffers may be reused once sent. */
  recycleBody?: boolean;
}

export type ResponseData = Dispatcher.ResponseData;

// undici's index loads all of undici (fetch, WebSocket, mocks, caches: ~130 files, ~14 MB and
// most of an unchanged `stowage mirror` re-run's start-up); this needs only its Agent and the
// request API, so they are loaded from undici's own files, as its index loads them.
const requireUndici = createRequire(import.meta.url);
const Agent = requireUndici("undici/lib/dispatcher/agent.js") as typeof UndiciAgent;
/** Loaded only when a proxy is configured. */
const loadEnvHttpProxyAgent = () =>
  requireUndici("undici/lib/dispatcher/env-http-proxy-agent.js") as typeof import("undici").EnvHttpProxyAgent;
const requestApi = requireUndici("undici/lib/api/api-request.js") as (
  this: Dispatcher,
  options: Dispatcher.RequestOptions,
) => Promise<Dispatcher.ResponseData>;

export class Transport {
  readonly dispatcher: Dispatcher;
  /** With a proxy: the dispatcher for single-label (always local) hosts, which bypass it. */
  private readonly direct?: Dispatcher;
  readonly userAgent: string;
  readonly deadlines: Deadlines;
  /** Where requests go through a proxy (for logs and tests); undefined without one. */
  readonly proxied?: { httpProxy?: string; httpsProxy?: string; noProxy: string };
  private readonly insecureHosts: Set<string>;
  private readonly resolveHost?: HostResolver;
  /** CAs of a bulk exchange's TLS (undefined: the system's). */
  private readonly bulkCa?: string[];
  /** With a proxy: the hosts the caller named as never proxied (the cache registries). */
  private readonly namedDirect: readonly string[];

  constructor(options: TransportOptions = {}) {
    const extraCas = options.caPem === undefined ? [] : [options.caPem].flat();
    this.deadlines = deadlines(options);
    const agentOptions = {
      connections: options.maxConnectionsPerHost ?? 16,
      keepAliveTimeout: 30_000,
      headersTimeout: this.deadlines.requestTimeoutMs,
      bodyTimeout: this.deadlines.stallTimeoutMs,
      // Node replaces its built-in roots when `ca` is given, so pass both.
      connect: extraCas.length > 0 ? { ca: [...rootCertificates, ...extraCas] } : undefined,
    };
    this.bulkCa = agentOptions.connect?.ca;
    const proxy = options.proxy === false ? undefined : proxyConfig(options.proxy);
    this.namedDirect = (options.proxy !== false && options.proxy?.noProxy) || [];
    if (proxy) {
      const EnvHttpProxyAgent = loadEnvHttpProxyAgent();
      this.proxied = proxy;
      this.dispatcher = new EnvHttpProxyAgent({
        ...agentOptions,
        ...proxy,
        // The proxy's own TLS (an https:// proxy URL) trusts the same CAs.
        ...(agentOptions.connect ? { proxyTls: agentOptions.connect, requestTls: agentOptions.connect } : {}),
      });
      this.direct = new Agent(agentOptions) as UndiciAgent;
    } else {
      this.dispatcher = new Agent(agentOptions) as UndiciAgent;
    }
    this.resolveHost = options.resolveHost;
    this.userAgent = options.userAgent ?? "stowage";
    this.insecureHosts = new Set((options.insecureHosts ?? []).map((host) => host.toLowerCase()));
  }

  isInsecure(registry: string): boolean {
    return (
      this.insecureHosts.has(registry.toLowerCase()) || this.insecureHosts.has(registryApiHost(registry))
    );
  }

  /** "https://registry-1.docker.io" for "docker.io"; http:// only for insecure hosts. */
  baseUrl(registry: string): string {
    return `${this.isInsecure(registry) ? "http" : "https"}://${registryApiHost(registry)}`;
  }

  /**
   * One HTTP exchange. Redirects of blob reads are followed as redirects.ts allows (other 3xx
   * are handed back); the Authorization header is only sent to the origin it was meant for
   * (object-storage redirects carry their own signature). A streamed request body gets the
   * upload watchdog of deadlines.ts instead of undici's headers timer.
   */
  async send(options: SendOptions): Promise<ResponseData & { url: string }> {
    let url = options.url;
    const firstOrigin = new URL(url).origin;
    const maxRedirects = Math.min(options.maxRedirects ?? MAX_REDIRECT_HOPS, MAX_REDIRECT_HOPS);
    const canFollow = mayFollowRedirects(options.method, new URL(url));
    const streamed =
      options.body !== null && typeof options.body === "object" && !Buffer.isBuffer(options.body)
        ? watchStreamedBody(options.body, this.deadlines)
        : undefined;
    const signal =
      streamed && options.signal
        ? AbortSignal.any([options.signal, streamed.signal])
        : (streamed?.signal ?? options.signal);
    for (let redirects = 0; ; redirects++) {
      const headers: Record<string, string> = { "user-agent": this.userAgent, ...options.headers };
      if (new URL(url).origin !== firstOrigin) {
        delete headers.authorization;
        delete headers.Authorization;
      }
      const target = new URL(url);
      let response: ResponseData;
      try {
        const dispatcher = this.direct && isSingleLabelHost(target.hostname) ? this.direct : this.dispatcher;
        // The bulk path speaks to the registry itself, never to a proxy: it is taken only where
        // no proxy is in the way (none configured, a one-label host, a host named never proxied).
        const bulk =
          options.bulk === true &&
          (this.proxied === undefined ||
            isSingleLabelHost(target.hostname) ||
            isNamedHost(target, this.namedDirect)) &&
          (options.method === "GET" || options.method === "PUT") &&
          (options.method === "GET" || streamed !== undefined);
        response = bulk
          ? ((await bulkRequest({
              method: options.method as "GET" | "PUT",
              url: target,
              headers,
              body: streamed?.body,
              recycleBody: options.recycleBody,
              signal,
              headersTimeoutMs: streamed ? 0 : this.deadlines.requestTimeoutMs,
              stallTimeoutMs: this.deadlines.stallTimeoutMs,
              ca: this.bulkCa,
            })) as unknown as ResponseData)
          : await requestApi.call(dispatcher, {
              origin: target.origin,
              path: `${target.pathname}${target.search}`,
              method: options.method,
              headers,
              body: streamed
                ? Readable.from(streamed.body, { objectMode: false, highWaterMark: 64 * 1024 })
                : ((options.body ?? null) as Buffer | string | null),
              signal,
              // A streamed body is watched by its own stall and commit timers instead.
              ...(streamed ? { headersTimeout: 0 } : {}),
            });
      } finally {
        streamed?.settle();
      }
      const location = headerValue(response.headers, "location");
      const isRedirect = [301, 302, 303, 307, 308].includes(response.statusCode);
      if (!canFollow || !isRedirect || location === undefined) {
        return Object.assign(response, { url });
      }
      await response.body.dump();
      const next = new URL(location, url);
      await checkRedirectHop(target, next, {
        count: redirects + 1,
        limit: maxRedirects,
        resolve: this.resolveHost,
      });
      url = next.toString();
    }
  }

  async close(): Promise<void> {
    await Promise.all([this.dispatcher.close(), this.direct?.close()]);
  }
}

export function headerValue(
  headers: Record<string, string | string[] | undefined>,
  name: string,
): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

export function headerValues(headers: Record<string, string | string[] | undefined>, name: string): string[] {
  const value = headers[name];
  if (value === undefined) return [];
  return Array.isArray(value) ? value : [value];
}
