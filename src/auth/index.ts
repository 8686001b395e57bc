/**
 * Credentials for everything the controller talks to, composed in the order the kubelet
 * would use them for an upstream image: the ModelImage's pull secrets (most specific entry
 * first), then an ECR token when the host is ECR, then anonymous. The cache registry gets
 * the controller's own credentials (or an ECR token) instead.
 */
import type { KubeClient } from "../kube/client.ts";
import type { CredentialLookup, Credentials } from "../oci/challenge.ts";
import type { Clock } from "../util/clock.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import { EcrAuth, type EcrOptions } from "./ecr.ts";
import { type PullSecretRef, readPullSecrets } from "./pullSecrets.ts";

export type { EcrOptions, EcrRegistry } from "./ecr.ts";
export { parseEcrHost } from "./ecr.ts";
export type { PullSecretRef } from "./pullSecrets.ts";

export interface CredentialProvider {
  /**
   * A lookup for one ModelImage: reads its pull secrets now (from `namespace` only; a
   * missing or malformed one is AuthConfigInvalid naming it) and answers for upstream
   * registries with every matching candidate in order, and for the cache registry with
   * the cache's credentials. Pass it as `RegistryClient`'s `credentials`.
   */
  forModelImage(
    namespace: string,
    pullSecrets: PullSecretRef[],
    options?: { signal?: AbortSignal },
  ): Promise<CredentialLookup>;
  /** A lookup for the cache registry alone (prewarm, garbage collection). */
  forCache(): CredentialLookup;
  /** Call before pushing to `repository`: creates it when `registry` is ECR, else does nothing. */
  ensureRepository(registry: string, repository: string): Promise<void>;
  /** Releases the ECR clients' connections. */
  close(): Promise<void>;
}

export interface CredentialProviderOptions {
  kube: KubeClient;
  /** ECR settings; ECR hosts get tokens from the default AWS chain unless this is `false`. */
  ecr?: EcrOptions | false;
  /** The cache registry's host ("cache.stowage.svc:5000"), answered with `cacheCredentials`. */
  cacheRegistry?: string;
  cacheCredentials?: Credentials;
  logger?: Logger;
  clock?: Clock;
}

const anonymous: Credentials = {};

export function createCredentialProvider(options: CredentialProviderOptions): CredentialProvider {
  const logger = options.logger ?? silentLogger();
  const ecr =
    options.ecr === false ? undefined : new EcrAuth({ clock: options.clock, logger, ...options.ecr });

  const cacheLookup: CredentialLookup = async (registry) => {
    const candidates: Credentials[] = [];
    if (options.cacheCredentials)
      candidates.push({ label: "cache credentials", ...options.cacheCredentials });
    const token = await ecr?.credentials(registry);
    if (token) candidates.push(token);
    candidates.push(anonymous);
    return candidates;
  };

  return {
    async forModelImage(namespace, pullSecrets, callOptions = {}) {
      const keyring = await readPullSecrets(options.kube, namespace, pullSecrets, callOptions);
      logger.debug(
        { namespace, pullSecrets: pullSecrets.map((ref) => ref.name), entries: keyring.size },
        "read pull secrets",
      );
      return async (registry, repository) => {
        if (options.cacheRegistry && registry === options.cacheRegistry) return cacheLookup(registry);
        const candidates = keyring.lookup(registry, repository).map((match) => match.credentials);
        if (ecr?.isEcr(registry)) {
          try {
            const token = await ecr.credentials(registry);
            if (token) candidates.push(token);
          } catch (err) {
            // With a pull secret to try, a failing ECR call should not hide it.
            if (candidates.length === 0) throw err;
            logger.warn({ registry, err: (err as Error).message }, "no ECR token; trying pull secrets only");
          }
        }
        candidates.push(anonymous);
        return candidates;
      };
    },
    forCache() {
      return cacheLookup;
    },
    async ensureRepository(registry, repository) {
      await ecr?.ensureRepository(registry, repository);
    },
    async close() {
      await ecr?.close();
    },
  };
}
