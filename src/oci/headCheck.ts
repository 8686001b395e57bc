/**
 * Issue 14, "an instant no-op": is the target already up to date? Answered from a HEAD of the
 * source's manifest and, at the same time, a GET of the target's; then the target's child
 * manifests or image config for the platforms and sizes, as Copier.plan's fast path reads them
 * (it asks the source no more than that HEAD either), on node:http/https.
 *
 * Hand-written rather than undici because undici's client loads node:http2 (and with it ~12 MB)
 * when imported, which was most of what an unchanged re-run still cost. This client does only
 * the easy case: anything else (a difference, a redirect, any status but 200, a proxy in the
 * environment, a challenge the first credentials do not answer, a network error or timeout)
 * is reported as a hand-over, and the caller runs the full copy path, which loads undici and
 * gives the real result or error. So the answer here is either the full path's or none.
 */
import type { IncomingHttpHeaders } from "node:http";
import { Authenticator, type CredentialLookup, isAnonymous } from "./challenge.ts";
import type { CopyResult, ProgressEvent } from "./copy.ts";
import { formatPlatform, selectManifests } from "./platforms.ts";
import { proxyConfig } from "./proxy.ts";
import { formatReference, type ImageReference, registryApiHost } from "./reference.ts";
import type { Transport } from "./transport.ts";
import {
  type Descriptor,
  type ImageIndex,
  type ImageManifest,
  isIndexMediaType,
  ManifestAccept,
  MediaType,
  type Platform,
} from "./types.ts";

export interface HeadCheckOptions {
  source: ImageReference;
  target: ImageReference;
  credentials?: CredentialLookup;
  insecureHosts?: string[];
  caPem?: string[];
  /** Whole-request deadline (default 30 s); a request over it hands over. */
  requestTimeoutMs?: number;
  signal?: AbortSignal;
  /** Where HTTP(S)_PROXY is read; any proxy hands over (default process.env). */
  env?: Record<string, string | undefined>;
  now?: () => number;
}

/** Why the check handed over to the full path (for tests and debugging; never shown as an error). */
export class HandOver extends Error {}

/** The up-to-date check's events, fed to the progress reporter as the full path would. */
export type NoopEvents = ProgressEvent;

export interface NoopAnswer {
  result: CopyResult;
  events: NoopEvents[];
}

interface Response {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

interface Node {
  digest: string;
  bytes: Buffer;
  blobs: Descriptor[];
  children: Node[];
}

const MANIFEST_LIMIT = 4 * 1024 * 1024;
const CONFIG_LIMIT = 4 * 1024 * 1024;
const ACCEPT = [...ManifestAccept, "application/vnd.oci.artifact.manifest.v1+json"].join(", ");
const manifestTypes = new Set<string>([MediaType.OciManifest, MediaType.DockerManifest]);
const configTypes = new Set<string>([MediaType.OciConfig, MediaType.DockerConfig]);

/**
 * The result of a copy that would find the target up to date, or a HandOver (thrown) saying why
 * the full path must answer instead.
 */
export async function checkUpToDate(options: HeadCheckOptions): Promise<NoopAnswer> {
  if (proxyConfig({ env: options.env }) !== undefined) throw new HandOver("a proxy is configured");
  const client = new LightClient(options);
  try {
    return await client.check();
  } finally {
    client.close();
  }
}

class LightClient {
  readonly #options: HeadCheckOptions;
  readonly #insecure: Set<string>;
  readonly #agents = new Map<string, import("node:http").Agent>();
  #authenticator?: Authenticator;

  constructor(options: HeadCheckOptions) {
    this.#options = options;
    this.#insecure = new Set((options.insecureHosts ?? []).map((h) => h.toLowerCase()));
  }

  async check(): Promise<NoopAnswer> {
    const { source, target } = this.#options;
    const now = this.#options.now ?? Date.now;
    const started = now();
    // The source is asked for its digest with a HEAD, and the manifest itself is read from the
    // target, which holds the same bytes when the image is up to date: registries such as
    // Docker Hub count every manifest GET as a pull against the rate limit, and a HEAD as none.
    const named = target.tag ?? target.digest;
    const [rootDigest, held] = await Promise.all([
      source.digest ?? this.#digest(source, source.tag ?? "latest"),
      named !== undefined ? this.#manifest(target, named) : undefined,
    ]);
    const sourceManifest = held ?? (await this.#manifest(target, rootDigest));
    if (sourceManifest.digest !== rootDigest)
      throw new HandOver(`target holds ${sourceManifest.digest}, not ${rootDigest}`);
    const mediaType = mediaTypeOf(sourceManifest.bytes, sourceManifest.mediaType);
    const isIndex = isIndexMediaType(mediaType);
    if (!isIndex && !manifestTypes.has(mediaType)) throw new HandOver(`source is a ${mediaType}`);

    const root: Node = { digest: rootDigest, bytes: sourceManifest.bytes, blobs: [], children: [] };
    const platforms: string[] = [];
    if (isIndex) {
      const index = parse<ImageIndex>(sourceManifest.bytes);
      const { selected } = selectManifests(index);
      root.children = await Promise.all(selected.map((d) => this.#node(target, d.digest)));
      for (const d of selected)
        if (d.platform && d.platform.os !== "unknown") platforms.push(formatPlatform(d.platform));
    } else {
      const manifest = parse<ImageManifest>(sourceManifest.bytes);
      root.blobs = blobsOf(manifest);
      const platform = await this.#configPlatform(target, manifest);
      if (platform?.os && platform.architecture) platforms.push(formatPlatform(platform as Platform));
    }

    const blobs = uniqueBlobs(root);
    const image = formatReference(target);
    const skipped = blobs.reduce((sum, b) => sum + b.size, 0);
    const events: NoopEvents[] = [
      { type: "planned", image, totalBytes: skipped, bytesToCopy: 0, blobs: blobs.length, upToDate: true },
      ...blobs.map(
        (b): NoopEvents => ({ type: "blob", image, digest: b.digest, size: b.size, outcome: "skipped" }),
      ),
    ];
    // The same fields in the same order as Copier's result, so --json prints the same line.
    const result: CopyResult = {
      source: formatReference(source),
      target: image,
      sourceDigest: rootDigest,
      targetDigest: rootDigest,
      mediaType,
      platforms,
      bytes: { transferred: 0, mounted: 0, skipped },
      blobs: { transferred: 0, mounted: 0, skipped: blobs.length },
      manifests: { pushed: 0, skipped: countManifests(root) },
      durationMs: Math.max(0, now() - started),
    };
    events.push({ type: "done", image, result });
    return { result, events };
  }

  close(): void {
    for (const agent of this.#agents.values()) agent.destroy();
  }

  async #node(repo: ImageReference, digest: string): Promise<Node> {
    const raw = await this.#manifest(repo, digest);
    const mediaType = mediaTypeOf(raw.bytes, raw.mediaType);
    if (isIndexMediaType(mediaType)) {
      const index = parse<ImageIndex>(raw.bytes);
      const children = await Promise.all((index.manifests ?? []).map((d) => this.#node(repo, d.digest)));
      return { digest, bytes: raw.bytes, blobs: [], children };
    }
    if (!manifestTypes.has(mediaType)) throw new HandOver(`manifest ${digest} is a ${mediaType}`);
    return { digest, bytes: raw.bytes, blobs: blobsOf(parse<ImageManifest>(raw.bytes)), children: [] };
  }

  async #configPlatform(
    repo: ImageReference,
    manifest: ImageManifest,
  ): Promise<Partial<Platform> | undefined> {
    const config = manifest.config;
    if (!config || !configTypes.has(config.mediaType) || config.size > CONFIG_LIMIT) return undefined;
    const response = await this.#request(repo, "GET", `blobs/${config.digest}`);
    checkDigest(response.body, config.digest, `config ${config.digest}`);
    const body = parse<Partial<Platform>>(response.body);
    return {
      os: body.os,
      architecture: body.architecture,
      ...(body.variant ? { variant: body.variant } : {}),
    };
  }

  /** The digest `repo` serves for `reference`, from a HEAD (no body, so no pull counted). */
  async #digest(repo: ImageReference, reference: string): Promise<string> {
    const response = await this.#request(repo, "HEAD", `manifests/${reference}`, ACCEPT);
    const served = header(response.headers, "docker-content-digest");
    if (!served || !/^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/.test(served))
      throw new HandOver(`HEAD of ${reference} gave no digest`);
    return served;
  }

  async #manifest(repo: ImageReference, reference: string) {
    const response = await this.#request(repo, "GET", `manifests/${reference}`, ACCEPT);
    const served = header(response.headers, "docker-content-digest");
    const expected = reference.includes(":") ? reference : served;
    const digest = digestOf(response.body, expected?.startsWith("sha512:") ? "sha512" : "sha256");
    if (expected !== undefined && expected !== digest)
      throw new HandOver(`manifest ${reference} hashes to ${digest}`);
    const mediaType = (header(response.headers, "content-type") ?? "").split(";")[0].trim();
    return { digest, bytes: response.body, mediaType };
  }

  /** One registry request with the token dance; anything but a 200 hands over. */
  async #request(
    repo: ImageReference,
    method: "GET" | "HEAD",
    path: string,
    accept?: string,
  ): Promise<Response> {
    const registry = repo.registry;
    const apiHost = registryApiHost(registry);
    const scheme =
      this.#insecure.has(registry.toLowerCase()) || this.#insecure.has(apiHost.toLowerCase())
        ? "http"
        : "https";
    const url = `${scheme}://${apiHost}/v2/${repo.repository}/${path}`;
    const headers: Record<string, string> = { "user-agent": "stowage-mirror" };
    if (accept) headers.accept = accept;
    const scopes = [`repository:${repo.repository}:pull`];
    const auth = this.#auth();
    let authorization = await auth.authorization(registry, scopes, this.#options.signal);
    let response = await this.send(method, url, authorization ? { ...headers, authorization } : headers);
    if (response.status === 401) {
      const next = auth.onChallenge(registry, header(response.headers, "www-authenticate"), scopes);
      const [first] = await auth.candidates(registry, repo.repository);
      authorization = await auth.authorizationWith(
        registry,
        next,
        isAnonymous(first) ? undefined : first,
        this.#options.signal,
      );
      if (!authorization) throw new HandOver(`${registry} asks for credentials none of which answer it here`);
      response = await this.send(method, url, { ...headers, authorization });
    }
    if (response.status !== 200) throw new HandOver(`${method} ${url} answered ${response.status}`);
    return response;
  }

  #auth(): Authenticator {
    if (!this.#authenticator) {
      // Authenticator reads a token response's statusCode and body.text() only; this client's
      // send() gives those, not the whole undici ResponseData its Transport type names.
      const transport = {
        send: async (request: {
          method: string;
          url: string;
          headers?: Record<string, string>;
          body?: unknown;
        }) => {
          if (typeof request.body === "string" || request.body == null) {
            const res = await this.send(
              request.method,
              request.url,
              request.headers ?? {},
              request.body ?? undefined,
            );
            return {
              statusCode: res.status,
              headers: res.headers,
              url: request.url,
              body: { text: async () => res.body.toString("utf8") },
            };
          }
          throw new HandOver("token request with a streamed body");
        },
      } as unknown as Transport;
      this.#authenticator = new Authenticator({
        transport,
        credentials: this.#options.credentials,
        clock: {
          now: this.#options.now ?? Date.now,
          sleep: () => Promise.reject(new HandOver("no sleeping")),
        },
      });
    }
    return this.#authenticator;
  }

  /** A request on a keep-alive agent; at most MANIFEST_LIMIT bytes of body; any trouble hands over. */
  send(method: string, url: string, headers: Record<string, string>, body?: string): Promise<Response> {
    const target = new URL(url);
    const secure = target.protocol === "https:";
    const lib = process.getBuiltinModule(secure ? "node:https" : "node:http") as typeof import("node:https");
    let agent = this.#agents.get(target.protocol);
    if (!agent) {
      const ca = this.#options.caPem;
      // As transport.ts: the system CAs plus the extra ones (a `ca` option alone replaces them).
      const extra =
        secure && ca && ca.length > 0
          ? { ca: [...process.getBuiltinModule("node:tls").rootCertificates, ...ca] }
          : {};
      agent = new lib.Agent({ keepAlive: true, ...extra });
      this.#agents.set(target.protocol, agent);
    }
    const timeoutMs = this.#options.requestTimeoutMs ?? 30_000;
    return new Promise<Response>((resolve, reject) => {
      const signal = this.#options.signal;
      if (signal?.aborted) return reject(new HandOver("aborted"));
      const request = lib.request(target, { method, headers, agent, signal });
      const timer = setTimeout(
        () => request.destroy(new HandOver(`${method} ${url}: no answer in ${timeoutMs} ms`)),
        timeoutMs,
      );
      request.on("error", (err) => {
        clearTimeout(timer);
        reject(err instanceof HandOver ? err : new HandOver(`${method} ${url}: ${err.message}`));
      });
      request.on("response", (response) => {
        const chunks: Buffer[] = [];
        let size = 0;
        response.on("data", (chunk: Buffer) => {
          size += chunk.length;
          if (size > MANIFEST_LIMIT)
            request.destroy(new HandOver(`${method} ${url}: body over ${MANIFEST_LIMIT} bytes`));
          else chunks.push(chunk);
        });
        response.on("end", () => {
          clearTimeout(timer);
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            body: Buffer.concat(chunks),
          });
        });
        response.on("error", () => undefined); // the request's error handler reports it
      });
      request.end(body);
    });
  }
}

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function parse<T>(bytes: Buffer): T {
  try {
    return JSON.parse(bytes.toString("utf8")) as T;
  } catch {
    throw new HandOver("a document is not valid JSON");
  }
}

function digestOf(bytes: Buffer, algorithm: "sha256" | "sha512"): string {
  const { createHash } = process.getBuiltinModule("node:crypto");
  return `${algorithm}:${createHash(algorithm).update(bytes).digest("hex")}`;
}

function checkDigest(bytes: Buffer, expected: string, what: string): void {
  const actual = digestOf(bytes, expected.startsWith("sha512:") ? "sha512" : "sha256");
  if (actual !== expected) throw new HandOver(`${what} hashes to ${actual}`);
}

/** As Copier's: the body's mediaType wins over a Content-Type some registries get wrong. */
function mediaTypeOf(bytes: Buffer, served: string): string {
  try {
    const body = JSON.parse(bytes.toString("utf8")) as { mediaType?: string; manifests?: unknown };
    if (body.mediaType) return body.mediaType;
    if (Array.isArray(body.manifests)) return MediaType.OciIndex;
  } catch {
    // fall through to the served type
  }
  return served;
}

/** As Copier's: config and layers, without foreign layers. */
function blobsOf(manifest: ImageManifest): Descriptor[] {
  const blobs: Descriptor[] = [];
  if (manifest.config) blobs.push(manifest.config);
  for (const layer of manifest.layers ?? []) if (!(layer.urls && layer.urls.length > 0)) blobs.push(layer);
  return blobs;
}

/** As Copier's: every blob once, largest first. */
function uniqueBlobs(root: Node): Descriptor[] {
  const byDigest = new Map<string, Descriptor>();
  const visit = (node: Node) => {
    for (const blob of node.blobs) if (!byDigest.has(blob.digest)) byDigest.set(blob.digest, blob);
    for (const child of node.children) visit(child);
  };
  visit(root);
  return [...byDigest.values()].sort((a, b) => b.size - a.size);
}

function countManifests(node: Node): number {
  return 1 + node.children.reduce((sum, child) => sum + countManifests(child), 0);
}
