/**
 * The node token a NodeCache carries (`spec.pullToken`): signed for exactly the digests planned
 * on that node (and the index each was chosen from), so the cache front serves those images (and
 * what they reference) to the node's agent even when they are private upstream, and nothing else. Kept while it still names the
 * same digests and has more than half its life ahead; re-signed otherwise, so a steady state
 * writes a NodeCache about once per half-life, not on every pass.
 */

import type { ModelImage } from "../../api/modelImage.ts";
import type { NodeCacheSpec, NodePullToken } from "../../api/nodeCache.ts";
import { issueNodeToken, verifyNodeToken } from "../../cache/nodeToken.ts";

export const DEFAULT_NODE_TOKEN_TTL_MS = 60 * 60_000;

export interface PullTokenSettings {
  secret: Buffer;
  ttlMs: number;
}

/**
 * The digests a node's token must grant: every image in its spec, and the top-level digests
 * (upstream and cache: an index, when the image has several platforms) of the variants that
 * requested them, so the agent's pull by tag, which resolves to the index, is granted too.
 */
export function plannedDigests(spec: NodeCacheSpec, modelImages: readonly ModelImage[] = []): string[] {
  const digests = new Set<string>();
  for (const image of spec.images ?? []) {
    digests.add(image.digest);
    for (const requester of image.requestedBy ?? []) {
      const mi = modelImages.find(
        (m) => m.metadata.namespace === requester.namespace && m.metadata.name === requester.name,
      );
      const variant = mi?.status?.variants?.find((v) => v.name === (requester.variant ?? ""));
      for (const digest of [variant?.sourceDigest, variant?.cacheDigest]) if (digest) digests.add(digest);
    }
  }
  return [...digests].sort();
}

/**
 * The token for `spec`: the current one when it still fits (same node, same digests, valid
 * under this secret, more than half its life left), a new one otherwise; none without images.
 */
export function pullTokenFor(
  spec: NodeCacheSpec,
  current: NodePullToken | undefined,
  settings: PullTokenSettings,
  nowMs: number,
  modelImages: readonly ModelImage[] = [],
): NodePullToken | undefined {
  const digests = plannedDigests(spec, modelImages);
  if (digests.length === 0) return undefined;
  if (current && stillFits(current, spec.nodeName, digests, settings, nowMs)) return current;
  const exp = Math.floor((nowMs + settings.ttlMs) / 1000);
  return {
    token: issueNodeToken(settings.secret, { node: spec.nodeName, digests, exp }),
    expiresAt: new Date(exp * 1000).toISOString(),
  };
}

/** When `token` is due for renewal (half its life before expiry). */
export function renewalDueAt(token: NodePullToken, settings: PullTokenSettings): number {
  return Date.parse(token.expiresAt) - settings.ttlMs / 2;
}

function stillFits(
  current: NodePullToken,
  node: string,
  digests: string[],
  settings: PullTokenSettings,
  nowMs: number,
): boolean {
  if (!(renewalDueAt(current, settings) > nowMs)) return false;
  try {
    const claims = verifyNodeToken(settings.secret, current.token, nowMs);
    return (
      claims.node === node &&
      claims.exp * 1000 === Date.parse(current.expiresAt) &&
      claims.digests.length === digests.length &&
      claims.digests.every((digest, i) => digest === digests[i])
    );
  } catch {
    return false; // another secret (rotated), malformed, expired: sign a new one
  }
}
