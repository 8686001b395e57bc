/**
 * What the planner needs to know about a cached image for one node: the single-platform digest
 * to pull, its compressed size, and the CUDA version it declares. Read from the cache registry
 * (index → child manifest → config blob) and remembered by digest: content at a digest never changes.
 */
import { formatPlatform, matchesPlatform } from "../../oci/platforms.ts";
import type { RegistryClient } from "../../oci/registry.ts";
import {
  type Descriptor,
  type ImageIndex,
  type ImageManifest,
  isIndexMediaType,
  type Platform,
} from "../../oci/types.ts";
import { StowageError } from "../../util/errors.ts";
import { type CudaVersion, parseCudaVersion } from "./nodes.ts";

export interface PlatformImage {
  /** Single-platform manifest digest for the node. */
  digest: string;
  /** Config + layers, compressed. */
  sizeBytes: number;
  cuda?: CudaVersion;
}

export type Resolution = { ok: true; image: PlatformImage } | { ok: false; reason: string; message: string };

/** A blob of a single-platform image (config or layer), compressed size. */
export interface ImageBlob {
  digest: string;
  size: number;
}

interface ManifestInfo {
  platform?: Platform;
  sizeBytes: number;
  cuda?: CudaVersion;
  /** Config, then layers: what a node fetches, and what the fan-out planner spreads. */
  blobs: readonly ImageBlob[];
}

/** Key for a lookup: repository, top-level digest, platform. */
export function resolutionKey(repository: string, digest: string, platform: Platform): string {
  return `${repository}@${digest}#${formatPlatform(platform)}`;
}

export class ImageResolver {
  readonly #client: RegistryClient;
  readonly #registry: string;
  readonly #indexes = new Map<string, Descriptor[] | null>();
  readonly #manifests = new Map<string, ManifestInfo>();

  constructor(client: RegistryClient, cacheRegistry: string) {
    this.#client = client;
    this.#registry = cacheRegistry;
  }

  /**
   * The config and layers of single-platform manifest `digest`, when a resolve() has read it (the
   * fan-out planner asks only for images the pre-warm plan placed, which were resolved first).
   */
  blobsOf(digest: string): readonly ImageBlob[] | undefined {
    return this.#manifests.get(digest)?.blobs;
  }

  /** Resolve `digest` (an index or a single manifest) in cache `repository` for `platform`. */
  async resolve(repository: string, digest: string, platform: Platform): Promise<Resolution> {
    try {
      const children = await this.#children(repository, digest);
      let child = digest;
      if (children) {
        const match = children.find((d) => matchesPlatform(platform, d.platform));
        if (!match) {
          return {
            ok: false,
            reason: "PlatformNotFound",
            message: `the cache holds no ${formatPlatform(platform)} image at ${digest}`,
          };
        }
        child = match.digest;
      }
      const info = await this.#manifest(repository, child);
      if (!children && info.platform && !matchesPlatform(platform, info.platform)) {
        return {
          ok: false,
          reason: "PlatformNotFound",
          message: `the cached image is ${formatPlatform(info.platform)}, the node is ${formatPlatform(platform)}`,
        };
      }
      return {
        ok: true,
        image: { digest: child, sizeBytes: info.sizeBytes, ...(info.cuda ? { cuda: info.cuda } : {}) },
      };
    } catch (err) {
      const reason = err instanceof StowageError ? err.reason : "CacheUnavailable";
      return {
        ok: false,
        reason,
        message: `reading ${repository}@${digest} from the cache: ${(err as Error).message}`,
      };
    }
  }

  async #children(repository: string, digest: string): Promise<Descriptor[] | null> {
    const known = this.#indexes.get(digest);
    if (known !== undefined) return known;
    const raw = await this.#client.getManifest({ registry: this.#registry, repository }, digest);
    let children: Descriptor[] | null = null;
    if (isIndexMediaType(raw.mediaType)) {
      children = (JSON.parse(raw.bytes.toString("utf8")) as ImageIndex).manifests ?? [];
    } else {
      this.#manifests.set(digest, await this.#describe(repository, raw.bytes));
    }
    this.#indexes.set(digest, children);
    return children;
  }

  async #manifest(repository: string, digest: string): Promise<ManifestInfo> {
    const known = this.#manifests.get(digest);
    if (known) return known;
    const raw = await this.#client.getManifest({ registry: this.#registry, repository }, digest);
    const info = await this.#describe(repository, raw.bytes);
    this.#manifests.set(digest, info);
    return info;
  }

  async #describe(repository: string, bytes: Buffer): Promise<ManifestInfo> {
    const manifest = JSON.parse(bytes.toString("utf8")) as ImageManifest;
    const sizeBytes = manifest.config.size + manifest.layers.reduce((sum, l) => sum + l.size, 0);
    const blobs = [manifest.config, ...manifest.layers].map(({ digest, size }) => ({ digest, size }));
    const chunks: Buffer[] = [];
    for await (const chunk of this.#client.getBlob({ registry: this.#registry, repository }, manifest.config))
      chunks.push(chunk as Buffer);
    const config = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
      os?: string;
      architecture?: string;
      variant?: string;
      config?: { Env?: string[]; Labels?: Record<string, string> };
    };
    const env = config.config?.Env?.find((e) => e.startsWith("CUDA_VERSION="));
    const cuda =
      parseCudaVersion(env?.slice("CUDA_VERSION=".length)) ??
      parseCudaVersion(config.config?.Labels?.["com.nvidia.cuda.version"]);
    const platform =
      config.os && config.architecture
        ? {
            os: config.os,
            architecture: config.architecture,
            ...(config.variant ? { variant: config.variant } : {}),
          }
        : undefined;
    return { sizeBytes, blobs, ...(cuda ? { cuda } : {}), ...(platform ? { platform } : {}) };
  }
}
