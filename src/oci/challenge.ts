/**
 * Registry authentication: WWW-Authenticate challenges (Bearer token flow and Basic), token
 * fetches from the realm, and a token cache per (registry, scope set, credentials) until
 * expiry. A lookup may offer several candidate credentials for a repository; the first
 * the registry accepts is remembered per (registry, repository).
 */
import { createHash } from "node:crypto";
import type { Clock } from "../util/clock.ts";
import { StowageError } from "../util/errors.ts";
import { errorFromNetwork, errorFromResponse, serverMessage } from "./errors.ts";
import type { Transport } from "./transport.ts";

export interface Credentials {
  username?: string;
  password?: string;
  /** A refresh token from an OAuth2 login (docker config `identitytoken`). */
  identityToken?: string;
  /** A ready bearer token, sent as is. */
  registryToken?: string;
  /** Where these came from (`pull secret "ngc" (nvcr.io)`), for messages; never a secret. */
  label?: string;
}

/**
 * Credentials for a registry, optionally for one repository on it (the first repository
 * of the request's scopes; undefined for /v2/). A list is tried in order until the registry
 * accepts one; a single value (the original form) is a list of one.
 */
export type CredentialLookup = (
  registry: string,
  repository?: string,
) => Promise<Credentials | Credentials[] | undefined> | Credentials | Credentials[] | undefined;

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses `Bearer realm="x",service="y",scope="a:b:pull,push"` (several challenges allowed). */
export function parseChallenges(header: string): Challenge[] {
  const challenges: Challenge[] = [];
  const item = /[\s,]*([A-Za-z0-9!#$%&'*+.^_`|~-]+)(?:\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*)))?/y;
  let current: Challenge | undefined;
  for (;;) {
    const start = item.lastIndex;
    const match = item.exec(header);
    if (!match || item.lastIndex === start) break;
    const [, name, quoted, bare] = match;
    if (quoted === undefined && bare === undefined) {
      current = { scheme: name.toLowerCase(), params: {} };
      challenges.push(current);
    } else if (current) {
      current.params[name.toLowerCase()] = quoted !== undefined ? quoted.replace(/\\(.)/g, "$1") : bare;
    }
  }
  return challenges;
}

/**
 * One scope per resource with its actions united and sorted, resources sorted: the
 * registry may name "push,pull" where we asked "pull,push" (distribution builds it from a
 * Go map), and both must find the same cached token.
 */
export function mergeScopes(scopes: string[]): string[] {
  const actionsByResource = new Map<string, Set<string>>();
  for (const scope of scopes) {
    const last = scope.lastIndexOf(":");
    if (!scope || last <= 0) continue;
    const resource = scope.slice(0, last);
    const actions = actionsByResource.get(resource) ?? new Set<string>();
    for (const action of scope.slice(last + 1).split(",")) if (action) actions.add(action);
    actionsByResource.set(resource, actions);
  }
  return [...actionsByResource.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([resource, actions]) => `${resource}:${[...actions].sort().join(",")}`);
}

/** The repository of the first `repository:<name>:<actions>` scope, if any. */
export function repositoryOfScopes(scopes: string[]): string | undefined {
  const first = scopes[0];
  if (!first?.startsWith("repository:")) return undefined;
  const last = first.lastIndexOf(":");
  return last > "repository:".length ? first.slice("repository:".length, last) : undefined;
}

/** True when the credentials carry nothing to authenticate with (anonymous). */
export function isAnonymous(credentials: Credentials | undefined): boolean {
  return !credentials?.username && !credentials?.identityToken && !credentials?.registryToken;
}

/** A short digest of the secret parts, so tokens of different credentials never mix. */
function fingerprint(credentials: Credentials | undefined): string {
  if (isAnonymous(credentials)) return "anonymous";
  const { username, password, identityToken, registryToken } = credentials ?? {};
  return createHash("sha256")
    .update(JSON.stringify([username, password, identityToken, registryToken]))
    .digest("hex")
    .slice(0, 16);
}

export function pullScope(repository: string): string {
  return `repository:${repository}:pull`;
}

export function pushScope(repository: string): string {
  return `repository:${repository}:pull,push`;
}

interface CachedToken {
  token: string;
  expiresAt: number;
}

interface TokenResponse {
  token?: string;
  access_token?: string;
  expires_in?: number;
  issued_at?: string;
}

const DEFAULT_TOKEN_SECONDS = 60;

export class Authenticator {
  private readonly transport: Transport;
  private readonly lookup?: CredentialLookup;
  private readonly clock: Clock;
  private readonly challenges = new Map<string, Challenge>();
  /** Index of the candidate the registry last accepted, per "registry|repository". */
  private readonly accepted = new Map<string, number>();
  private readonly tokens = new Map<string, CachedToken>();
  private readonly inflight = new Map<string, Promise<string>>();

  constructor(options: { transport: Transport; credentials?: CredentialLookup; clock: Clock }) {
    this.transport = options.transport;
    this.lookup = options.credentials;
    this.clock = options.clock;
  }

  /**
   * The candidate credentials for a repository, in the order to try them; at least one
   * (anonymous when the lookup has none). Asked afresh each time: lookups that hold
   * short-lived credentials (ECR) cache and renew them themselves.
   */
  async candidates(registry: string, repository?: string): Promise<Credentials[]> {
    const found = await this.lookup?.(registry, repository);
    const list = (Array.isArray(found) ? found : [found]).filter(
      (candidate): candidate is Credentials => candidate !== undefined,
    );
    return list.length > 0 ? list : [{}];
  }

  /** The first candidate to use: the one accepted last time, else the first. */
  async credentialsFor(registry: string, repository?: string): Promise<Credentials | undefined> {
    const list = await this.candidates(registry, repository);
    const credentials = list[this.acceptedIndex(registry, repository, list.length)];
    return isAnonymous(credentials) ? undefined : credentials;
  }

  /** Candidate indexes to try after a challenge: the accepted one first, then the others in order. */
  candidateOrder(registry: string, repository: string | undefined, count: number): number[] {
    const first = this.acceptedIndex(registry, repository, count);
    return [first, ...Array.from({ length: count }, (_, i) => i).filter((i) => i !== first)];
  }

  /** Remember the candidate the registry accepted for this repository. */
  accept(registry: string, repository: string | undefined, index: number): void {
    this.accepted.set(`${registry}|${repository ?? ""}`, index);
  }

  private acceptedIndex(registry: string, repository: string | undefined, count: number): number {
    const index = this.accepted.get(`${registry}|${repository ?? ""}`) ?? 0;
    return index < count ? index : 0;
  }

  /** Has this registry asked for authentication yet? */
  knowsChallenge(registry: string): boolean {
    return this.challenges.has(registry);
  }

  /**
   * The Authorization header for a request needing `scopes`, once the registry's challenge
   * is known; undefined before the first 401 (anonymous registries never send one).
   */
  async authorization(registry: string, scopes: string[], signal?: AbortSignal): Promise<string | undefined> {
    if (!this.challenges.has(registry)) return undefined;
    const repository = repositoryOfScopes(scopes);
    const list = await this.candidates(registry, repository);
    const credentials = list[this.acceptedIndex(registry, repository, list.length)];
    return this.authorizationWith(registry, scopes, credentials, signal);
  }

  /**
   * The Authorization header these credentials give under the known challenge: Basic, a
   * ready bearer token, or a token fetched from the realm (cached). Undefined when they
   * cannot answer it (Basic without a username). A realm refusing them is AuthFailed.
   */
  async authorizationWith(
    registry: string,
    scopes: string[],
    credentials: Credentials | undefined,
    signal?: AbortSignal,
  ): Promise<string | undefined> {
    const challenge = this.challenges.get(registry);
    if (!challenge) return undefined;
    if (challenge.scheme === "basic") {
      if (!credentials?.username) return undefined;
      const basic = Buffer.from(`${credentials.username}:${credentials.password ?? ""}`).toString("base64");
      return `Basic ${basic}`;
    }
    if (credentials?.registryToken) return `Bearer ${credentials.registryToken}`;
    const scopeSet = mergeScopes(scopes);
    const key = `${registry}|${scopeSet.join(" ")}|${fingerprint(credentials)}`;
    const cached = this.tokens.get(key);
    if (cached && cached.expiresAt > this.clock.now()) return `Bearer ${cached.token}`;
    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.fetchToken(registry, challenge, scopeSet, credentials, signal).then(
        (fetched) => {
          this.tokens.set(key, fetched);
          this.inflight.delete(key);
          return fetched.token;
        },
        (err: unknown) => {
          this.inflight.delete(key);
          throw err;
        },
      );
      this.inflight.set(key, pending);
    }
    return `Bearer ${await pending}`;
  }

  /**
   * Record a 401's challenge; returns the scopes to ask for next (ours plus any the
   * registry named). Drops the cached tokens for those scopes: they were not good enough.
   */
  onChallenge(registry: string, header: string | undefined, scopes: string[]): string[] {
    const challenges = header ? parseChallenges(header) : [];
    const challenge =
      challenges.find((candidate) => candidate.scheme === "bearer") ??
      challenges.find((candidate) => candidate.scheme === "basic");
    if (!challenge) {
      throw new StowageError(
        "AuthFailed",
        `authentication to ${registry} failed: unsupported challenge "${header ?? "(none)"}"`,
      );
    }
    this.challenges.set(registry, challenge);
    const prefix = `${registry}|${mergeScopes(scopes).join(" ")}|`;
    for (const key of this.tokens.keys()) if (key.startsWith(prefix)) this.tokens.delete(key);
    return mergeScopes([...scopes, ...(challenge.params.scope?.split(" ") ?? [])]);
  }

  private async fetchToken(
    registry: string,
    challenge: Challenge,
    scopes: string[],
    credentials: Credentials | undefined,
    signal: AbortSignal | undefined,
  ): Promise<CachedToken> {
    const realm = challenge.params.realm;
    if (!realm) {
      throw new StowageError(
        "AuthFailed",
        `authentication to ${registry} failed: Bearer challenge without a realm`,
      );
    }
    const service = challenge.params.service;
    let response: Awaited<ReturnType<Transport["send"]>>;
    try {
      if (credentials?.identityToken) {
        const form = new URLSearchParams({
          grant_type: "refresh_token",
          refresh_token: credentials.identityToken,
          client_id: "stowage",
        });
        if (service) form.set("service", service);
        if (scopes.length > 0) form.set("scope", scopes.join(" "));
        response = await this.transport.send({
          method: "POST",
          url: realm,
          headers: { "content-type": "application/x-www-form-urlencoded" },
          body: form.toString(),
          signal,
        });
      } else {
        const url = new URL(realm);
        if (service) url.searchParams.set("service", service);
        for (const scope of scopes) url.searchParams.append("scope", scope);
        const headers: Record<string, string> = {};
        if (credentials?.username) {
          const basic = Buffer.from(`${credentials.username}:${credentials.password ?? ""}`).toString(
            "base64",
          );
          headers.authorization = `Basic ${basic}`;
        }
        response = await this.transport.send({ method: "GET", url: url.toString(), headers, signal });
      }
    } catch (err) {
      throw errorFromNetwork(err, registry, "a token");
    }
    const text = await response.body.text();
    if (response.statusCode !== 200) {
      if (response.statusCode === 401 || response.statusCode === 403) {
        throw new StowageError(
          "AuthFailed",
          `authentication to ${registry} failed: ${serverMessage(text, response.statusCode)}`,
          { status: response.statusCode },
        );
      }
      throw errorFromResponse(response.statusCode, text, {
        host: registry,
        subject: `a token from ${new URL(realm).host}`,
      });
    }
    let body: TokenResponse;
    try {
      body = JSON.parse(text) as TokenResponse;
    } catch (cause) {
      throw new StowageError(
        "AuthFailed",
        `authentication to ${registry} failed: token response is not JSON`,
        {
          cause,
        },
      );
    }
    const token = body.token ?? body.access_token;
    if (!token)
      throw new StowageError(
        "AuthFailed",
        `authentication to ${registry} failed: token response has no token`,
      );
    const seconds = Math.max(body.expires_in ?? DEFAULT_TOKEN_SECONDS, DEFAULT_TOKEN_SECONDS);
    // Renew a little early so a token does not expire between check and use.
    return { token, expiresAt: this.clock.now() + seconds * 1000 - Math.min(10_000, seconds * 100) };
  }
}
