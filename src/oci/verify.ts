/**
 * Digest and size verification while bytes stream past. The last chunk is held back until
 * the whole content has been verified, so a consumer that pipes into an upload never sends
 * the final bytes of bad content: the upload comes up short and nothing is committed.
 */
import { createHash, type Hash } from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";
import { StowageError } from "../util/errors.ts";
import type { RegistryClient, RepoRef } from "./registry.ts";
import type { Descriptor } from "./types.ts";

const ALGORITHMS: Record<string, string> = { sha256: "sha256", sha512: "sha512" };

/** "sha256:<hex>" of these bytes. */
export function digestOf(bytes: Buffer, algorithm: "sha256" | "sha512" = "sha256"): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest("hex")}`;
}

export function hashFor(digest: string): Hash {
  const algorithm = ALGORITHMS[digest.slice(0, digest.indexOf(":"))];
  if (!algorithm) throw new StowageError("InvalidArgument", `unsupported digest algorithm in "${digest}"`);
  return createHash(algorithm);
}

/** Accumulates a digest and a byte count, and says whether they match a descriptor. */
export class DigestVerifier {
  readonly expected: Pick<Descriptor, "digest" | "size">;
  private readonly hash: Hash;
  private count = 0;

  constructor(expected: Pick<Descriptor, "digest" | "size">) {
    this.expected = expected;
    this.hash = hashFor(expected.digest);
  }

  get received(): number {
    return this.count;
  }

  /** Feed bytes; throws SizeMismatch as soon as there are more than expected. */
  update(chunk: Buffer): void {
    this.count += chunk.length;
    if (this.expected.size >= 0 && this.count > this.expected.size) {
      throw new StowageError(
        "SizeMismatch",
        `content for ${this.expected.digest} is longer than its declared ${this.expected.size} bytes`,
      );
    }
    this.hash.update(chunk);
  }

  /** Throws SizeMismatch or DigestMismatch unless everything matched. */
  finish(): void {
    if (this.expected.size >= 0 && this.count !== this.expected.size) {
      throw new StowageError(
        "SizeMismatch",
        `content for ${this.expected.digest} ended after ${this.count} of ${this.expected.size} bytes`,
      );
    }
    const actual = `${this.expected.digest.slice(0, this.expected.digest.indexOf(":"))}:${this.hash.digest("hex")}`;
    if (actual !== this.expected.digest) {
      throw new StowageError(
        "DigestMismatch",
        `content expected to be ${this.expected.digest} hashes to ${actual}`,
      );
    }
  }
}

/**
 * A Transform that passes bytes through while verifying them against `expected`, holding
 * back the final chunk until verification succeeds; on failure it errors instead.
 */
export class VerifyingTransform extends Transform {
  private readonly verifier: DigestVerifier;
  private held: Buffer | undefined;

  constructor(expected: Pick<Descriptor, "digest" | "size">) {
    super();
    this.verifier = new DigestVerifier(expected);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.verifier.update(chunk);
    } catch (err) {
      callback(err as Error);
      return;
    }
    if (this.held) this.push(this.held);
    this.held = chunk;
    callback();
  }

  override _flush(callback: TransformCallback): void {
    try {
      this.verifier.finish();
    } catch (err) {
      callback(err as Error);
      return;
    }
    if (this.held) this.push(this.held);
    this.held = undefined;
    callback();
  }
}

/** A blob or manifest of the cache whose bytes are not what its digest says (or that is missing). */
export interface CorruptContent {
  digest: string;
  /** The descriptor the content was listed under (size and media type, for a re-copy). */
  descriptor: Descriptor;
  kind: "manifest" | "blob";
  reason: "DigestMismatch" | "SizeMismatch" | "BlobNotFound" | "ImageNotFound";
  message: string;
}

export interface ImageVerification {
  manifests: number;
  blobs: number;
  bytes: number;
  corrupt: CorruptContent[];
}

type ContentReader = Pick<RegistryClient, "getManifest" | "getBlob">;

const CORRUPTION_REASONS = new Set(["DigestMismatch", "SizeMismatch", "BlobNotFound", "ImageNotFound"]);

/**
 * Reads an image back from a registry (normally the cache) and hashes every byte: the
 * manifest under `reference`, every child of an index, every config and layer. What does
 * not match its digest, or is missing, is listed in `corrupt`; a registry that cannot be
 * read at all throws. Costs a full read of the image, so it runs on a slower schedule than
 * the manifest check (`stowage mirror --verify`, the controller's verify pass).
 */
export async function verifyImage(
  client: ContentReader,
  repo: RepoRef,
  reference: string,
  options: { signal?: AbortSignal } = {},
): Promise<ImageVerification> {
  const result: ImageVerification = { manifests: 0, blobs: 0, bytes: 0, corrupt: [] };
  const seen = new Set<string>();
  const corrupt = (err: unknown, descriptor: Descriptor, kind: CorruptContent["kind"]): boolean => {
    if (!(err instanceof StowageError) || !CORRUPTION_REASONS.has(err.reason)) return false;
    const digest = descriptor.digest;
    result.corrupt.push({
      digest,
      descriptor,
      kind,
      reason: err.reason as CorruptContent["reason"],
      message: `${kind} ${digest} of ${repo.registry}/${repo.repository}: ${err.message}`,
    });
    return true;
  };
  const visitManifest = async (ref: string, descriptor?: Descriptor): Promise<void> => {
    let raw: Awaited<ReturnType<ContentReader["getManifest"]>>;
    try {
      raw = await client.getManifest(repo, ref);
    } catch (err) {
      if (descriptor && corrupt(err, descriptor, "manifest")) return;
      throw err;
    }
    result.manifests++;
    let document: { manifests?: Descriptor[]; config?: Descriptor; layers?: Descriptor[] };
    try {
      document = JSON.parse(raw.bytes.toString("utf8"));
    } catch (cause) {
      throw new StowageError("ManifestInvalid", `manifest ${raw.digest} is not valid JSON`, { cause });
    }
    for (const child of document.manifests ?? []) {
      if (!seen.has(child.digest)) {
        seen.add(child.digest);
        await visitManifest(child.digest, child);
      }
    }
    const blobs = [...(document.config ? [document.config] : []), ...(document.layers ?? [])];
    for (const blob of blobs) {
      // Foreign layers live elsewhere; registries do not hold them.
      if (blob.urls && blob.urls.length > 0) continue;
      if (seen.has(blob.digest)) continue;
      seen.add(blob.digest);
      try {
        for await (const chunk of client.getBlob(repo, blob, { signal: options.signal })) {
          result.bytes += (chunk as Buffer).length;
        }
        result.blobs++;
      } catch (err) {
        if (!corrupt(err, blob, "blob")) throw err;
      }
    }
  };
  await visitManifest(reference);
  return result;
}

type ContentCopier = Pick<
  RegistryClient,
  "getManifest" | "getBlob" | "putManifest" | "pushBlob" | "deleteBlob"
>;

/**
 * Verifies the image `reference` in `target` and re-copies from `source` whatever is corrupt
 * or missing (a blob is unlinked first, then uploaded again; a child manifest pushed again by
 * digest), then verifies again. Throws DigestMismatch when the target still serves bad bytes:
 * CNCF distribution keeps the data of a blob it already stores (an upload of the same digest
 * does not replace it), so a corrupt blob there is only cured by deleting the manifests that
 * use it, running the registry's garbage collection, and copying again.
 */
export async function verifyAndRepair(
  client: ContentCopier,
  source: RepoRef,
  target: RepoRef,
  reference: string,
  options: { signal?: AbortSignal } = {},
): Promise<{ verified: ImageVerification; repaired: number }> {
  const first = await verifyImage(client, target, reference, options);
  if (first.corrupt.length === 0) return { verified: first, repaired: 0 };
  for (const bad of first.corrupt) {
    if (bad.kind === "blob") {
      await client.deleteBlob(target, bad.digest);
      await client.pushBlob(
        target,
        bad.descriptor,
        () => client.getBlob(source, bad.descriptor, options),
        options,
      );
    } else {
      const manifest = await client.getManifest(source, bad.digest);
      await client.putManifest(target, bad.digest, manifest);
    }
  }
  const second = await verifyImage(client, target, reference, options);
  if (second.corrupt.length > 0) {
    const names = second.corrupt.map((bad) => `${bad.kind} ${bad.digest}`).join(", ");
    throw new StowageError(
      "DigestMismatch",
      `${target.registry}/${target.repository} still serves corrupt content after re-copying it (${names}): ` +
        "the registry keeps the data of a blob it already stores; delete this image's manifests from it, " +
        "run its garbage collection, then copy again",
    );
  }
  return { verified: second, repaired: first.corrupt.length };
}
