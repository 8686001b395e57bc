/**
 * One RegistryClient (and so one Copier, with its blob-location memory and token cache) for
 * every ModelImage, although each ModelImage brings its own pull secrets. The client's
 * credential lookup routes by registry: the cache registry gets the controller's cache
 * credentials; any other registry gets the lookup of the ModelImage whose work is running,
 * carried in AsyncLocalStorage across the awaits of that work. A Copier run (its queues) is
 * created per copy call, so tasks of one run never execute in another ModelImage's context.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { MemoryBlobIndex, rebuildBlobIndex } from "../../oci/blobIndex.ts";
import { Copier } from "../../oci/copy.ts";
import { type CredentialLookup, RegistryClient, type RegistryClientOptions } from "../../oci/registry.ts";
import type { Logger } from "../../util/log.ts";
import type { ControllerConfig } from "../config.ts";
import { ThroughFrontClient, throughFrontCredentials } from "./throughFront.ts";

export interface Registries {
  client: RegistryClient;
  copier: Copier;
  cacheRegistry: string;
  /** Settles once the blob index has been read back from the cache registry (or could not be). */
  blobIndexReady: Promise<void>;
  /** Run `work` with `lookup` answering for every upstream registry it talks to. */
  withUpstreamCredentials<T>(lookup: CredentialLookup, work: () => Promise<T>): Promise<T>;
}

export function createRegistries(deps: {
  config: ControllerConfig;
  cacheCredentials: CredentialLookup;
  logger: Logger;
  options?: Partial<RegistryClientOptions>;
  /**
   * The cache front (`--prewarm-through-cache`): the mirror then reads upstream blobs through
   * it, so nodes pulling through the front and the mirror share one upstream read.
   */
  throughCache?: string;
}): Registries {
  const upstream = new AsyncLocalStorage<CredentialLookup>();
  const cacheRegistry = deps.config.cache.registry;
  const lookup: CredentialLookup = (registry, repository) => {
    if (registry === cacheRegistry) return deps.cacheCredentials(registry, repository);
    return upstream.getStore()?.(registry, repository);
  };
  const caPem = [...(deps.config.caPem ?? []), ...(deps.config.cache.caPem ?? [])];
  const clientOptions: RegistryClientOptions = {
    credentials: lookup,
    insecureHosts: [
      ...deps.config.insecureRegistries,
      ...(deps.config.cache.insecure ? [cacheRegistry] : []),
    ],
    caPem: caPem.length > 0 ? caPem : undefined,
    userAgent: "stowage-controller",
    logger: deps.logger,
    // The cache's failures are CacheUnavailable, and it is never reached through a proxy.
    cacheRegistries: [cacheRegistry],
    ...deps.options,
    // A Retry-After past 30 s is reported ("retrying in Ns", the wait on the error for the
    // requeue) instead of slept on a worker (src/oci/retry.ts).
    retry: { longWaits: "report", ...deps.options?.retry },
  };
  const client = deps.throughCache
    ? new ThroughFrontClient({
        ...clientOptions,
        credentials: throughFrontCredentials(deps.throughCache, lookup),
        frontUrl: deps.throughCache,
        cacheRegistry,
      })
    : new RegistryClient(clientOptions);
  // Where blobs live in the cache registry, read back from the registry itself at start (so
  // the first image after a restart mounts a base an earlier run pushed) and kept current by
  // the Copier as it pushes. Only a hint: syncs do not wait for it.
  const blobIndex = new MemoryBlobIndex(200_000);
  const copier = new Copier({ client, logger: deps.logger, blobIndex });
  const blobIndexReady = rebuildBlobIndex(client, cacheRegistry, blobIndex, { logger: deps.logger }).then(
    (rebuilt) =>
      deps.logger.info({ registry: cacheRegistry, ...rebuilt }, "blob index rebuilt from the cache registry"),
    (err: unknown) =>
      deps.logger.warn(
        { registry: cacheRegistry, err: (err as Error).message },
        "blob index not rebuilt; shared blobs upload once more",
      ),
  );
  return {
    client,
    copier,
    cacheRegistry,
    blobIndexReady,
    withUpstreamCredentials: (credentials, work) => upstream.run(credentials, work),
  };
}
