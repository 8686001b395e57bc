import { defaultRuntimeMetrics, type RuntimeMetrics } from "../metrics.ts";
import { type Clock, systemClock } from "../util/clock.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import {
  apiVersionOf,
  isGone,
  type KubeClient,
  type KubeObject,
  type ObjectClient,
  type ResourceType,
  type WatchEventType,
} from "./client.ts";
import { type EventHandler, type EventSource, objectKey } from "./controller.ts";

export interface InformerOptions {
  client: KubeClient;
  type: ResourceType;
  /** Watch one namespace only; all namespaces when omitted. */
  namespace?: string;
  labelSelector?: string;
  fieldSelector?: string;
  clock?: Clock;
  metrics?: RuntimeMetrics;
  log?: Logger;
  /** Backoff between failed list/watch attempts. */
  backoff?: { initialMs?: number; maxMs?: number };
  /**
   * List in pages of this many objects. Off by default: an unpaged list is one consistent
   * snapshot, which is what the watch resumes from (client-go gets the same by listing from
   * the watch cache, where limits are ignored).
   */
  pageSize?: number;
  /** Server-side watch timeout; the watch is renewed from the last resourceVersion after it. */
  watchTimeoutSeconds?: number;
  /** Restart a watch that delivered nothing, not even a bookmark, for this long (default 120 s). */
  watchInactivityMs?: number;
  /**
   * Keep only what consumers read: applied to every listed and watched object before it is
   * cached or handed to handlers (client-go's TransformFunc). A whole-cluster Pod or Node cache
   * of full objects is most of a controller's memory; see trim.ts. Must keep metadata.name,
   * namespace, uid and resourceVersion, which the cache itself relies on.
   */
  transform?: (obj: KubeObject) => KubeObject;
}

type WatchOutcome = "closed" | "gone" | "stopped";

/**
 * A list+watch cache of one resource type, in the client-go reflector style. It never
 * stops on its own: a dropped or failed watch is resumed from the last resourceVersion seen
 * (bookmarks keep it fresh), a 410 Gone relists and compares caches so objects that vanished
 * meanwhile are reported deleted, and any other error is retried with backoff.
 */
export class Informer<T extends KubeObject = KubeObject> implements EventSource<T> {
  readonly type: ResourceType;
  readonly resourceLabel: string;
  readonly #objects: ObjectClient<T>;
  readonly #client: KubeClient;
  readonly #options: InformerOptions;
  readonly #clock: Clock;
  readonly #metrics: RuntimeMetrics;
  readonly #log: Logger;
  readonly #cache = new Map<string, T>();
  /** `list()`'s snapshot, dropped at every change of the cache. */
  #listed: readonly T[] | undefined;
  readonly #indexers = new Map<string, (obj: T) => string[]>();
  readonly #indices = new Map<string, Map<string, Set<string>>>();
  readonly #handlers = new Set<EventHandler<T>>();
  readonly #syncWaiters: (() => void)[] = [];
  #resourceVersion: string | undefined;
  #synced = false;
  #stopped = false;
  #stopSignal = new AbortController();
  #loop: Promise<void> | undefined;

  constructor(options: InformerOptions) {
    this.#options = options;
    this.type = options.type;
    this.#client = options.client;
    this.#objects = options.client.resource<T>(options.type);
    this.#clock = options.clock ?? systemClock;
    this.#metrics = options.metrics ?? defaultRuntimeMetrics();
    this.resourceLabel = options.type.group
      ? `${options.type.plural}.${options.type.group}`
      : options.type.plural;
    this.#log = (options.log ?? silentLogger()).child({ informer: this.resourceLabel });
    this.addIndexer("namespace", (obj) => (obj.metadata?.namespace ? [obj.metadata.namespace] : []));
  }

  start(): void {
    if (this.#loop) return;
    this.#stopped = false;
    this.#stopSignal = new AbortController();
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#stopSignal.abort();
    await this.#loop;
    this.#loop = undefined;
  }

  hasSynced(): boolean {
    return this.#synced;
  }

  /** Resolves once the first list has filled the cache. */
  waitForSync(signal?: AbortSignal): Promise<void> {
    if (this.#synced) return Promise.resolve();
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      this.#syncWaiters.push(resolve);
      signal?.addEventListener("abort", () => reject(signal.reason), { once: true });
    });
  }

  /** The last resourceVersion seen (list, event or bookmark). */
  get resourceVersion(): string | undefined {
    return this.#resourceVersion;
  }

  /** By key: "namespace/name", or "name" for cluster-scoped objects. */
  get(key: string): T | undefined {
    return this.#cache.get(key);
  }

  /**
   * Every cached object. The same array until the cache next changes (frozen: callers copy before
   * sorting): controllers list the Nodes on every sync and plan pass, and a fresh copy each time
   * was a large share of the controller's garbage at 2,000 ModelImages (bench:controller); it also
   * lets callers memoise work per list.
   */
  list(): readonly T[] {
    this.#listed ??= Object.freeze([...this.#cache.values()]);
    return this.#listed;
  }

  keys(): string[] {
    return [...this.#cache.keys()];
  }

  byNamespace(namespace: string): T[] {
    return this.byIndex("namespace", namespace);
  }

  /** Add an index (e.g. by node name or owner); objects already cached are indexed at once. */
  addIndexer(name: string, indexFunc: (obj: T) => string[]): void {
    this.#indexers.set(name, indexFunc);
    const index = new Map<string, Set<string>>();
    this.#indices.set(name, index);
    for (const [key, obj] of this.#cache) {
      for (const value of indexFunc(obj)) addToIndex(index, value, key);
    }
  }

  byIndex(name: string, value: string): T[] {
    const keys = this.#indices.get(name)?.get(value);
    if (!keys) return [];
    return [...keys].map((key) => this.#cache.get(key)).filter((obj): obj is T => obj !== undefined);
  }

  /**
   * Subscribe to add/update/delete. A handler added after the cache filled gets an `add`
   * for every cached object first, so late subscribers miss nothing. Returns the unsubscribe.
   */
  addEventHandler(handler: EventHandler<T>): () => void {
    this.#handlers.add(handler);
    for (const obj of this.#cache.values()) this.#call(handler, "add", obj);
    return () => this.#handlers.delete(handler);
  }

  async #run(): Promise<void> {
    const initialMs = this.#options.backoff?.initialMs ?? 200;
    const maxMs = this.#options.backoff?.maxMs ?? 30_000;
    let failures = 0;
    let first = true;
    while (!this.#stopped) {
      if (!first) this.#metrics.informerRestarts.inc({ resource: this.resourceLabel });
      first = false;
      try {
        if (this.#resourceVersion === undefined) await this.#relist();
        if (this.#stopped) break;
        const outcome = await this.#watch();
        if (outcome === "stopped") break;
        if (outcome === "gone") {
          this.#log.info({ resourceVersion: this.#resourceVersion }, "watch expired (410); relisting");
          this.#resourceVersion = undefined;
        }
        failures = 0;
      } catch (err) {
        if (this.#stopped) break;
        if (isGone(err)) {
          this.#resourceVersion = undefined;
          failures = 0;
          continue;
        }
        const delayMs = Math.min(initialMs * 2 ** failures, maxMs);
        failures++;
        this.#log.warn({ error: (err as Error).message, delayMs }, "list/watch failed; retrying");
        try {
          await this.#clock.sleep(delayMs, this.#stopSignal.signal);
        } catch {
          break; // stopped
        }
      }
    }
  }

  /** List everything (paged), replace the cache and report the differences as events. */
  async #relist(): Promise<void> {
    const items: T[] = [];
    let continueToken: string | undefined;
    let resourceVersion: string | undefined;
    do {
      const page = await this.#objects.list({
        namespace: this.#options.namespace,
        labelSelector: this.#options.labelSelector,
        fieldSelector: this.#options.fieldSelector,
        limit: this.#options.pageSize,
        continue: continueToken,
      });
      items.push(...page.items);
      continueToken = page.metadata?.continue || undefined;
      resourceVersion ??= page.metadata?.resourceVersion;
      if (this.#stopped) return;
    } while (continueToken);

    const listed = new Set<string>();
    for (const item of items) {
      // List items carry no TypeMeta; give cached objects the same shape as watched ones.
      const obj = this.#trim({ apiVersion: apiVersionOf(this.type), kind: this.type.kind, ...item } as T);
      const key = objectKey(obj);
      listed.add(key);
      this.#upsert(key, obj);
    }
    for (const [key, obj] of this.#cache) {
      if (!listed.has(key)) this.#remove(key, obj);
    }
    this.#resourceVersion = resourceVersion ?? "";
    if (!this.#synced) {
      this.#synced = true;
      for (const resolve of this.#syncWaiters.splice(0)) resolve();
    }
  }

  async #watch(): Promise<WatchOutcome> {
    const timeoutSeconds = this.#options.watchTimeoutSeconds ?? 300 + Math.floor(Math.random() * 300);
    let outcome: WatchOutcome | undefined;
    const abort = new AbortController();
    const stopped = () => abort.abort();
    this.#stopSignal.signal.addEventListener("abort", stopped, { once: true });
    const onEvent = (type: WatchEventType, raw: unknown) => {
      if (outcome !== undefined) return;
      const obj = raw as T & { code?: number; message?: string };
      switch (type) {
        case "ADDED":
        case "MODIFIED":
          this.#upsert(objectKey(obj), this.#trim(obj));
          break;
        case "DELETED": {
          const key = objectKey(obj);
          const cached = this.#cache.get(key);
          // A delete of an older incarnation (same name, other uid) must not drop the newer one.
          if (cached && (!cached.metadata?.uid || cached.metadata.uid === obj.metadata?.uid))
            this.#remove(key, this.#trim(obj));
          break;
        }
        case "BOOKMARK":
          break;
        case "ERROR":
          // A Status object: 410 means our resourceVersion was compacted away.
          outcome = obj.code === 410 ? "gone" : "closed";
          if (obj.code !== 410) this.#log.warn({ code: obj.code, error: obj.message }, "watch error event");
          abort.abort();
          return;
      }
      this.#resourceVersion = obj.metadata?.resourceVersion ?? this.#resourceVersion;
    };
    try {
      await this.#client.watch(
        this.#objects.collectionPath(this.#options.namespace),
        {
          resourceVersion: this.#resourceVersion,
          allowWatchBookmarks: true,
          timeoutSeconds,
          labelSelector: this.#options.labelSelector,
          fieldSelector: this.#options.fieldSelector,
        },
        onEvent,
        { signal: abort.signal, inactivityMs: this.#options.watchInactivityMs },
      );
    } catch (err) {
      if (isGone(err)) return "gone";
      throw err;
    } finally {
      this.#stopSignal.signal.removeEventListener("abort", stopped);
    }
    if (this.#stopped) return "stopped";
    return outcome ?? "closed";
  }

  #trim(obj: T): T {
    // No Stowage controller reads managedFields, and a ModelImage's are as large as its spec and
    // status together (every field path an object of its own): a fifth of the controller's live
    // heap at 2,000 ModelImages. Writes from the cache never carry them, which the API server
    // answers by keeping the object's managedFields as they are.
    const metadata = obj.metadata as { managedFields?: unknown } | undefined;
    if (metadata?.managedFields) delete metadata.managedFields;
    const transform = this.#options.transform;
    return transform ? (transform(obj) as T) : obj;
  }

  #upsert(key: string, obj: T): void {
    const old = this.#cache.get(key);
    if (old?.metadata?.uid && obj.metadata?.uid && old.metadata.uid !== obj.metadata.uid) {
      // Same name, new object: the old one was deleted while we were not looking.
      this.#remove(key, old);
    } else if (old) {
      if (old.metadata?.resourceVersion === obj.metadata?.resourceVersion) return;
      this.#store(key, obj, old);
      for (const handler of this.#handlers) this.#call(handler, "update", obj, old);
      return;
    }
    this.#store(key, obj, undefined);
    for (const handler of this.#handlers) this.#call(handler, "add", obj);
  }

  #remove(key: string, lastKnown: T): void {
    const old = this.#cache.get(key);
    if (!old) return;
    this.#cache.delete(key);
    this.#listed = undefined;
    for (const [name, indexFunc] of this.#indexers) {
      const index = this.#indices.get(name)!;
      for (const value of indexFunc(old)) removeFromIndex(index, value, key);
    }
    for (const handler of this.#handlers) this.#call(handler, "delete", lastKnown);
  }

  #store(key: string, obj: T, old: T | undefined): void {
    this.#cache.set(key, obj);
    this.#listed = undefined;
    for (const [name, indexFunc] of this.#indexers) {
      const index = this.#indices.get(name)!;
      if (old) for (const value of indexFunc(old)) removeFromIndex(index, value, key);
      for (const value of indexFunc(obj)) addToIndex(index, value, key);
    }
  }

  #call(handler: EventHandler<T>, kind: "add" | "update" | "delete", obj: T, old?: T): void {
    try {
      if (kind === "add") handler.add?.(obj);
      else if (kind === "update") handler.update?.(old!, obj);
      else handler.delete?.(obj);
    } catch (err) {
      this.#log.error({ error: (err as Error).message, event: kind }, "event handler threw");
    }
  }
}

function addToIndex(index: Map<string, Set<string>>, value: string, key: string): void {
  let keys = index.get(value);
  if (!keys) {
    keys = new Set();
    index.set(value, keys);
  }
  keys.add(key);
}

function removeFromIndex(index: Map<string, Set<string>>, value: string, key: string): void {
  const keys = index.get(value);
  if (!keys) return;
  keys.delete(key);
  if (keys.size === 0) index.delete(value);
}
