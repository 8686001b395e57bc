/**
 * Peer tokens (issue 15): what lets one node's agent read a blob from another node's agent during a
 * fan-out. The controller issues one per receiving node, naming the receiver and the digests that
 * node's fanout entries assign to peers; every agent checks it before serving a byte.
 *
 * A sibling of the node token (src/cache/nodeToken.ts: same HMAC-SHA256 layout), not an extension
 * of it, because the two are checked by different parties holding different secrets. Every agent
 * must hold the fan-out secret to verify peer tokens, so a compromised node could mint peer tokens;
 * with a separate secret and prefix that opens only other nodes' copies of the declared layers
 * (which the node could pull anyway), never the cache front, whose node-token secret stays with the
 * controller and the front. (An Ed25519 signature would let agents verify without the power to
 * mint; a possible later change.)
 *
 * Format: `stwp1.<base64url(JSON payload)>.<base64url(HMAC-SHA256(secret, "stwp1." + payload))>`
 * with payload `{"receiver":"gpu-2","digests":["sha256:…"],"exp":<unix seconds>}`. It travels as
 * `Authorization: Bearer <token>`. A peer cannot tell who presents it (no mTLS): whoever holds a
 * receiver's token reads what it names, which is why it names only digests and expires.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { StowageError } from "../../util/errors.ts";

const PREFIX = "stwp1";

export interface PeerTokenClaims {
  receiver: string;
  digests: string[];
  /** Expiry, Unix seconds. */
  exp: number;
}

function mac(secret: Buffer, signingInput: string): Buffer {
  return createHmac("sha256", secret).update(signingInput).digest();
}

function checkSecret(secret: Buffer): void {
  if (secret.length < 16) {
    throw new StowageError(
      "InvalidArgument",
      `the fan-out secret must be at least 16 bytes, got ${secret.length}`,
    );
  }
}

/** Signs claims into a token (what the controller does for each receiving node). */
export function issuePeerToken(secret: Buffer, claims: PeerTokenClaims): string {
  checkSecret(secret);
  const payload = Buffer.from(JSON.stringify(claims)).toString("base64url");
  const signingInput = `${PREFIX}.${payload}`;
  return `${signingInput}.${mac(secret, signingInput).toString("base64url")}`;
}

/** The claims of a valid, unexpired token; AuthFailed saying why otherwise (never echoing the token). */
export function verifyPeerToken(secret: Buffer, token: string, nowMs: number): PeerTokenClaims {
  checkSecret(secret);
  const parts = token.split(".");
  if (parts.length !== 3 || parts[0] !== PREFIX) {
    throw new StowageError("AuthFailed", "peer token is malformed (want stwp1.<payload>.<signature>)");
  }
  const expected = mac(secret, `${parts[0]}.${parts[1]}`);
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw new StowageError(
      "AuthFailed",
      "peer token signature does not verify (wrong or rotated fan-out secret?)",
    );
  }
  let claims: PeerTokenClaims;
  try {
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
  } catch {
    throw new StowageError("AuthFailed", "peer token payload is not JSON");
  }
  if (
    typeof claims?.receiver !== "string" ||
    !Array.isArray(claims.digests) ||
    !claims.digests.every((digest) => typeof digest === "string") ||
    typeof claims.exp !== "number"
  ) {
    throw new StowageError("AuthFailed", "peer token payload lacks receiver, digests or exp");
  }
  if (claims.exp * 1000 <= nowMs) {
    throw new StowageError(
      "AuthFailed",
      `peer token of ${claims.receiver} expired at ${new Date(claims.exp * 1000).toISOString()}`,
    );
  }
  return claims;
}
