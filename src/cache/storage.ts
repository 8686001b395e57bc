/**
 * The storage behind the front: the CNCF distribution registry the controller pushes into.
 * Hits are passed through as raw HTTP (status, Range, headers) so distribution's own range
 * handling serves them (a redirect to object storage is followed here, not handed to the
 * node); writes go through the project's RegistryClient, whose
 * uploads end with the digest on the final PUT, which distribution verifies before it
 * commits anything.
 *
 * Raw reads use the oci Transport and Authenticator directly because RegistryClient has no
 * call that hands back an unverified ranged response (it verifies whole blobs, which a
 * pass-through of `Range: bytes=N-M` cannot).
 */
import { Readable } from "node:stream";
import { Authenticator, type CredentialLookup, pullScope } from "../oci/challenge.ts";
import { errorFromNetwork } from "../oci/errors.ts";
import { MANIFEST_ACCEPT, MANIFEST_SIZE_LIMIT, RegistryClient } from "../oci/registry.ts";
import { headerValue, type ResponseData, Transport } from "../oci/transport.ts";
import type { Descriptor } from "../oci/types.ts";
import { digestOf } from "../oci/verify.ts";
import { type Clock, systemClock } from "../util/clock.ts";
import { StowageError } from "../util/errors.ts";
import type { Logger } from "../util/log.ts";

export interface StorageOptions {
  /** "http://127.0.0.1:5000" */
  url: string;
  credentials?: CredentialLookup;
  caPem?: string[];
  clock?: Clock;
  logger?: Logger;
}

export interface StoredManifest {
  digest: string;
  mediaType: string;
  bytes: Buffer;
}

export type RawResponse = ResponseData & { url: string };

/** Media types a stored manifest may declare; anything else read back as a "manifest" is a plain blob. */
const MANIFEST_MEDIA_TYPES = new Set(MANIFEST_ACCEPT.split(", "));

/**
 * The media type of a manifest's bytes: its own `mediaType`, else what its shape says
 * (OCI allows leaving the field out); undefined when the bytes are no manifest.
 */
export function manifestMediaTypeOf(bytes: Buffer): string | undefined {
  let document: { mediaType?: unknown; manifests?: unknown; layers?: unknown; config?: unknown };
  try {
    document = JSON.parse(bytes.toString("utf8"));
  } catch {
    return undefined;
  }
  if (typeof document !== "object" || document === null) return undefined;
  if (typeof document.mediaType === "string")
    return MANIFEST_MEDIA_TYPES.has(document.mediaType) ? document.mediaType : undefined;
  if (Array.isArray(document.manifests)) return "application/vnd.oci.image.index.v1+json";
  if (document.config !== undefined && Array.isArray(document.layers))
    return "application/vnd.oci.image.manifest.v1+json";
  return undefined;
}

export class Storage {
  readonly registry: string;
  readonly client: RegistryClient;
  private readonly transport: Transport;
  private readonly auth: Authenticator;
  private readonly logger?: Logger;

  constructor(options: StorageOptions) {
    const url = new URL(options.url);
    this.registry = url.host;
    const insecureHosts = url.protocol === "http:" ? [url.host] : [];
    this.transport = new Transport({ insecureHosts, caPem: options.caPem, maxConnectionsPerHost: 64 });
    this.auth = new Authenticator({
      transport: this.transport,
      credentials: options.credentials,
      clock: options.clock ?? systemClock,
    });
    this.client = new RegistryClient({
      insecureHosts,
      caPem: options.caPem,
      credentials: options.credentials,
      clock: options.clock,
      logger: options.logger,
      retry: { attempts: 3 },
      // The front's uploads carry chunks other readers hold too (see command.ts's upstream).
      bulkMinBytes: Number.POSITIVE_INFINITY,
    });
    this.logger = options.logger;
  }

  /** One request to storage, answering an auth challenge once. Network failures are CacheUnavailable. */
  async send(
    method: "GET" | "HEAD",
    path: string,
    repository: string,
    headers: Record<string, string> = {},
    signal?: AbortSignal,
  ): Promise<RawResponse> {
    const url = `${this.transport.baseUrl(this.registry)}${path}`;
    const scopes = [pullScope(repository)];
    const attempt = async (authorization: string | undefined) => {
      try {
        return await this.transport.send({
          method,
          url,
          headers: authorization ? { ...headers, authorization } : headers,
          signal,
        });
      } catch (err) {
        const failure = errorFromNetwork(err, this.registry, `${method} ${path}`);
        throw new StowageError("CacheUnavailable", `cache storage: ${failure.message}`, {
          cause: err,
          retryable: true,
        });
      }
    };
    let response = await attempt(await this.auth.authorization(this.registry, scopes, signal));
    if (response.statusCode === 401) {
      const challenge = headerValue(response.headers, "www-authenticate");
      await response.body.dump();
      const merged = this.auth.onChallenge(this.registry, challenge, scopes);
      const credentials = await this.auth.credentialsFor(this.registry, repository);
      response = await attempt(await this.auth.authorizationWith(this.registry, merged, credentials, signal));
    }
    return response;
  }

  /** A blob's response as distribution gives it (200, 206, 416), or undefined when absent. */
  async openBlob(
    repository: string,
    digest: string,
    options: { method?: "GET" | "HEAD"; range?: string; signal?: AbortSignal } = {},
  ): Promise<RawResponse | undefined> {
    const headers: Record<string, string> = options.range ? { range: options.range } : {};
    const response = await this.send(
      options.method ?? "GET",
      `/v2/${repository}/blobs/${digest}`,
      repository,
      headers,
      options.signal,
    );
    if (response.statusCode === 404) {
      await response.body.dump();
      return undefined;
    }
    if (![200, 206, 416].includes(response.statusCode)) {
      await response.body.dump();
      throw new StowageError(
        "CacheUnavailable",
        `cache storage answered HTTP ${response.statusCode} for blob ${digest} in ${repository}`,
        { retryable: response.statusCode >= 500 },
      );
    }
    return response;
  }

  /**
   * A manifest by tag or digest: from distribution's manifest store (what the controller
   * pushed), else, by digest, from the blob store, where the front keeps manifests it fetched
   * (distribution refuses a manifest whose blobs or children it lacks, and a pull-through
   * cache has the manifest before any of them).
   */
  async getManifest(repository: string, reference: string): Promise<StoredManifest | undefined> {
    const response = await this.send("GET", `/v2/${repository}/manifests/${reference}`, repository, {
      accept: MANIFEST_ACCEPT,
    });
    if (response.statusCode === 200) {
      const bytes = Buffer.from(await response.body.arrayBuffer());
      const mediaType =
        (headerValue(response.headers, "content-type") ?? "").split(";")[0].trim() ||
        manifestMediaTypeOf(bytes) ||
        "application/vnd.oci.image.manifest.v1+json";
      const digest = headerValue(response.headers, "docker-content-digest") ?? digestOf(bytes);
      return { digest, mediaType, bytes };
    }
    await response.body.dump();
    if (response.statusCode !== 404) {
      throw new StowageError(
        "CacheUnavailable",
        `cache storage answered HTTP ${response.statusCode} for manifest ${repository}:${reference}`,
        { retryable: response.statusCode >= 500 },
      );
    }
    if (!reference.includes(":")) return undefined;
    return this.getManifestBlob(repository, reference);
  }

  private async getManifestBlob(repository: string, digest: string): Promise<StoredManifest | undefined> {
    const head = await this.openBlob(repository, digest, { method: "HEAD" });
    if (!head) return undefined;
    await head.body.dump();
    if (Number(headerValue(head.headers, "content-length") ?? "0") > MANIFEST_SIZE_LIMIT) return undefined;
    const response = await this.openBlob(repository, digest);
    if (!response) return undefined;
    const bytes = Buffer.from(await response.body.arrayBuffer());
    const mediaType = manifestMediaTypeOf(bytes);
    if (!mediaType || digestOf(bytes, digest.startsWith("sha512:") ? "sha512" : "sha256") !== digest) {
      this.logger?.warn({ repository, digest }, "a blob asked for as a manifest is not one");
      return undefined;
    }
    return { digest, mediaType, bytes };
  }

  /** Keeps a fetched manifest in the blob store (see getManifest). */
  async putManifestBlob(repository: string, manifest: StoredManifest): Promise<void> {
    const descriptor: Descriptor = {
      mediaType: manifest.mediaType,
      digest: manifest.digest,
      size: manifest.bytes.length,
    };
    await this.client.pushBlob({ registry: this.registry, repository }, descriptor, () =>
      Readable.from([manifest.bytes]),
    );
  }

  /** Uploads a blob from `open()`, committed only if distribution finds the digest right. */
  async pushBlob(repository: string, descriptor: Descriptor, open: () => Readable): Promise<void> {
    await this.client.pushBlob({ registry: this.registry, repository }, descriptor, open);
  }

  async ping(): Promise<void> {
    await this.client.ping(this.registry);
  }

  async close(): Promise<void> {
    await Promise.all([this.transport.close(), this.client.close()]);
  }
}
