/**
 * Pull records: when each image was last pulled through this front, kept where every front
 * replica and the controller can read them, in the storage registry itself. Each front writes one
 * small document (repository@digest → last pull, epoch ms) as an OCI artifact tagged with its
 * instance name in PULL_RECORD_REPOSITORY, at most once per flush interval and on shutdown, and
 * reads its own back at start, so a restart loses at most one interval. The controller's eviction
 * (src/controller/cachegc) merges every replica's record and evicts the least recently pulled
 * images nobody declared. One document per replica: replicas never write the same tag.
 */
import { Readable } from "node:stream";
import type { RegistryClient } from "../oci/registry.ts";
import { digestOf } from "../oci/verify.ts";
import type { Clock } from "../util/clock.ts";
import { asStowageError } from "../util/errors.ts";
import type { Logger } from "../util/log.ts";

/** A repository no upstream host maps to (the cache layout's first segment is an upstream host). */
export const PULL_RECORD_REPOSITORY = "stowage.internal/pulls";
export const PULL_RECORD_MEDIA_TYPE = "application/vnd.stowage.pull-record.v1+json";
const MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json";

export interface PullRecord {
  version: 1;
  /** "cacheRepository@digest" → epoch ms of the last pull of that manifest. */
  pulls: Record<string, number>;
  /**
   * "upstream/repository" → epoch ms when the upstream last served that repository to an
   * anonymous caller: after a restart, the front's access check has this last answer to stand
   * on while the upstream cannot be reached. Absent in records written before it existed.
   */
  public?: Record<string, number>;
}

/** `cacheRepository@digest`, the key of a pull. */
export function pullKey(cacheRepository: string, digest: string): string {
  return `${cacheRepository}@${digest}`;
}

/** The repository and digest of a pull key. */
export function splitPullKey(key: string): { repository: string; digest: string } | undefined {
  const at = key.lastIndexOf("@");
  if (at <= 0) return undefined;
  return { repository: key.slice(0, at), digest: key.slice(at + 1) };
}

/** A pull record's entries; entries that are not a key and a time are dropped. */
export function parsePullRecord(bytes: Buffer): Map<string, number> {
  return parsePullDocument(bytes).pulls;
}

/** A pull record's pulls and public repositories; entries that are not a key and a time are dropped. */
export function parsePullDocument(bytes: Buffer): {
  pulls: Map<string, number>;
  public: Map<string, number>;
} {
  const read = { pulls: new Map<string, number>(), public: new Map<string, number>() };
  let document: { version?: unknown; pulls?: unknown; public?: unknown };
  try {
    document = JSON.parse(bytes.toString("utf8"));
  } catch {
    return read;
  }
  if (document?.version !== 1) return read;
  const times = (field: unknown, valid: (key: string) => boolean, into: Map<string, number>) => {
    if (typeof field !== "object" || field === null) return;
    for (const [key, at] of Object.entries(field as Record<string, unknown>)) {
      if (typeof at === "number" && Number.isFinite(at) && valid(key)) into.set(key, at);
    }
  };
  times(document.pulls, (key) => splitPullKey(key) !== undefined, read.pulls);
  times(document.public, (key) => key.includes("/"), read.public);
  return read;
}

/** A tag from an instance name (a pod name, a hostname): the characters a tag allows, at most 128. */
export function pullRecordTag(instance: string): string {
  const cleaned = instance.replace(/[^A-Za-z0-9_.-]/g, "-").replace(/^[.-]+/, "");
  return (cleaned || "front").slice(0, 128);
}

/** Reads one replica's record (undefined when it has none). */
export async function readPullRecord(
  client: RegistryClient,
  registry: string,
  tag: string,
): Promise<Map<string, number> | undefined> {
  return (await readPullDocument(client, registry, tag))?.pulls;
}

/** Reads one replica's whole record: pulls and public repositories (undefined when it has none). */
async function readPullDocument(client: RegistryClient, registry: string, tag: string) {
  const repo = { registry, repository: PULL_RECORD_REPOSITORY };
  let manifestBytes: Buffer;
  try {
    manifestBytes = (await client.getManifest(repo, tag)).bytes;
  } catch (err) {
    if (asStowageError(err).reason === "ImageNotFound") return undefined;
    throw err;
  }
  const manifest = JSON.parse(manifestBytes.toString("utf8")) as {
    config?: { digest: string; size: number; mediaType: string };
  };
  if (manifest.config?.mediaType !== PULL_RECORD_MEDIA_TYPE) return undefined;
  const chunks: Buffer[] = [];
  for await (const chunk of client.getBlob(repo, manifest.config)) chunks.push(chunk as Buffer);
  return parsePullDocument(Buffer.concat(chunks));
}

export interface PullLogOptions {
  client: RegistryClient;
  /** The storage registry's host[:port]. */
  registry: string;
  /** This replica's name (its tag in PULL_RECORD_REPOSITORY). */
  instance: string;
  clock: Clock;
  logger: Logger;
  /** Entries kept, most recent first (default 100 000). */
  maxEntries?: number;
}

export class PullLog {
  private readonly options: PullLogOptions;
  private readonly tag: string;
  private readonly pulls = new Map<string, number>();
  /** "upstream/repository" → when the upstream last served it anonymously (PullRecord.public). */
  private readonly publicRepositories = new Map<string, number>();
  private dirty = false;
  private flushing: Promise<void> | undefined;

  constructor(options: PullLogOptions) {
    this.options = options;
    this.tag = pullRecordTag(options.instance);
  }

  /** Notes a pull of a manifest now. Cheap: memory only until the next flush. */
  record(cacheRepository: string, digest: string): void {
    this.pulls.set(pullKey(cacheRepository, digest), this.options.clock.now());
    this.dirty = true;
  }

  /** When a manifest was last pulled through this replica, as far as it knows. */
  lastPulled(cacheRepository: string, digest: string): number | undefined {
    return this.pulls.get(pullKey(cacheRepository, digest));
  }

  /**
   * Notes what the upstream just answered an anonymous caller for `upstream/repository`: served
   * (kept, with the time) or not (forgotten). Memory only until the next flush.
   */
  notePublic(upstream: string, repository: string, served: boolean): void {
    const key = `${upstream}/${repository}`;
    if (served) this.publicRepositories.set(key, this.options.clock.now());
    else if (!this.publicRepositories.delete(key)) return;
    this.dirty = true;
  }

  /** The repositories the upstream last served anonymously, as far as this replica knows. */
  knownPublic(): { upstream: string; repository: string; at: number }[] {
    return [...this.publicRepositories].map(([key, at]) => {
      const slash = key.indexOf("/");
      return { upstream: key.slice(0, slash), repository: key.slice(slash + 1), at };
    });
  }

  /** Merges this replica's stored record (after a restart); a failure leaves the log empty, logged. */
  async load(): Promise<void> {
    try {
      const stored = await readPullDocument(this.options.client, this.options.registry, this.tag);
      for (const [key, at] of stored?.pulls ?? []) {
        if ((this.pulls.get(key) ?? 0) < at) this.pulls.set(key, at);
      }
      for (const [key, at] of stored?.public ?? []) {
        if (!this.publicRepositories.has(key)) this.publicRepositories.set(key, at);
      }
    } catch (err) {
      this.options.logger.warn(
        { err: asStowageError(err).message },
        "could not read this front's pull record",
      );
    }
  }

  /** Writes the record when something changed since the last write; one write at a time. */
  flush(): Promise<void> {
    this.flushing ??= this.write().finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  private async write(): Promise<void> {
    if (!this.dirty) return;
    this.dirty = false;
    const { client, registry, logger } = this.options;
    const maxEntries = this.options.maxEntries ?? 100_000;
    const newest = [...this.pulls].sort((a, b) => b[1] - a[1]).slice(0, maxEntries);
    if (newest.length < this.pulls.size) {
      this.pulls.clear();
      for (const [key, at] of newest) this.pulls.set(key, at);
    }
    const newestPublic = [...this.publicRepositories].sort((a, b) => b[1] - a[1]).slice(0, maxEntries);
    if (newestPublic.length < this.publicRepositories.size) {
      this.publicRepositories.clear();
      for (const [key, at] of newestPublic) this.publicRepositories.set(key, at);
    }
    const record: PullRecord = {
      version: 1,
      pulls: Object.fromEntries(newest),
      ...(newestPublic.length > 0 ? { public: Object.fromEntries(newestPublic) } : {}),
    };
    const bytes = Buffer.from(JSON.stringify(record));
    const config = { mediaType: PULL_RECORD_MEDIA_TYPE, digest: digestOf(bytes), size: bytes.length };
    const repo = { registry, repository: PULL_RECORD_REPOSITORY };
    try {
      await client.pushBlob(repo, config, () => Readable.from([bytes]));
      const manifest = Buffer.from(
        JSON.stringify({ schemaVersion: 2, mediaType: MANIFEST_MEDIA_TYPE, config, layers: [] }),
      );
      await client.putManifest(repo, this.tag, {
        mediaType: MANIFEST_MEDIA_TYPE,
        digest: digestOf(manifest),
        bytes: manifest,
      });
    } catch (err) {
      this.dirty = true;
      logger.warn(
        { err: asStowageError(err).message },
        "could not write this front's pull record; retrying later",
      );
    }
  }
}
