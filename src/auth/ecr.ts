/**
 * Amazon ECR: registry passwords from GetAuthorizationToken (AWS's default credential chain:
 * IRSA or pod identity in a cluster, env credentials in tests), cached until shortly before
 * they expire and shared by concurrent callers; and repositories created on demand when ECR
 * is the cache, since ECR refuses pushes to repositories that do not exist.
 */
import type { ECRClient, ECRClientConfig } from "@aws-sdk/client-ecr";
import type { Credentials } from "../oci/challenge.ts";
import { type Clock, systemClock } from "../util/clock.ts";
import { type Reason, StowageError } from "../util/errors.ts";
import { type Logger, silentLogger } from "../util/log.ts";

/** Where an ECR registry lives. */
export interface EcrRegistry {
  /** The AWS account id (the registry id); undefined lets ECR use the caller's own. */
  registryId?: string;
  region: string;
  fips?: boolean;
}

export interface EcrOptions {
  /** An API endpoint override (a VPC endpoint; the fake in tests). Default: the SDK's for the region. */
  endpoint?: string;
  /**
   * Which registries are ECR, and where. Default: `parseEcrHost`. Tests map their
   * 127.0.0.1 registry here, since it cannot be called `<account>.dkr.ecr.<region>.amazonaws.com`.
   */
  resolveRegistry?: (registry: string) => EcrRegistry | undefined;
  /** AWS credentials; default the SDK's default chain. */
  awsCredentials?: ECRClientConfig["credentials"];
  /** Renew a token this long before it expires. Default 5 minutes. */
  refreshBeforeExpiryMs?: number;
  /** SDK attempts per call (it retries throttling and 5xx itself). Default 3. */
  maxAttempts?: number;
  clock?: Clock;
  logger?: Logger;
}

const ECR_HOST = /^(\d{12})\.dkr\.ecr(-fips)?\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$/;

/** `123456789012.dkr.ecr.eu-west-1.amazonaws.com` → { registryId, region: eu-west-1 }; else undefined. */
export function parseEcrHost(registry: string): EcrRegistry | undefined {
  const match = ECR_HOST.exec(registry.toLowerCase());
  if (!match) return undefined;
  return { registryId: match[1], region: match[3], fips: match[2] !== undefined };
}

interface CachedToken {
  credentials: Credentials;
  renewAt: number;
  expiresAt: number;
}

const DEFAULT_REFRESH_BEFORE_MS = 5 * 60_000;

export class EcrAuth {
  readonly #options: EcrOptions;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #clients = new Map<string, Promise<ECRClient>>();
  readonly #tokens = new Map<string, CachedToken>();
  readonly #tokenRequests = new Map<string, Promise<CachedToken>>();
  readonly #repositories = new Map<string, Promise<void>>();

  constructor(options: EcrOptions = {}) {
    this.#options = options;
    this.#clock = options.clock ?? systemClock;
    this.#logger = options.logger ?? silentLogger();
  }

  registryOf(registry: string): EcrRegistry | undefined {
    return (this.#options.resolveRegistry ?? parseEcrHost)(registry);
  }

  isEcr(registry: string): boolean {
    return this.registryOf(registry) !== undefined;
  }

  /**
   * `{ username: "AWS", password }` for an ECR registry (undefined for others). One token
   * serves every registry the principal may use in a region, so it is cached per region.
   */
  async credentials(registry: string): Promise<Credentials | undefined> {
    const ecr = this.registryOf(registry);
    if (!ecr) return undefined;
    const key = clientKey(ecr);
    const cached = this.#tokens.get(key);
    if (cached && cached.renewAt > this.#clock.now()) return { ...cached.credentials };
    let pending = this.#tokenRequests.get(key);
    if (!pending) {
      pending = this.#fetchToken(registry, ecr).finally(() => this.#tokenRequests.delete(key));
      this.#tokenRequests.set(key, pending);
    }
    let token: CachedToken;
    try {
      token = await pending;
    } catch (err) {
      // A blip in the ECR API need not stop pulls while the old token still works.
      if (cached && cached.expiresAt > this.#clock.now()) {
        this.#logger.warn(
          { registry, err: (err as Error).message },
          "ECR token renewal failed; using the current one",
        );
        return { ...cached.credentials };
      }
      throw err;
    }
    this.#tokens.set(key, token);
    return { ...token.credentials };
  }

  /**
   * Creates `repository` in an ECR registry unless it exists (an existing one is success);
   * a no-op for other registries. Remembered once done, so a push per blob costs nothing.
   */
  async ensureRepository(registry: string, repository: string): Promise<void> {
    const ecr = this.registryOf(registry);
    if (!ecr) return;
    const key = `${registry}/${repository}`;
    let done = this.#repositories.get(key);
    if (!done) {
      done = this.#createRepository(registry, repository, ecr);
      this.#repositories.set(key, done);
      // A failure is not remembered: the next reconcile tries again.
      done.catch(() => this.#repositories.delete(key));
    }
    return done;
  }

  /** Releases the SDK clients' connections. */
  async close(): Promise<void> {
    const clients = await Promise.allSettled(this.#clients.values());
    for (const client of clients) if (client.status === "fulfilled") client.value.destroy();
    this.#clients.clear();
  }

  #client(ecr: EcrRegistry): Promise<ECRClient> {
    const key = clientKey(ecr);
    let client = this.#clients.get(key);
    if (!client) {
      // Imported on first use: the SDK costs memory that clusters without ECR need not pay.
      client = import("@aws-sdk/client-ecr").then(
        ({ ECRClient }) =>
          new ECRClient({
            region: ecr.region,
            endpoint: this.#options.endpoint,
            useFipsEndpoint: ecr.fips ?? false,
            credentials: this.#options.awsCredentials,
            maxAttempts: this.#options.maxAttempts ?? 3,
          }),
      );
      this.#clients.set(key, client);
    }
    return client;
  }

  async #fetchToken(registry: string, ecr: EcrRegistry): Promise<CachedToken> {
    const { GetAuthorizationTokenCommand } = await import("@aws-sdk/client-ecr");
    const client = await this.#client(ecr);
    let data: { authorizationToken?: string; expiresAt?: Date } | undefined;
    try {
      const output = await client.send(new GetAuthorizationTokenCommand({}));
      data = output.authorizationData?.[0];
    } catch (err) {
      throw ecrError(err, "GetAuthorizationToken", registry, "AuthFailed");
    }
    const decoded = data?.authorizationToken
      ? Buffer.from(data.authorizationToken, "base64").toString("utf8")
      : "";
    const colon = decoded.indexOf(":");
    if (colon <= 0) {
      throw new StowageError(
        "AuthFailed",
        `ECR GetAuthorizationToken for ${registry} returned no usable token (expected base64 of "AWS:<password>")`,
      );
    }
    const now = this.#clock.now();
    const expiresAt = data?.expiresAt?.getTime() ?? now + 60 * 60_000;
    const early = Math.min(
      this.#options.refreshBeforeExpiryMs ?? DEFAULT_REFRESH_BEFORE_MS,
      (expiresAt - now) / 2,
    );
    this.#logger.info(
      { registry, region: ecr.region, expiresAt: new Date(expiresAt).toISOString() },
      "fetched ECR authorization token",
    );
    return {
      credentials: {
        username: decoded.slice(0, colon),
        password: decoded.slice(colon + 1),
        label: `ECR token (${ecr.region})`,
      },
      renewAt: expiresAt - Math.max(early, 0),
      expiresAt,
    };
  }

  async #createRepository(registry: string, repository: string, ecr: EcrRegistry): Promise<void> {
    const { CreateRepositoryCommand } = await import("@aws-sdk/client-ecr");
    const client = await this.#client(ecr);
    try {
      await client.send(
        new CreateRepositoryCommand({ repositoryName: repository, registryId: ecr.registryId }),
      );
      this.#logger.info({ registry, repository }, "created ECR repository");
    } catch (err) {
      if ((err as { name?: string }).name === "RepositoryAlreadyExistsException") return;
      throw ecrError(err, `CreateRepository ${repository}`, registry, "Denied");
    }
  }
}

function clientKey(ecr: EcrRegistry): string {
  return `${ecr.region}|${ecr.fips ? "fips" : ""}`;
}

/** An SDK failure as a StowageError: 5xx and network trouble retryable, refusals not. */
function ecrError(err: unknown, what: string, registry: string, refusal: Reason): StowageError {
  const name = (err as { name?: string }).name ?? "Error";
  const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  const message = `ECR ${what} for ${registry} failed: ${name}: ${(err as Error).message ?? String(err)}`;
  if (name === "ThrottlingException" || status === 429) {
    return new StowageError("RateLimited", message, { cause: err, retryable: true, status });
  }
  if (name === "LimitExceededException")
    return new StowageError("QuotaExceeded", message, { cause: err, status });
  if (status === undefined || status >= 500) {
    // No status: the call never got an answer (network), or no AWS credentials were found.
    const noCredentials = name === "CredentialsProviderError";
    return new StowageError(noCredentials ? "AuthFailed" : "UpstreamUnavailable", message, {
      cause: err,
      retryable: !noCredentials,
      status,
    });
  }
  return new StowageError(refusal, message, { cause: err, status });
}
