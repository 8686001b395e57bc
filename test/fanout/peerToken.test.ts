import { describe, expect, it } from "vitest";
import { issuePeerToken, verifyPeerToken } from "../../src/agent/peer/token.ts";
import { issueNodeToken } from "../../src/cache/nodeToken.ts";

const secret = Buffer.alloc(32, 7);
const D1 = `sha256:${"1".repeat(64)}`;
const now = Date.parse("2026-12-05T00:00:00Z");
const exp = now / 1000 + 3600;

describe("peer tokens", () => {
  it("round-trips the receiver, digests and expiry", () => {
    const token = issuePeerToken(secret, { receiver: "b", digests: [D1], exp });
    expect(token.startsWith("stwp1.")).toBe(true);
    expect(verifyPeerToken(secret, token, now)).toEqual({ receiver: "b", digests: [D1], exp });
  });

  it("refuses another secret, an expired token, a tampered payload and a node token, without echoing the token", () => {
    const token = issuePeerToken(secret, { receiver: "b", digests: [D1], exp });
    expect(() => verifyPeerToken(Buffer.alloc(32, 8), token, now)).toThrow(/signature does not verify/);
    expect(() => verifyPeerToken(secret, token, exp * 1000)).toThrow(/expired at/);
    const [prefix, , signature] = token.split(".");
    const forged = `${prefix}.${Buffer.from(JSON.stringify({ receiver: "c", digests: [D1], exp })).toString("base64url")}.${signature}`;
    expect(() => verifyPeerToken(secret, forged, now)).toThrow(/signature does not verify/);
    const nodeToken = issueNodeToken(secret, { node: "b", digests: [D1], exp });
    let message = "";
    try {
      verifyPeerToken(secret, nodeToken, now);
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/malformed/);
    expect(message).not.toContain(nodeToken.split(".")[1]);
  });

  it("refuses a secret shorter than 16 bytes", () => {
    expect(() => issuePeerToken(Buffer.alloc(8), { receiver: "b", digests: [], exp })).toThrow(
      /at least 16 bytes/,
    );
  });
});
