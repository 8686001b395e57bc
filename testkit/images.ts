/**
 * Deterministic synthetic images, generated on the spot: layer bytes come from an AES-128-CTR
 * keystream over zeros (incompressible, several GB/s, same bytes for the same seed), wrapped as
 * a one-file tar. Blobs are streams that can be opened again and again, so multi-GiB layers are
 * pushed without ever being held in memory or written to disk.
 */
import { createCipheriv, createHash } from "node:crypto";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGzip } from "node:zlib";
import type { RegistryClient, RepoRef } from "../src/oci/registry.ts";
import { type Descriptor, MediaType, type Platform, type RawManifest } from "../src/oci/types.ts";

const chunkSize = 1 << 20;
const zeros = Buffer.alloc(chunkSize);

/** A blob that can be streamed any number of times. */
export interface SyntheticBlob {
  descriptor: Descriptor;
  open(): Readable;
  /** Digest of the uncompressed content (the config's diff_id for layers). */
  diffId: string;
}

/** Incompressible pseudo-random bytes for `seed`; the same seed always gives the same bytes. */
export function randomBytesStream(seed: string, size: number): Readable {
  const key = createHash("sha256").update(`stowage-synthetic:${seed}`).digest();
  const cipher = createCipheriv("aes-128-ctr", key.subarray(0, 16), key.subarray(16, 32));
  let remaining = size;
  return new Readable({
    highWaterMark: chunkSize,
    read() {
      if (remaining <= 0) {
        this.push(null);
        return;
      }
      const n = Math.min(remaining, chunkSize);
      remaining -= n;
      this.push(cipher.update(n === chunkSize ? zeros : zeros.subarray(0, n)));
    },
  });
}

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, "0");
}

/** A ustar header for one regular file (mtime 0, root-owned, 0644), so the tar is reproducible. */
export function tarHeader(name: string, size: number): Buffer {
  const header = Buffer.alloc(512);
  header.write(name, 0, 100, "utf8");
  header.write(octal(0o644, 8), 100);
  header.write(octal(0, 8), 108);
  header.write(octal(0, 8), 116);
  header.write(octal(size, 12), 124);
  header.write(octal(0, 12), 136);
  header.write("        ", 148); // checksum is computed with its own field as spaces
  header.write("0", 156);
  header.write("ustar\u000000", 257);
  header.write("root", 265);
  header.write("root", 297);
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, "0")}\u0000 `, 148);
  return header;
}

/** Size of a one-file tar holding `contentSize` bytes: header, padded content, two zero end blocks. */
export function tarSize(contentSize: number): number {
  return 512 + Math.ceil(contentSize / 512) * 512 + 1024;
}

/** A tar holding one file of random bytes from `seed`, streamed. */
export function tarStream(seed: string, contentSize: number): Readable {
  const name = `data/${seed.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 80)}.bin`;
  const padding = (512 - (contentSize % 512)) % 512;
  async function* generate() {
    yield tarHeader(name, contentSize);
    yield* randomBytesStream(seed, contentSize);
    yield Buffer.alloc(padding + 1024);
  }
  return Readable.from(generate(), { objectMode: false });
}

export type LayerFormat = "tar" | "tar+gzip" | "raw";

export interface LayerSpec {
  seed: string;
  /** Bytes of random content (the blob is a little larger for tar, smaller-or-equal for gzip). */
  size: number;
  /** tar (default): uncompressed tar; tar+gzip: gzip'd tar (small layers only, gzip is slow); raw: bytes as-is. */
  format?: LayerFormat;
  /** Overrides the media type (artifacts: any media type). */
  mediaType?: string;
}

const layerCache = new Map<string, { digest: string; size: number; diffId: string }>();

function openLayer(spec: LayerSpec): Readable {
  const format = spec.format ?? "tar";
  if (format === "raw") return randomBytesStream(spec.seed, spec.size);
  const tar = tarStream(spec.seed, spec.size);
  if (format === "tar") return tar;
  const gzip = createGzip({ level: 1 });
  tar.on("error", (err) => gzip.destroy(err));
  return tar.pipe(gzip);
}

/** Hashes a stream without keeping it. */
async function digestStream(stream: Readable): Promise<{ digest: string; size: number }> {
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { digest: `sha256:${hash.digest("hex")}`, size };
}

/** Builds a layer blob; its digest is computed by streaming it once (cached per seed/size/format). */
export async function syntheticLayer(spec: LayerSpec, docker = false): Promise<SyntheticBlob> {
  const format = spec.format ?? "tar";
  const key = `${format}:${spec.seed}:${spec.size}`;
  let known = layerCache.get(key);
  if (!known) {
    if (format === "tar+gzip") {
      const compressed = await digestStream(openLayer(spec));
      const uncompressed = await digestStream(tarStream(spec.seed, spec.size));
      known = { ...compressed, diffId: uncompressed.digest };
    } else {
      const plain = await digestStream(openLayer(spec));
      known = { ...plain, diffId: plain.digest };
    }
    layerCache.set(key, known);
  }
  const mediaType =
    spec.mediaType ??
    (format === "tar+gzip"
      ? docker
        ? MediaType.DockerLayerTarGzip
        : MediaType.OciLayerTarGzip
      : docker
        ? "application/vnd.docker.image.rootfs.diff.tar"
        : MediaType.OciLayerTar);
  return {
    descriptor: { mediaType, digest: known.digest, size: known.size },
    diffId: known.diffId,
    open: () => openLayer(spec),
  };
}

/** A small blob held in memory (configs, JSON documents). */
export function bytesBlob(bytes: Buffer, mediaType: string): SyntheticBlob {
  const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
  return {
    descriptor: { mediaType, digest, size: bytes.length },
    diffId: digest,
    open: () => Readable.from([bytes]),
  };
}

export function rawManifest(document: object, mediaType: string): RawManifest {
  const bytes = Buffer.from(JSON.stringify(document));
  return { mediaType, bytes, digest: `sha256:${createHash("sha256").update(bytes).digest("hex")}` };
}

export interface ImageSpec {
  layers: LayerSpec[];
  /** Default linux/amd64. */
  platform?: Platform;
  /** "oci" (default) or "docker" (schema2 media types). */
  format?: "oci" | "docker";
  env?: string[];
  /** A non-image config media type makes this an artifact; its config is `configJson`. */
  configMediaType?: string;
  configJson?: object;
  artifactType?: string;
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export interface SyntheticImage {
  manifest: RawManifest;
  config: SyntheticBlob;
  layers: SyntheticBlob[];
  platform?: Platform;
  /** Every blob, config first. */
  blobs: SyntheticBlob[];
  /** Descriptor of the manifest itself (with platform when it has one), for indexes and subjects. */
  descriptor: Descriptor;
}

export async function buildImage(spec: ImageSpec): Promise<SyntheticImage> {
  const docker = spec.format === "docker";
  const layers: SyntheticBlob[] = [];
  for (const layer of spec.layers) layers.push(await syntheticLayer(layer, docker));
  const isArtifact = spec.configMediaType !== undefined;
  const platform = isArtifact ? undefined : (spec.platform ?? { os: "linux", architecture: "amd64" });
  let config: SyntheticBlob;
  if (isArtifact) {
    config = bytesBlob(Buffer.from(JSON.stringify(spec.configJson ?? {})), spec.configMediaType as string);
  } else {
    const configDocument = {
      created: "2024-01-01T00:00:00Z",
      architecture: platform?.architecture,
      os: platform?.os,
      ...(platform?.variant ? { variant: platform.variant } : {}),
      config: {
        Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", ...(spec.env ?? [])],
      },
      rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
    };
    config = bytesBlob(
      Buffer.from(JSON.stringify(configDocument)),
      docker ? MediaType.DockerConfig : MediaType.OciConfig,
    );
  }
  const mediaType = docker ? MediaType.DockerManifest : MediaType.OciManifest;
  const document = {
    schemaVersion: 2,
    mediaType,
    ...(spec.artifactType ? { artifactType: spec.artifactType } : {}),
    config: config.descriptor,
    layers: layers.map((l) => l.descriptor),
    ...(spec.subject ? { subject: spec.subject } : {}),
    ...(spec.annotations ? { annotations: spec.annotations } : {}),
  };
  const manifest = rawManifest(document, mediaType);
  return {
    manifest,
    config,
    layers,
    platform,
    blobs: [config, ...layers],
    descriptor: {
      mediaType,
      digest: manifest.digest,
      size: manifest.bytes.length,
      ...(spec.artifactType ? { artifactType: spec.artifactType } : {}),
      ...(platform ? { platform } : {}),
    },
  };
}

/** An index over images (each must have a platform); docker format gives a manifest list. */
export function buildIndex(
  images: SyntheticImage[],
  options: { format?: "oci" | "docker"; annotations?: Record<string, string> } = {},
): RawManifest {
  const mediaType = options.format === "docker" ? MediaType.DockerManifestList : MediaType.OciIndex;
  return rawManifest(
    {
      schemaVersion: 2,
      mediaType,
      manifests: images.map((i) => i.descriptor),
      ...(options.annotations ? { annotations: options.annotations } : {}),
    },
    mediaType,
  );
}

/**
 * Pushes the blobs the repository lacks (streamed; mounted from `mountFrom` when that
 * repository has them), then the manifest under `tag` (or its digest).
 */
export async function pushImage(
  client: RegistryClient,
  repo: RepoRef,
  image: SyntheticImage,
  tag?: string,
  options: { mountFrom?: string } = {},
): Promise<string> {
  for (const blob of image.blobs) {
    if ((await client.hasBlob(repo, blob.descriptor.digest)) !== undefined) continue;
    if (options.mountFrom && (await client.mountBlob(repo, blob.descriptor.digest, options.mountFrom)))
      continue;
    await client.pushBlob(repo, blob.descriptor, () => blob.open());
  }
  return client.putManifest(repo, tag ?? image.manifest.digest, image.manifest);
}

export interface PushedImage {
  repo: RepoRef;
  tag: string;
  digest: string;
  mediaType: string;
  image: SyntheticImage;
}

/** A single-platform OCI (or Docker schema2) image. */
export async function pushSinglePlatformImage(
  client: RegistryClient,
  repo: RepoRef,
  tag: string,
  spec: Partial<ImageSpec> & { seed?: string; layerSizes?: number[]; mountFrom?: string } = {},
): Promise<PushedImage> {
  const seed = spec.seed ?? `${repo.repository}:${tag}`;
  const layers =
    spec.layers ??
    (spec.layerSizes ?? [64 * 1024, 256 * 1024]).map((size, i) => ({ seed: `${seed}/${i}`, size }));
  const image = await buildImage({ ...spec, layers });
  const digest = await pushImage(client, repo, image, tag, { mountFrom: spec.mountFrom });
  return { repo, tag, digest, mediaType: image.manifest.mediaType, image };
}

export interface PushedIndex {
  repo: RepoRef;
  tag: string;
  digest: string;
  index: RawManifest;
  images: SyntheticImage[];
}

/** A multi-arch index: linux/amd64 (optionally with CUDA_VERSION in its env) + linux/arm64/v8. */
export async function pushMultiArchIndex(
  client: RegistryClient,
  repo: RepoRef,
  tag: string,
  options: {
    seed?: string;
    layerSizes?: number[];
    cuda?: boolean;
    format?: "oci" | "docker";
    sharedBaseSize?: number;
  } = {},
): Promise<PushedIndex> {
  const seed = options.seed ?? `${repo.repository}:${tag}`;
  const sizes = options.layerSizes ?? [128 * 1024, 32 * 1024];
  const platforms: { platform: Platform; env: string[] }[] = [
    { platform: { os: "linux", architecture: "amd64" }, env: options.cuda ? ["CUDA_VERSION=12.4.1"] : [] },
    { platform: { os: "linux", architecture: "arm64", variant: "v8" }, env: [] },
  ];
  const images: SyntheticImage[] = [];
  for (const { platform, env } of platforms) {
    const layers: LayerSpec[] = sizes.map((size, i) => ({
      seed: `${seed}/${platform.architecture}/${i}`,
      size,
    }));
    if (options.sharedBaseSize) layers.unshift({ seed: `${seed}/shared-base`, size: options.sharedBaseSize });
    const image = await buildImage({ layers, platform, env, format: options.format });
    await pushImage(client, repo, image);
    images.push(image);
  }
  const index = buildIndex(images, {
    format: options.format,
    annotations: { "org.opencontainers.image.source": "https://example.invalid/stowage-synthetic" },
  });
  const digest = await client.putManifest(repo, tag, index);
  return { repo, tag, digest, index, images };
}

export const ModelConfigMediaType = "application/vnd.acme.model.config.v1+json";

/** A model-weights artifact: custom config media type, layers of arbitrary media types. */
export async function pushArtifact(
  client: RegistryClient,
  repo: RepoRef,
  tag: string,
  options: { seed?: string; sizes?: number[] } = {},
): Promise<PushedImage> {
  const seed = options.seed ?? `${repo.repository}:${tag}`;
  const sizes = options.sizes ?? [96 * 1024, 8 * 1024];
  const image = await buildImage({
    configMediaType: ModelConfigMediaType,
    configJson: { name: "tiny-llm", parameters: "7B", dtype: "bf16" },
    artifactType: "application/vnd.acme.model.v1",
    layers: sizes.map((size, i) => ({
      seed: `${seed}/${i}`,
      size,
      format: "raw" as const,
      mediaType:
        i === 0
          ? "application/vnd.acme.model.weights.v1.safetensors"
          : "application/vnd.acme.model.tokenizer.v1+json",
    })),
  });
  const digest = await pushImage(client, repo, image, tag);
  return { repo, tag, digest, mediaType: image.manifest.mediaType, image };
}

/** N images in repositories `${prefix}-<i>` sharing one base layer (the first layer), each with its own top layer. */
export async function pushSharedBaseImages(
  client: RegistryClient,
  registry: string,
  options: {
    prefix?: string;
    count?: number;
    baseSize?: number;
    topSize?: number;
    tag?: string;
    seed?: string;
  } = {},
): Promise<PushedImage[]> {
  const prefix = options.prefix ?? "shared/app";
  const tag = options.tag ?? "v1";
  const seed = options.seed ?? prefix;
  const pushed: PushedImage[] = [];
  for (let i = 0; i < (options.count ?? 4); i++) {
    const repo = { registry, repository: `${prefix}-${i}` };
    pushed.push(
      await pushSinglePlatformImage(client, repo, tag, {
        layers: [
          { seed: `${seed}/base`, size: options.baseSize ?? 512 * 1024 },
          { seed: `${seed}/top-${i}`, size: options.topSize ?? 16 * 1024 },
        ],
        mountFrom: i > 0 ? `${prefix}-0` : undefined,
      }),
    );
  }
  return pushed;
}

export const SignatureArtifactType = "application/vnd.dev.stowage.signature.v1+json";

/**
 * A signature-like referrer for `subject` (an OCI manifest with `subject`), pushed by digest,
 * plus the OCI 1.1 fallback tag `sha256-<hex>` listing it (distribution 2.8 has no referrers API).
 */
export async function pushReferrer(
  client: RegistryClient,
  repo: RepoRef,
  subject: Descriptor,
  options: { seed?: string; artifactType?: string } = {},
): Promise<{ digest: string; image: SyntheticImage; fallbackTag: string; fallbackIndex: RawManifest }> {
  const artifactType = options.artifactType ?? SignatureArtifactType;
  const image = await buildImage({
    configMediaType: MediaType.OciEmpty,
    configJson: {},
    artifactType,
    subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
    annotations: { "org.opencontainers.image.created": "2024-01-01T00:00:00Z" },
    layers: [
      {
        seed: options.seed ?? `signature:${subject.digest}`,
        size: 512,
        format: "raw",
        mediaType: "application/vnd.dev.stowage.signature.payload.v1",
      },
    ],
  });
  const digest = await pushImage(client, repo, image);
  const fallbackTag = subject.digest.replace(":", "-");
  let existing: Descriptor[] = [];
  try {
    const current = await client.getManifest(repo, fallbackTag);
    existing = (JSON.parse(current.bytes.toString("utf8")).manifests ?? []) as Descriptor[];
  } catch {
    existing = [];
  }
  const entry: Descriptor = {
    mediaType: MediaType.OciManifest,
    digest,
    size: image.manifest.bytes.length,
    artifactType,
  };
  const fallbackIndex = rawManifest(
    {
      schemaVersion: 2,
      mediaType: MediaType.OciIndex,
      manifests: [...existing.filter((d) => d.digest !== digest), entry],
    },
    MediaType.OciIndex,
  );
  await client.putManifest(repo, fallbackTag, fallbackIndex);
  return { digest, image, fallbackTag, fallbackIndex };
}

/** Streams a blob into a sink, e.g. to check generation throughput. */
export async function drain(stream: Readable): Promise<number> {
  let total = 0;
  await pipeline(stream, async (source: AsyncIterable<Buffer>) => {
    for await (const chunk of source) total += chunk.length;
  });
  return total;
}
