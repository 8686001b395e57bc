/**
 * Registry authentication: WWW-Authenticate challenges (Bearer token flow and Basic), token
 * fetches from the realm, and a token cache per (registry, scope set) until expiry.
 */
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
}

export type CredentialLookup = (
  registry: string,
) => Promise<Credentials | undefined> | Credentials | undefined;

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
  private readonly credentials = new Map<string, Promise<Credentials | undefined>>();
  private readonly tokens = new Map<string, CachedToken>();
  private readonly inflight = new Map<string, Promise<string>>();

  constructor(options: { transport: Transport; credentials?: CredentialLookup; clock: Clock }) {
    this.transport = options.transport;
    this.lookup = options.credentials;
    this.clock = options.clock;
  }

  credentialsFor(registry: string): Promise<Credentials | undefined> {
    let found = this.credentials.get(registry);
    if (!found) {
      found = Promise.resolve(this.lookup?.(registry));
      this.credentials.set(registry, found);
    }
    return found;
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
    const challenge = this.challenges.get(registry);
    if (!challenge) return undefined;
    const credentials = await this.credentialsFor(registry);
    if (challenge.scheme === "basic") {
      if (!credentials?.username) return undefined;
      const basic = Buffer.from(`${credentials.username}:${credentials.password ?? ""}`).toString("base64");
      return `Basic ${basic}`;
    }
    if (credentials?.registryToken) return `Bearer ${credentials.registryToken}`;
    const scopeSet = mergeScopes(scopes);
    const key = `${registry}|${scopeSet.join(" ")}`;
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
   * registry named). Drops the cached token for those scopes: it was not good enough.
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
    this.tokens.delete(`${registry}|${mergeScopes(scopes).join(" ")}`);
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
