import { clone, type KubeObject } from "./types.ts";

/**
 * Objects plus one global revision, as etcd keeps them: every write bumps the revision and
 * stamps it on the object as `metadata.resourceVersion`; a bounded history of changes lets a
 * watch resume from any revision newer than the compaction point.
 */
export interface StoreEvent {
  revision: number;
  type: "ADDED" | "MODIFIED" | "DELETED";
  /** which collection, e.g. "apps/deployments" or "/pods" */
  bucket: string;
  object: KubeObject;
  /** the object before this change, for selector transitions in filtered watches */
  previous?: KubeObject;
}

type Listener = (event: StoreEvent) => void;

function objectKey(namespace: string | undefined, name: string): string {
  return `${namespace ?? ""}/${name}`;
}

export class Store {
  private revisionCounter = 0;
  private readonly buckets = new Map<string, Map<string, KubeObject>>();
  private history: StoreEvent[] = [];
  /** watches may resume from this revision or any later one */
  private compactedRevision = 0;
  private readonly listeners = new Set<Listener>();
  private readonly historyLimit: number;
  /** uid → where the object lives, and owner uid → dependents, so garbage collection does not scan */
  private readonly byUid = new Map<string, { bucket: string; key: string }>();
  private readonly byOwner = new Map<string, Set<string>>();

  constructor(options: { historyLimit?: number } = {}) {
    this.historyLimit = options.historyLimit ?? 1000;
  }

  get revision(): number {
    return this.revisionCounter;
  }

  /** The oldest revision a watch may still resume from. */
  get oldestResumable(): number {
    return this.compactedRevision;
  }

  get(bucket: string, namespace: string | undefined, name: string): KubeObject | undefined {
    const found = this.buckets.get(bucket)?.get(objectKey(namespace, name));
    return found ? clone(found) : undefined;
  }

  /** Objects sorted by namespace then name, like etcd's key order. */
  list(bucket: string, namespace?: string): KubeObject[] {
    const items = this.buckets.get(bucket);
    if (!items) return [];
    const keys = [...items.keys()].sort();
    const out: KubeObject[] = [];
    for (const key of keys) {
      const obj = items.get(key)!;
      if (namespace !== undefined && (obj.metadata.namespace ?? "") !== namespace) continue;
      out.push(clone(obj));
    }
    return out;
  }

  /**
   * The bucket as it was at `revision`, rebuilt by undoing the retained history after it (callers
   * check `oldestResumable` first). Sorted like `list`.
   */
  listAt(bucket: string, namespace: string | undefined, revision: number): KubeObject[] {
    const state = new Map<string, KubeObject>();
    for (const obj of this.list(bucket))
      state.set(objectKey(obj.metadata.namespace, obj.metadata.name!), obj);
    for (const event of [...this.history].reverse()) {
      if (event.revision <= revision) break;
      if (event.bucket !== bucket) continue;
      const key = objectKey(event.object.metadata.namespace, event.object.metadata.name!);
      if (event.type === "ADDED") state.delete(key);
      else if (event.previous) state.set(key, clone(event.previous));
    }
    return [...state.keys()]
      .sort()
      .map((key) => state.get(key)!)
      .filter((obj) => namespace === undefined || (obj.metadata.namespace ?? "") === namespace);
  }

  count(bucket: string, namespace?: string): number {
    return this.list(bucket, namespace).length;
  }

  hasUid(uid: string): boolean {
    return this.byUid.has(uid);
  }

  /** Objects whose ownerReferences name `uid`, with their bucket. */
  dependents(uid: string): { bucket: string; object: KubeObject }[] {
    const out: { bucket: string; object: KubeObject }[] = [];
    for (const dependentUid of this.byOwner.get(uid) ?? []) {
      const where = this.byUid.get(dependentUid);
      const obj = where && this.buckets.get(where.bucket)?.get(where.key);
      if (where && obj) out.push({ bucket: where.bucket, object: clone(obj) });
    }
    return out;
  }

  private index(
    bucket: string,
    key: string,
    obj: KubeObject | undefined,
    previous: KubeObject | undefined,
  ): void {
    const ownersOf = (o: KubeObject | undefined): string[] =>
      (o?.metadata.ownerReferences ?? []).map((ref) => String(ref?.uid ?? "")).filter((u) => u !== "");
    const uid = obj?.metadata.uid ?? previous?.metadata.uid;
    if (!uid) return;
    for (const owner of ownersOf(previous)) this.byOwner.get(owner)?.delete(uid);
    if (!obj) {
      this.byUid.delete(uid);
      return;
    }
    this.byUid.set(uid, { bucket, key });
    for (const owner of ownersOf(obj)) {
      let set = this.byOwner.get(owner);
      if (!set) {
        set = new Set();
        this.byOwner.set(owner, set);
      }
      set.add(uid);
    }
  }

  bucketNames(): string[] {
    return [...this.buckets.keys()];
  }

  create(bucket: string, obj: KubeObject): KubeObject {
    return this.write(bucket, obj, "ADDED");
  }

  update(bucket: string, obj: KubeObject): KubeObject {
    return this.write(bucket, obj, "MODIFIED");
  }

  delete(bucket: string, namespace: string | undefined, name: string): KubeObject | undefined {
    const items = this.buckets.get(bucket);
    const key = objectKey(namespace, name);
    const previous = items?.get(key);
    if (!items || !previous) return undefined;
    items.delete(key);
    this.index(bucket, key, undefined, previous);
    const revision = ++this.revisionCounter;
    // etcd reports a deleted object at the revision of its deletion
    const tombstone = clone(previous);
    tombstone.metadata.resourceVersion = String(revision);
    this.record({ revision, type: "DELETED", bucket, object: tombstone, previous: clone(previous) });
    return clone(tombstone);
  }

  /** Events after `revision` in the given bucket, oldest first. */
  eventsSince(revision: number, bucket: string): StoreEvent[] {
    return this.history.filter((e) => e.revision > revision && e.bucket === bucket).map((e) => clone(e));
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Forget all history: any watch from an older revision now gets 410 Gone. */
  compact(): void {
    this.history = [];
    this.compactedRevision = this.revisionCounter;
  }

  private write(bucket: string, obj: KubeObject, type: "ADDED" | "MODIFIED"): KubeObject {
    let items = this.buckets.get(bucket);
    if (!items) {
      items = new Map();
      this.buckets.set(bucket, items);
    }
    const key = objectKey(obj.metadata.namespace, obj.metadata.name!);
    const previous = items.get(key);
    const revision = ++this.revisionCounter;
    const stored = clone(obj);
    stored.metadata.resourceVersion = String(revision);
    items.set(key, stored);
    this.index(bucket, key, stored, previous);
    this.record({
      revision,
      type,
      bucket,
      object: clone(stored),
      previous: previous ? clone(previous) : undefined,
    });
    return clone(stored);
  }

  private record(event: StoreEvent): void {
    this.history.push(event);
    while (this.history.length > this.historyLimit) {
      const dropped = this.history.shift()!;
      this.compactedRevision = dropped.revision;
    }
    for (const listener of [...this.listeners]) listener(event);
  }
}
