/**
 * Private stays private: the front serves an object only to a caller the upstream would
 * serve it to. Anonymous callers get what the upstream gives anonymous callers; a caller
 * with Basic credentials gets what the upstream gives those credentials (checked by asking
 * the upstream for the very object with them, token dance included); a node with a valid
 * node token gets the digests the controller planned for it. Answers are remembered for a
 * short TTL, keyed by a hash (never the password); while the upstream cannot be reached, the
 * last answer stands, and without one the caller is refused. Anonymous "served" answers also
 * outlive a restart of the front (kept in its pull record), so a public image already in the
 * cache is still served when the front restarts during an upstream outage.
 */
import { createHash } from "node:crypto";
import { Authenticator, type Credentials, pullScope } from "../oci/challenge.ts";
import { errorFromNetwork } from "../oci/errors.ts";
import { MANIFEST_ACCEPT } from "../oci/registry.ts";
import { headerValue, type Transport } from "../oci/transport.ts";
import type { Clock } from "../util/clock.ts";
import { StowageError } from "../util/errors.ts";
import type { CacheTarget } from "./layout.ts";
import { looksLikeNodeToken, NODE_TOKEN_USER, type NodeTokenClaims, verifyNodeToken } from "./nodeToken.ts";

/**
 * What the upstream said to one set of credentials (or none) for one object. "absent": it
 * answered 404, which says nothing about access (some registries hide private repositories
 * behind a 404), so it is neither a grant nor remembered.
 */
export type UpstreamVerdict = "allowed" | "unauthenticated" | "denied" | "absent";

export type Grant = {
  via: "public" | "credentials" | "node-token";
  node?: string;
  /** The caller's credentials, when the upstream accepted them for this repository. */
  credentials?: Credentials;
};

/** The digests a manifest refers to (config, layers, child manifests); [] for a blob. */
export type ReferencesOf = (target: CacheTarget, digest: string) => Promise<string[]>;

export interface AccessOptions {
  /** The transport the front reaches upstreams with (insecure hosts, CAs). */
  transport: Transport;
  clock: Clock;
  ttlMs: number;
  nodeTokenSecret?: Buffer;
  referencesOf: ReferencesOf;
  /** Bound on remembered answers, so a stream of distinct wrong passwords cannot grow memory. */
  maxEntries?: number;
  /**
   * Told each answer the upstream gives an anonymous caller (served or not; never a 404), so
   * the front can keep the public ones across a restart (pulls.ts) and hand them back to
   * rememberPublic. Credentialed answers are never handed out.
   */
  onAnonymousVerdict?: (upstream: string, repository: string, served: boolean) => void;
}

interface Remembered {
  verdict: UpstreamVerdict;
  at: number;
}

interface Caller {
  credentials?: Credentials;
  nodeToken?: string;
}

/** The caller's credentials from an Authorization header; undefined parts when absent. */
export function callerOf(authorization: string | undefined): Caller {
  if (!authorization) return {};
  const space = authorization.indexOf(" ");
  const scheme = authorization.slice(0, space).toLowerCase();
  const value = authorization.slice(space + 1).trim();
  if (scheme === "bearer" && looksLikeNodeToken(value)) return { nodeToken: value };
  if (scheme !== "basic") {
    throw new StowageError("AuthFailed", `unsupported Authorization scheme "${scheme}"; use Basic`);
  }
  const decoded = Buffer.from(value, "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon <= 0) throw new StowageError("AuthFailed", "Basic credentials are not user:password");
  const username = decoded.slice(0, colon);
  const password = decoded.slice(colon + 1);
  if (username === NODE_TOKEN_USER) return { nodeToken: password };
  return { credentials: { username, password } };
}

/** The caller may not have the object: 401 (AuthFailed) or 403 (Denied), unlike the front's own upstream failures. */
export class AccessRefused extends StowageError {}

export class AccessControl {
  private readonly options: AccessOptions;
  private readonly remembered = new Map<string, Remembered>();
  private readonly pending = new Map<string, Promise<UpstreamVerdict>>();
  /** Per token: digests found allowed so far (the token's own, then what they reference). */
  private readonly tokenClosures = new Map<string, { allowed: Set<string>; expanded: boolean }>();

  constructor(options: AccessOptions) {
    this.options = options;
  }

  /**
   * Resolves when the caller may have `target` (`digestOfTag`: what a tag resolves to, asked
   * only for node tokens, which name digests); throws AuthFailed (401: no or wrong credentials) or Denied (403: credentials the
   * upstream refuses for this repository).
   */
  async authorize(
    authorization: string | undefined,
    target: CacheTarget,
    digestOfTag?: () => Promise<string>,
  ): Promise<Grant> {
    try {
      return await this.check(authorization, target, digestOfTag);
    } catch (err) {
      if (
        err instanceof StowageError &&
        (err.reason === "AuthFailed" || err.reason === "Denied") &&
        !err.retryable
      ) {
        throw new AccessRefused(err.reason, err.message, { status: err.reason === "AuthFailed" ? 401 : 403 });
      }
      throw err;
    }
  }

  private async check(
    authorization: string | undefined,
    target: CacheTarget,
    digestOfTag?: () => Promise<string>,
  ): Promise<Grant> {
    const caller = callerOf(authorization);
    if (caller.nodeToken !== undefined) {
      return this.authorizeNode(caller.nodeToken, target, digestOfTag);
    }
    const publicVerdict = await this.verdict(target, undefined);
    if (publicVerdict === "allowed") return { via: "public" };
    if (!caller.credentials && publicVerdict === "absent") {
      // What the upstream answers an anonymous caller, whatever the cache holds.
      throw new StowageError(
        target.kind === "blob" ? "BlobNotFound" : "ImageNotFound",
        `${target.upstream}/${target.repository} has no ${target.reference} for anonymous callers`,
      );
    }
    if (!caller.credentials) {
      throw new StowageError(
        "AuthFailed",
        `${target.upstream}/${target.repository} is not public upstream; send the credentials you pull it with`,
      );
    }
    const verdict = await this.verdict(target, caller.credentials);
    if (verdict === "allowed") return { via: "credentials", credentials: caller.credentials };
    if (verdict === "absent") {
      throw new StowageError(
        target.kind === "blob" ? "BlobNotFound" : "ImageNotFound",
        `${target.upstream}/${target.repository} has no ${target.reference} for these credentials`,
      );
    }
    if (verdict === "unauthenticated") {
      throw new StowageError("AuthFailed", `${target.upstream} does not accept these credentials`);
    }
    throw new StowageError(
      "Denied",
      `${target.upstream} refuses these credentials access to ${target.repository}`,
    );
  }

  private async authorizeNode(
    token: string,
    target: CacheTarget,
    digestOfTag: (() => Promise<string>) | undefined,
  ): Promise<Grant> {
    const secret = this.options.nodeTokenSecret;
    if (!secret) throw new StowageError("AuthFailed", "node tokens are not enabled on this cache");
    const claims = verifyNodeToken(secret, token, this.options.clock.now());
    const wanted = digestOfTag ? await digestOfTag() : target.reference;
    if (await this.tokenAllows(token, claims, target, wanted))
      return { via: "node-token", node: claims.node };
    throw new StowageError("Denied", `node token of ${claims.node} does not name ${wanted}`);
  }

  /** Is `wanted` one of the token's digests, or referenced (transitively) by one of them? */
  private async tokenAllows(
    token: string,
    claims: NodeTokenClaims,
    target: CacheTarget,
    wanted: string,
  ): Promise<boolean> {
    let closure = this.tokenClosures.get(token);
    if (!closure) {
      closure = { allowed: new Set(claims.digests), expanded: false };
      this.bounded(this.tokenClosures);
      this.tokenClosures.set(token, closure);
    }
    if (closure.allowed.has(wanted)) return true;
    if (closure.expanded) return false;
    const queue = [...claims.digests];
    const seen = new Set<string>();
    let complete = true;
    while (queue.length > 0) {
      const digest = queue.shift() as string;
      if (seen.has(digest)) continue;
      seen.add(digest);
      let references: string[];
      try {
        references = await this.options.referencesOf(target, digest);
      } catch (err) {
        // A blob named by the token has no references; anything else is tried again next time.
        if (!(err instanceof StowageError && err.reason === "ImageNotFound")) complete = false;
        continue;
      }
      for (const reference of references) {
        closure.allowed.add(reference);
        queue.push(reference);
      }
    }
    closure.expanded = complete;
    return closure.allowed.has(wanted);
  }

  private async verdict(target: CacheTarget, credentials: Credentials | undefined): Promise<UpstreamVerdict> {
    const who = credentials
      ? createHash("sha256")
          .update(JSON.stringify([credentials.username, credentials.password]))
          .digest("hex")
      : "anonymous";
    const key = `${target.upstream}|${target.repository}|${who}`;
    const now = this.options.clock.now();
    const known = this.remembered.get(key);
    if (known && now - known.at < this.options.ttlMs) return known.verdict;
    let pending = this.pending.get(key);
    if (!pending) {
      pending = probeUpstream(this.options.transport, this.options.clock, target, credentials).finally(() =>
        this.pending.delete(key),
      );
      this.pending.set(key, pending);
    }
    try {
      const verdict = await pending;
      if (verdict !== "absent") {
        this.bounded(this.remembered);
        this.remembered.set(key, { verdict, at: this.options.clock.now() });
        if (!credentials)
          this.options.onAnonymousVerdict?.(target.upstream, target.repository, verdict === "allowed");
      }
      return verdict;
    } catch (err) {
      // The upstream is away: the last answer stands (pulls keep working through an outage).
      if (known) return known.verdict;
      throw err;
    }
  }

  /**
   * An anonymous "served" answer the upstream gave at `at` (kept across a restart): like any
   * remembered answer it is asked again once older than the TTL, and stands only while the
   * upstream cannot answer. A fresher answer already here wins.
   */
  rememberPublic(upstream: string, repository: string, at: number): void {
    const key = `${upstream}|${repository}|anonymous`;
    if ((this.remembered.get(key)?.at ?? Number.NEGATIVE_INFINITY) >= at) return;
    this.bounded(this.remembered);
    this.remembered.set(key, { verdict: "allowed", at });
  }

  private bounded(map: Map<string, unknown>): void {
    const max = this.options.maxEntries ?? 10_000;
    if (map.size < max) return;
    const oldest = map.keys().next().value;
    if (oldest !== undefined) map.delete(oldest);
  }
}

/**
 * Asks the upstream for the object (HEAD) as these credentials would: anonymously first,
 * then answering its challenge (Basic, or a token for `repository:<name>:pull`). Only a 200
 * grants; a 404 is "absent" (see UpstreamVerdict). Throws UpstreamUnavailable when the
 * upstream cannot answer.
 */
export async function probeUpstream(
  transport: Transport,
  clock: Clock,
  target: CacheTarget,
  credentials: Credentials | undefined,
): Promise<UpstreamVerdict> {
  const auth = new Authenticator({ transport, credentials: () => credentials ?? {}, clock });
  const kindPath = target.kind === "manifest" ? "manifests" : "blobs";
  const url = `${transport.baseUrl(target.upstream)}/v2/${target.repository}/${kindPath}/${target.reference}`;
  const subject = `access check of ${target.upstream}/${target.repository}`;
  const head = async (authorization?: string) => {
    try {
      const response = await transport.send({
        method: "HEAD",
        url,
        headers: { accept: MANIFEST_ACCEPT, ...(authorization ? { authorization } : {}) },
        signal: AbortSignal.timeout(15_000),
      });
      await response.body.dump();
      return response;
    } catch (err) {
      throw errorFromNetwork(err, target.upstream, subject);
    }
  };
  let response = await head();
  if (response.statusCode === 401) {
    let authorization: string | undefined;
    try {
      const scopes = auth.onChallenge(target.upstream, headerValue(response.headers, "www-authenticate"), [
        pullScope(target.repository),
      ]);
      authorization = await auth.authorizationWith(target.upstream, scopes, credentials);
    } catch (err) {
      if (err instanceof StowageError && err.reason === "AuthFailed" && !err.retryable)
        return "unauthenticated";
      throw err;
    }
    if (authorization === undefined) return "unauthenticated";
    response = await head(authorization);
    // A Basic 401 means wrong credentials; a token the realm issued but the registry refuses
    // means they are real but lack this repository.
    if (response.statusCode === 401) return authorization.startsWith("Basic ") ? "unauthenticated" : "denied";
  }
  if (response.statusCode === 200) return "allowed";
  if (response.statusCode === 404) return "absent";
  if (response.statusCode === 403) return "denied";
  throw new StowageError(
    "UpstreamUnavailable",
    `${target.upstream} answered HTTP ${response.statusCode} to the ${subject}`,
    { retryable: true, status: response.statusCode },
  );
}
