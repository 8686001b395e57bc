/**
 * Which images nobody declared to evict: a pure decision from what the cache registry holds.
 * Sizes count blobs, each blob once however many images share it; a blob a pinned (declared)
 * image references costs the undeclared budget nothing, and evicting an image frees only the
 * blobs no remaining image references. Least recently pulled goes first; an image with no known
 * pull is older than any pulled one.
 */
import { compareStrings } from "../../util/order.ts";

export interface StoredImage {
  repository: string;
  digest: string;
  /** Blob digest → size: the config and layers (and the manifest's own bytes under its digest). */
  blobs: Map<string, number>;
}

export interface CandidateImage extends StoredImage {
  /** Epoch ms of the last pull through any front, or 0 when none is recorded. */
  lastPulledAt: number;
}

export interface EvictionPlan {
  /** Oldest first. */
  evict: CandidateImage[];
  /** Bytes the undeclared images take before eviction. */
  undeclaredBytes: number;
  /** Bytes no image references once `evict` is gone. */
  freedBytes: number;
}

export function planEviction(
  pinned: StoredImage[],
  candidates: CandidateImage[],
  budgetBytes: number,
): EvictionPlan {
  const pinnedBlobs = new Set<string>();
  for (const image of pinned) for (const digest of image.blobs.keys()) pinnedBlobs.add(digest);
  // Undeclared bytes by blob, with how many candidate images reference each.
  const references = new Map<string, { size: number; count: number }>();
  for (const image of candidates) {
    for (const [digest, size] of image.blobs) {
      if (pinnedBlobs.has(digest)) continue;
      const entry = references.get(digest);
      if (entry) entry.count++;
      else references.set(digest, { size, count: 1 });
    }
  }
  let undeclaredBytes = 0;
  for (const { size } of references.values()) undeclaredBytes += size;
  const order = [...candidates].sort(
    (a, b) => a.lastPulledAt - b.lastPulledAt || compareStrings(a.repository, b.repository),
  );
  const evict: CandidateImage[] = [];
  let remaining = undeclaredBytes;
  for (const image of order) {
    if (remaining <= budgetBytes) break;
    evict.push(image);
    for (const digest of image.blobs.keys()) {
      const entry = references.get(digest);
      if (!entry) continue;
      entry.count--;
      if (entry.count === 0) remaining -= entry.size;
    }
  }
  return { evict, undeclaredBytes, freedBytes: undeclaredBytes - remaining };
}
