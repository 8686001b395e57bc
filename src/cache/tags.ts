/**
 * Tags are the one mutable thing a pull-through cache serves. A tag resolves upstream (HEAD)
 * and the answer is kept for a short TTL; while the upstream cannot be reached, the last
 * digest it gave is served (then the digest storage holds under that tag, which is where the
 * controller keeps declared images), and the stale-tag metric counts it. Tags are kept in
 * memory only, never written into storage: the controller owns the tags there (it may push a
 * platform-filtered index under one, with another digest).
 */
import type { RegistryClient } from "../oci/registry.ts";
import type { Clock } from "../util/clock.ts";
import { StowageError } from "../util/errors.ts";
import type { Logger } from "../util/log.ts";
import type { CacheTarget } from "./layout.ts";
import type { Storage } from "./storage.ts";

export interface ResolvedTag {
  digest: string;
  /** True when the upstream could not be asked and an older answer is served. */
  stale: boolean;
}

interface KnownTag {
  digest: string;
  at: number;
}

export interface TagResolverOptions {
  upstream: RegistryClient;
  storage: Storage;
  clock: Clock;
  ttlMs: number;
  logger: Logger;
  onStale?: (target: CacheTarget) => void;
  /** Bound on remembered tags (oldest forgotten first). Default 50 000. */
  maxEntries?: number;
}

/** Failures that mean "the upstream cannot say now", as opposed to an answer (404, 401, 403). */
function upstreamAway(err: unknown): boolean {
  if (!(err instanceof StowageError)) return true;
  return err.retryable || ["UpstreamUnavailable", "RateLimited", "Timeout"].includes(err.reason);
}

export class TagResolver {
  private readonly options: TagResolverOptions;
  private readonly known = new Map<string, KnownTag>();
  private readonly pending = new Map<string, Promise<ResolvedTag>>();

  constructor(options: TagResolverOptions) {
    this.options = options;
  }

  async resolve(target: CacheTarget): Promise<ResolvedTag> {
    const key = `${target.upstream}/${target.repository}:${target.reference}`;
    const known = this.known.get(key);
    if (known && this.options.clock.now() - known.at < this.options.ttlMs) {
      return { digest: known.digest, stale: false };
    }
    let pending = this.pending.get(key);
    if (!pending) {
      pending = this.ask(key, target, known).finally(() => this.pending.delete(key));
      this.pending.set(key, pending);
    }
    return pending;
  }

  private async ask(key: string, target: CacheTarget, known: KnownTag | undefined): Promise<ResolvedTag> {
    try {
      const head = await this.options.upstream.headManifest(
        { registry: target.upstream, repository: target.repository },
        target.reference,
      );
      if (!head) {
        this.known.delete(key);
        throw new StowageError(
          "ImageNotFound",
          `${target.upstream}/${target.repository}:${target.reference} not found upstream`,
        );
      }
      this.known.delete(key);
      if (this.known.size >= (this.options.maxEntries ?? 50_000)) {
        const oldest = this.known.keys().next().value;
        if (oldest !== undefined) this.known.delete(oldest);
      }
      this.known.set(key, { digest: head.digest, at: this.options.clock.now() });
      return { digest: head.digest, stale: false };
    } catch (err) {
      if (!upstreamAway(err)) throw err;
      const fallback = known?.digest ?? (await this.storedDigest(target));
      if (!fallback) throw err;
      this.options.logger.warn(
        { upstream: target.upstream, repository: target.repository, tag: target.reference, digest: fallback },
        "upstream unreachable; serving the last known digest of the tag",
      );
      this.options.onStale?.(target);
      return { digest: fallback, stale: true };
    }
  }

  private async storedDigest(target: CacheTarget): Promise<string | undefined> {
    try {
      return (await this.options.storage.getManifest(target.cacheRepository, target.reference))?.digest;
    } catch {
      return undefined;
    }
  }
}
