/**
 * Where each blob lives in a target registry (digest → a repository holding it), so a later
 * image mounts a shared base instead of uploading it again, as skopeo's blob-info cache does.
 * Only a hint: a mount the registry refuses falls back to an upload.
 *
 * Three homes: memory (one process), a small SQLite file for the CLI (Node's built-in
 * node:sqlite, so nothing native to install), and for the controller the cache registry
 * itself, read back at start by `rebuildBlobIndex` (catalog + manifests).
 */
import { dirname, join } from "node:path";
import type { Logger } from "../util/log.ts";
import type { RegistryClient } from "./registry.ts";
import { type Descriptor, isIndexMediaType } from "./types.ts";

export interface BlobIndex {
  /** A repository of `registry` known to hold `digest`, if any. */
  get(registry: string, digest: string): string | undefined;
  set(registry: string, digest: string, repository: string): void;
  close(): void;
}

/** Bounded, oldest entries dropped first. */
export class MemoryBlobIndex implements BlobIndex {
  readonly #entries = new Map<string, string>();
  readonly #limit: number;

  constructor(limit = 50_000) {
    this.#limit = limit;
  }

  get(registry: string, digest: string): string | undefined {
    return this.#entries.get(`${registry}|${digest}`);
  }

  set(registry: string, digest: string, repository: string): void {
    const key = `${registry}|${digest}`;
    this.#entries.delete(key);
    this.#entries.set(key, repository);
    if (this.#entries.size > this.#limit) {
      const oldest = this.#entries.keys().next().value;
      if (oldest !== undefined) this.#entries.delete(oldest);
    }
  }

  get size(): number {
    return this.#entries.size;
  }

  close(): void {}
}

/** `$XDG_CACHE_HOME/stowage/blob-index.sqlite` (default ~/.cache). */
export function defaultBlobIndexPath(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CACHE_HOME || join(env.HOME ?? ".", ".cache");
  return join(base, "stowage", "blob-index.sqlite");
}

/** Rows older than this are dropped when the file is opened (a hint this old is likely stale). */
const maxAgeMs = 90 * 24 * 3600 * 1000;

/**
 * The CLI's index in a SQLite file. Opened lazily on first use, so a run that never asks
 * (an unchanged re-run) does not load SQLite at all. Several CLIs at once are fine: WAL mode
 * and a busy timeout; a write that still fails is dropped (it is only a hint).
 */
export class SqliteBlobIndex implements BlobIndex {
  readonly #path: string;
  readonly #logger: Logger | undefined;
  #db: import("node:sqlite").DatabaseSync | undefined;
  #get: import("node:sqlite").StatementSync | undefined;
  #set: import("node:sqlite").StatementSync | undefined;
  #broken = false;

  constructor(path: string, logger?: Logger) {
    this.#path = path;
    this.#logger = logger;
  }

  #open(): boolean {
    if (this.#db) return true;
    if (this.#broken) return false;
    try {
      // node:fs and node:sqlite are loaded here, not at the top, so the no-op path never pays
      // for them (an ESM import of node:fs also evaluates ~30 more built-ins).
      process.getBuiltinModule("node:fs").mkdirSync(dirname(this.#path), { recursive: true });
      const { DatabaseSync } = process.getBuiltinModule("node:sqlite") as typeof import("node:sqlite");
      const db = new DatabaseSync(this.#path, { timeout: 2000 });
      db.exec(`PRAGMA journal_mode = WAL;
        CREATE TABLE IF NOT EXISTS blob_locations (
          registry TEXT NOT NULL, digest TEXT NOT NULL, repository TEXT NOT NULL, seen_ms INTEGER NOT NULL,
          PRIMARY KEY (registry, digest));`);
      db.prepare("DELETE FROM blob_locations WHERE seen_ms < ?").run(Date.now() - maxAgeMs);
      this.#get = db.prepare("SELECT repository FROM blob_locations WHERE registry = ? AND digest = ?");
      this.#set = db.prepare(
        "INSERT OR REPLACE INTO blob_locations (registry, digest, repository, seen_ms) VALUES (?, ?, ?, ?)",
      );
      this.#db = db;
      return true;
    } catch (err) {
      this.#broken = true;
      this.#logger?.warn(
        { path: this.#path, err: (err as Error).message },
        "blob index unusable; not remembering blob locations",
      );
      return false;
    }
  }

  get(registry: string, digest: string): string | undefined {
    if (!this.#open()) return undefined;
    const row = this.#get?.get(registry, digest) as { repository?: string } | undefined;
    return row?.repository;
  }

  set(registry: string, digest: string, repository: string): void {
    if (!this.#open()) return;
    try {
      this.#set?.run(registry, digest, repository, Date.now());
    } catch (err) {
      this.#logger?.debug({ err: (err as Error).message }, "blob index write dropped");
    }
  }

  close(): void {
    this.#db?.close();
    this.#db = undefined;
  }
}

/**
 * Fills `index` from what `registry` holds: every repository of its catalog, every tag's
 * manifest (children of indexes too), every blob they name. Run once at controller start, so
 * the first image after a restart mounts a base an earlier image pushed. Bounded by `limit`
 * repositories; a repository that cannot be read is skipped (the index is only a hint).
 */
export async function rebuildBlobIndex(
  client: RegistryClient,
  registry: string,
  index: BlobIndex,
  options: { logger?: Logger; signal?: AbortSignal; maxRepositories?: number } = {},
): Promise<{ repositories: number; blobs: number }> {
  let blobs = 0;
  const repositories = await client.listRepositories(registry, { limit: options.maxRepositories ?? 10_000 });
  for (const repository of repositories) {
    if (options.signal?.aborted) break;
    const repo = { registry, repository };
    try {
      const seen = new Set<string>();
      const visit = async (reference: string): Promise<void> => {
        const raw = await client.getManifest(repo, reference);
        if (seen.has(raw.digest)) return;
        seen.add(raw.digest);
        const body = JSON.parse(raw.bytes.toString("utf8")) as {
          mediaType?: string;
          manifests?: Descriptor[];
          config?: Descriptor;
          layers?: Descriptor[];
        };
        if (isIndexMediaType(body.mediaType ?? raw.mediaType) || Array.isArray(body.manifests)) {
          for (const child of body.manifests ?? []) await visit(child.digest);
          return;
        }
        for (const blob of [body.config, ...(body.layers ?? [])]) {
          if (!blob?.digest || (blob.urls && blob.urls.length > 0)) continue;
          index.set(registry, blob.digest, repository);
          blobs++;
        }
      };
      for (const tag of await client.listTags(repo)) await visit(tag);
    } catch (err) {
      options.logger?.debug(
        { registry, repository, err: (err as Error).message },
        "blob index: repository skipped",
      );
    }
  }
  return { repositories: repositories.length, blobs };
}
