/**
 * HTTP plumbing for registry traffic: one pooled keep-alive undici Agent per client, TLS
 * verified against the system CAs plus any extra CAs, plain HTTP only for hosts the user
 * names as insecure, and redirects followed without leaking credentials to other origins.
 */
import type { Readable } from "node:stream";
import { rootCertificates } from "node:tls";
import { Agent, type Dispatcher, request } from "undici";
import { registryApiHost } from "./reference.ts";

export interface TransportOptions {
  insecureHosts?: string[];
  caPem?: string | string[];
  maxConnectionsPerHost?: number;
  userAgent?: string;
}

export type HttpMethod = "GET" | "HEAD" | "PUT" | "POST" | "PATCH" | "DELETE";

export interface SendOptions {
  method: HttpMethod;
  url: string;
  headers?: Record<string, string>;
  body?: Buffer | string | Readable | null;
  signal?: AbortSignal;
  /** Follow up to this many redirects (GET/HEAD only). Default 5. */
  maxRedirects?: number;
}

export type ResponseData = Dispatcher.ResponseData;

const MAX_REDIRECTS = 5;

export class Transport {
  readonly dispatcher: Agent;
  readonly userAgent: string;
  private readonly insecureHosts: Set<string>;

  constructor(options: TransportOptions = {}) {
    const extraCas = options.caPem === undefined ? [] : [options.caPem].flat();
    this.dispatcher = new Agent({
      connections: options.maxConnectionsPerHost ?? 16,
      keepAliveTimeout: 30_000,
      // Node replaces its built-in roots when `ca` is given, so pass both.
      connect: extraCas.length > 0 ? { ca: [...rootCertificates, ...extraCas] } : undefined,
    });
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
   * One HTTP exchange. GET/HEAD redirects are followed; the Authorization header is only
   * sent to the origin it was meant for (object-storage redirects carry their own signature).
   */
  async send(options: SendOptions): Promise<ResponseData & { url: string }> {
    let url = options.url;
    const firstOrigin = new URL(url).origin;
    const maxRedirects = options.maxRedirects ?? MAX_REDIRECTS;
    const canFollow = options.method === "GET" || options.method === "HEAD";
    for (let redirects = 0; ; redirects++) {
      const headers: Record<string, string> = { "user-agent": this.userAgent, ...options.headers };
      if (new URL(url).origin !== firstOrigin) {
        delete headers.authorization;
        delete headers.Authorization;
      }
      const response = await request(url, {
        dispatcher: this.dispatcher,
        method: options.method,
        headers,
        body: options.body ?? null,
        signal: options.signal,
      });
      const location = headerValue(response.headers, "location");
      const isRedirect = [301, 302, 303, 307, 308].includes(response.statusCode);
      if (!canFollow || !isRedirect || location === undefined || redirects >= maxRedirects) {
        return Object.assign(response, { url });
      }
      await response.body.dump();
      url = new URL(location, url).toString();
    }
  }

  close(): Promise<void> {
    return this.dispatcher.close();
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
