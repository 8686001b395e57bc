/**
 * What the cache registry holds, read through its API: the pinned images (every tagged manifest
 * and, for a tagged index, its children: the controller tags exactly what ModelImages declare,
 * the front never tags) and the candidates (manifests the fronts' pull records name that are
 * still stored and not pinned), each with the sizes of the blobs it references.
 */
import { PULL_RECORD_REPOSITORY, readPullRecord, splitPullKey } from "../../cache/pulls.ts";
import type { RegistryClient } from "../../oci/registry.ts";
import { asStowageError } from "../../util/errors.ts";
import type { CandidateImage, StoredImage } from "./plan.ts";

interface ManifestDocument {
  mediaType?: string;
  config?: { digest: string; size: number };
  layers?: { digest: string; size: number; urls?: string[] }[];
  manifests?: { digest: string }[];
}

/** A manifest read from the registry, or undefined when it is not stored there. */
async function readManifest(
  client: RegistryClient,
  registry: string,
  repository: string,
  reference: string,
): Promise<{ digest: string; bytes: Buffer; document: ManifestDocument } | undefined> {
  try {
    const manifest = await client.getManifest({ registry, repository }, reference);
    return {
      digest: manifest.digest,
      bytes: manifest.bytes,
      document: JSON.parse(manifest.bytes.toString("utf8")),
    };
  } catch (err) {
    if (asStowageError(err).reason === "ImageNotFound") return undefined;
    throw err;
  }
}

function blobsOf(digest: string, bytes: Buffer, document: ManifestDocument): Map<string, number> {
  const blobs = new Map<string, number>([[digest, bytes.length]]);
  if (document.config) blobs.set(document.config.digest, document.config.size);
  for (const layer of document.layers ?? []) if (!layer.urls?.length) blobs.set(layer.digest, layer.size);
  return blobs;
}

/** Every tagged image, and the children of tagged indexes, keyed `repository@digest`. */
export async function pinnedImages(
  client: RegistryClient,
  registry: string,
): Promise<Map<string, StoredImage>> {
  const pinned = new Map<string, StoredImage>();
  const add = async (repository: string, reference: string) => {
    const manifest = await readManifest(client, registry, repository, reference);
    if (!manifest || pinned.has(`${repository}@${manifest.digest}`)) return;
    pinned.set(`${repository}@${manifest.digest}`, {
      repository,
      digest: manifest.digest,
      blobs: blobsOf(manifest.digest, manifest.bytes, manifest.document),
    });
    for (const child of manifest.document.manifests ?? []) await add(repository, child.digest);
  };
  for (const repository of await client.listRepositories(registry)) {
    if (repository === PULL_RECORD_REPOSITORY) continue;
    let tags: string[];
    try {
      tags = await client.listTags({ registry, repository });
    } catch (err) {
      if (asStowageError(err).reason === "ImageNotFound") continue;
      throw err;
    }
    for (const tag of tags) await add(repository, tag);
  }
  return pinned;
}

/** Every front replica's pull record, merged: the latest pull of each manifest. */
export async function lastPulls(client: RegistryClient, registry: string): Promise<Map<string, number>> {
  const merged = new Map<string, number>();
  let tags: string[];
  try {
    tags = await client.listTags({ registry, repository: PULL_RECORD_REPOSITORY });
  } catch (err) {
    if (asStowageError(err).reason === "ImageNotFound") return merged;
    throw err;
  }
  for (const tag of tags) {
    for (const [key, at] of (await readPullRecord(client, registry, tag)) ?? []) {
      if ((merged.get(key) ?? 0) < at) merged.set(key, at);
    }
  }
  return merged;
}

/** Stored, unpinned image manifests the pull records name, with when they were last pulled. */
export async function candidateImages(
  client: RegistryClient,
  registry: string,
  pulls: Map<string, number>,
  pinned: Map<string, StoredImage>,
): Promise<CandidateImage[]> {
  const candidates: CandidateImage[] = [];
  for (const [key, lastPulledAt] of pulls) {
    const parsed = splitPullKey(key);
    if (!parsed || pinned.has(key) || parsed.repository === PULL_RECORD_REPOSITORY) continue;
    const manifest = await readManifest(client, registry, parsed.repository, parsed.digest);
    // Gone already, or an index (kept in the blob store by the front, see cache/promotion.ts).
    if (!manifest || manifest.document.manifests) continue;
    candidates.push({
      repository: parsed.repository,
      digest: manifest.digest,
      blobs: blobsOf(manifest.digest, manifest.bytes, manifest.document),
      lastPulledAt,
    });
  }
  return candidates;
}
