/**
 * Node tokens: what lets a node's agent pre-warm a private image through the front without
 * holding the upstream's credentials. The controller issues one per node, naming the node
 * and the digests planned for it (image manifests or indexes; what they reference follows),
 * signed with HMAC-SHA256 under a secret it shares with the front. The front checks the
 * signature and expiry locally: no upstream round trip, so pre-warm works while the
 * upstream is down.
 *
 * Format: `stwn1.<base64url(JSON payload)>.<base64url(HMAC-SHA256(secret, "stwn1." + payload))>`
 * with payload `{"node":"gpu-1","digests":["sha256:…"],"exp":<unix seconds>}`. It travels as
 * the password of Basic auth with the user name `stowage-node` (what containerd sends a
 * mirror when CRI PullImage carries those credentials), or as `Authorization: Bearer <token>`.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { StowageError } from "../util/errors.ts";

export const NODE_TOKEN_USER = "stowage-node";
const PREFIX = "stwn1";

export interface NodeTokenClaims {
  node: string;
  digests: string[];
  /** Expiry, Unix seconds. */
  exp: number;
}

function mac(secret: Buffer, signingInput: string): Buffer {
  return createHmac("sha256", secret).update(signingInput).digest();
}

/** Signs claims into a token (what the controller does for each node). */
export function issueNodeToken(secret: Buffer, claims: NodeTokenClaims): string {
  const payload = Buffer.from(JSON.stringify(claims)).toString("base64url");
  const signingInput = `${PREFIX}.${payload}`;
  return `${signingInput}.${mac(secret, signingInput).toString("base64url")}`;
}

export function looksLikeNodeToken(value: string): boolean {
  return value.startsWith(`${PREFIX}.`);
}

/** The claims of a valid, unexpired token; AuthFailed saying why otherwise (never echoing the token). */
export function verifyNodeToken(secret: Buffer, token: string, nowMs: number): NodeTokenClaims {
  const parts = token.split(".");
  if (parts.length !== 3 || parts[0] !== PREFIX) {
    throw new StowageError("AuthFailed", "node token is malformed");
  }
  const expected = mac(secret, `${parts[0]}.${parts[1]}`);
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw new StowageError("AuthFailed", "node token signature does not verify (wrong or rotated secret?)");
  }
  let claims: NodeTokenClaims;
  try {
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
  } catch {
    throw new StowageError("AuthFailed", "node token payload is not JSON");
  }
  if (
    typeof claims?.node !== "string" ||
    !Array.isArray(claims.digests) ||
    !claims.digests.every((digest) => typeof digest === "string") ||
    typeof claims.exp !== "number"
  ) {
    throw new StowageError("AuthFailed", "node token payload lacks node, digests or exp");
  }
  if (claims.exp * 1000 <= nowMs) {
    throw new StowageError(
      "AuthFailed",
      `node token of ${claims.node} expired at ${new Date(claims.exp * 1000).toISOString()}`,
    );
  }
  return claims;
}
