import { ApiError } from "./errors.ts";
import {
  clone,
  deepEqual,
  isPlainObject,
  type Json,
  type KubeObject,
  kubeTimestamp,
  type ManagedFieldsEntry,
} from "./types.ts";

/**
 * Field ownership for server-side apply, simplified from structured-merge-diff:
 * - a field is a path of segments spelled as in fieldsV1: `f:<field>` for map keys and
 *   `k:{"name":"x"}` for an item of an associative list (CRD `x-kubernetes-list-type: map` with its
 *   `x-kubernetes-list-map-keys`, or a built-in list with a strategic merge key such as containers by
 *   name); every other list, `set` lists included, is atomic (owned and replaced as a whole);
 * - apply: fields this manager applied before and omits now are removed unless another manager
 *   also owns them (a keyed list item left empty goes too); a field another manager owns with a
 *   different value is a conflict (409) unless `force`, which moves ownership to the applier;
 * - update/patch/create: the writer (fieldManager, else the User-Agent's product) takes ownership of
 *   every field whose value changed, and those fields leave every other manager's set.
 * Not modelled: `v:` set items, `i:` positions, and the `.` marker for owning an item itself.
 */
type FieldPath = string[];

/**
 * The shape of the field at a path: the merge keys of an associative list, `"atomic"` for a map
 * owned and replaced as a whole (`x-kubernetes-map-type: atomic`, Go's `+structType=atomic` such as
 * label selectors), undefined for a granular map or an atomic list.
 */
export type ListKeys = (path: FieldPath) => string[] | "atomic" | undefined;

export const atomicLists: ListKeys = () => undefined;

const untracked = new Set([
  "apiVersion",
  "kind",
  "metadata.name",
  "metadata.namespace",
  "metadata.uid",
  "metadata.resourceVersion",
  "metadata.generation",
  "metadata.creationTimestamp",
  "metadata.deletionTimestamp",
  "metadata.deletionGracePeriodSeconds",
  "metadata.managedFields",
  "metadata.selfLink",
]);

function isUntracked(path: FieldPath): boolean {
  const names: string[] = [];
  for (const segment of path) {
    if (!segment.startsWith("f:")) return false;
    names.push(segment.slice(2));
    if (untracked.has(names.join("."))) return true;
  }
  return false;
}

/** Scope of a write: main resource fields exclude `status` when the kind has a status subresource. */
export type FieldScope = "all" | "main" | "status";

function inScope(path: FieldPath, scope: FieldScope): boolean {
  if (scope === "status") return path[0] === "f:status";
  if (scope === "main") return path[0] !== "f:status";
  return true;
}

function itemSegment(item: Json, keys: string[]): string {
  const key: Json = {};
  for (const k of keys) key[k] = item[k];
  return `k:${JSON.stringify(key)}`;
}

/** An associative list: merge keys known and every item carries them. */
function keyedList(value: Json, path: FieldPath, listKeys: ListKeys): string[] | undefined {
  if (!Array.isArray(value)) return undefined;
  const keys = listKeys(path);
  if (!Array.isArray(keys) || keys.length === 0) return undefined;
  return value.every((item) => isPlainObject(item) && keys.every((k) => item[k] !== undefined))
    ? keys
    : undefined;
}

export function leafPaths(value: Json, scope: FieldScope, listKeys: ListKeys = atomicLists): FieldPath[] {
  const out: FieldPath[] = [];
  const walk = (node: Json, prefix: FieldPath) => {
    if (isPlainObject(node) && Object.keys(node).length > 0 && listKeys(prefix) !== "atomic") {
      for (const [key, child] of Object.entries(node))
        if (child !== undefined) walk(child, [...prefix, `f:${key}`]);
      return;
    }
    const keys = node?.length > 0 ? keyedList(node, prefix, listKeys) : undefined;
    if (keys) {
      for (const item of node) walk(item, [...prefix, itemSegment(item, keys)]);
      return;
    }
    if (prefix.length > 0 && !isUntracked(prefix) && inScope(prefix, scope)) out.push(prefix);
  };
  walk(value, []);
  return out;
}

function keyOf(path: FieldPath): string {
  return JSON.stringify(path);
}

function matchesItem(item: Json, segment: string): boolean {
  const key = JSON.parse(segment.slice(2));
  return isPlainObject(item) && Object.entries(key).every(([k, v]) => deepEqual(item[k], v));
}

function step(node: Json, segment: string): Json {
  if (segment.startsWith("k:"))
    return Array.isArray(node) ? node.find((item) => matchesItem(item, segment)) : undefined;
  return isPlainObject(node) ? node[segment.slice(2)] : undefined;
}

function getPath(obj: Json, path: FieldPath): Json {
  let cursor = obj;
  for (const segment of path) {
    cursor = step(cursor, segment);
    if (cursor === undefined) return undefined;
  }
  return cursor;
}

function removeChild(container: Json, segment: string): void {
  if (segment.startsWith("k:")) {
    if (!Array.isArray(container)) return;
    const index = container.findIndex((item) => matchesItem(item, segment));
    if (index >= 0) container.splice(index, 1);
  } else if (isPlainObject(container)) delete container[segment.slice(2)];
}

function isEmpty(node: Json): boolean {
  return (
    (isPlainObject(node) && Object.keys(node).length === 0) || (Array.isArray(node) && node.length === 0)
  );
}

function deletePath(obj: Json, path: FieldPath): void {
  const chain: Json[] = [obj];
  for (const segment of path.slice(0, -1)) {
    const next = step(chain[chain.length - 1], segment);
    if (next === undefined || next === null || typeof next !== "object") return;
    chain.push(next);
  }
  removeChild(chain[chain.length - 1], path[path.length - 1]);
  // drop maps, list items and lists the removal left empty, as the real server does for
  // applied-then-removed fields; top-level fields (spec, metadata) stay
  for (let depth = chain.length - 1; depth >= 2; depth--) {
    const segment = path[depth - 1];
    // a list item left with nothing but its key fields is gone as a whole
    const onlyKeys =
      segment.startsWith("k:") &&
      Object.keys(chain[depth]).every((field) => field in JSON.parse(segment.slice(2)));
    if (!onlyKeys && !isEmpty(chain[depth])) break;
    removeChild(chain[depth - 1], segment);
  }
}

export function encodeFields(paths: FieldPath[]): Json {
  const root: Json = {};
  for (const path of paths) {
    let cursor = root;
    for (const segment of path) {
      cursor[segment] ??= {};
      cursor = cursor[segment];
    }
  }
  return root;
}

export function decodeFields(fieldsV1: Json): FieldPath[] {
  const out: FieldPath[] = [];
  const walk = (node: Json, prefix: FieldPath) => {
    const children = isPlainObject(node)
      ? Object.keys(node).filter((k) => k.startsWith("f:") || k.startsWith("k:"))
      : [];
    if (children.length === 0 || (isPlainObject(node) && "." in node)) {
      if (prefix.length > 0) out.push(prefix);
    }
    for (const key of children) walk(node[key], [...prefix, key]);
  };
  walk(fieldsV1, []);
  return out;
}

function sameSubresource(entry: ManagedFieldsEntry, subresource: string | undefined): boolean {
  return (entry.subresource ?? "") === (subresource ?? "");
}

/** Remove the given paths from every entry except `keep`; drop entries left owning nothing. */
function releasePaths(
  entries: ManagedFieldsEntry[],
  paths: Set<string>,
  keep?: ManagedFieldsEntry,
): ManagedFieldsEntry[] {
  return entries
    .map((entry) => {
      if (entry === keep) return entry;
      const remaining = decodeFields(entry.fieldsV1).filter((p) => !paths.has(keyOf(p)));
      return { ...entry, fieldsV1: encodeFields(remaining) };
    })
    .filter((entry) => entry === keep || decodeFields(entry.fieldsV1).length > 0);
}

/** Merge an apply configuration into an object: maps merge, associative lists merge by key, the rest replaces. */
function mergeApplied(target: Json, config: Json, path: FieldPath, listKeys: ListKeys): Json {
  if (isPlainObject(config) && isPlainObject(target) && listKeys(path) !== "atomic") {
    const result = clone(target);
    for (const [key, value] of Object.entries(config)) {
      if (value === null) delete result[key];
      else result[key] = mergeApplied(result[key], value, [...path, `f:${key}`], listKeys);
    }
    return result;
  }
  const keys = keyedList(config, path, listKeys);
  if (keys && keyedList(target, path, listKeys)) {
    const result: Json[] = clone(target);
    for (const item of config) {
      const segment = itemSegment(item, keys);
      const index = result.findIndex((existing) => matchesItem(existing, segment));
      if (index >= 0) result[index] = mergeApplied(result[index], item, [...path, segment], listKeys);
      else result.push(clone(item));
    }
    return result;
  }
  return clone(config);
}

export interface ApplyOptions {
  manager: string;
  force: boolean;
  apiVersion: string;
  subresource?: string;
  scope: FieldScope;
  listKeys?: ListKeys;
  now?: Date;
}

export function serverSideApply(
  current: KubeObject | undefined,
  config: KubeObject,
  options: ApplyOptions,
): KubeObject {
  const entries = clone(current?.metadata.managedFields ?? []);
  const listKeys = options.listKeys ?? atomicLists;
  const configPaths = leafPaths(config, options.scope, listKeys);
  const configKeys = new Set(configPaths.map(keyOf));
  const mine = entries.find(
    (e) =>
      e.manager === options.manager && e.operation === "Apply" && sameSubresource(e, options.subresource),
  );

  const conflicts: { manager: string; apiVersion: string; path: FieldPath }[] = [];
  for (const entry of entries) {
    if (entry === mine) continue;
    for (const path of decodeFields(entry.fieldsV1)) {
      if (!configKeys.has(keyOf(path))) continue;
      if (!deepEqual(getPath(current, path), getPath(config, path)))
        conflicts.push({ manager: entry.manager, apiVersion: entry.apiVersion, path });
    }
  }
  let kept = entries;
  if (conflicts.length > 0) {
    if (!options.force) throw applyConflict(conflicts, options.apiVersion);
    kept = releasePaths(entries, new Set(conflicts.map((c) => keyOf(c.path))), mine);
  }

  let result: KubeObject = current ? clone(current) : { metadata: {} };
  if (mine) {
    const ownedByOthers = new Set(
      kept.filter((e) => e !== mine).flatMap((e) => decodeFields(e.fieldsV1).map(keyOf)),
    );
    const released = decodeFields(mine.fieldsV1).filter(
      (path) => !configKeys.has(keyOf(path)) && !ownedByOthers.has(keyOf(path)),
    );
    // key fields of list items last: an item is found by its keys while its other fields go
    const isKeyField = (path: FieldPath) => {
      const parent = path[path.length - 2];
      return parent?.startsWith("k:") && path[path.length - 1].slice(2) in JSON.parse(parent.slice(2));
    };
    for (const path of [...released.filter((p) => !isKeyField(p)), ...released.filter(isKeyField)])
      deletePath(result, path);
  }
  result = mergeApplied(result, config, [], listKeys);
  const entry: ManagedFieldsEntry = {
    manager: options.manager,
    operation: "Apply",
    apiVersion: options.apiVersion,
    time: kubeTimestamp(options.now),
    fieldsType: "FieldsV1",
    fieldsV1: encodeFields(configPaths),
  };
  if (options.subresource) entry.subresource = options.subresource;
  const others = kept.filter((e) => e !== mine);
  result.metadata.managedFields = mine ? kept.map((e) => (e === mine ? entry : e)) : [...others, entry];
  return result;
}

function applyConflict(
  conflicts: { manager: string; apiVersion: string; path: FieldPath }[],
  applierVersion: string,
): ApiError {
  // structured-merge-diff names the other manager's version only when it differs from the applier's
  const who = (c: { manager: string; apiVersion: string }) =>
    c.apiVersion === applierVersion
      ? `conflict with "${c.manager}"`
      : `conflict with "${c.manager}" using ${c.apiVersion}`;
  const render = (path: FieldPath) =>
    path
      .map((segment) => {
        if (segment.startsWith("f:")) return `.${segment.slice(2)}`;
        const key = Object.entries(JSON.parse(segment.slice(2)))
          .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
          .join(",");
        return `[${key}]`;
      })
      .join("");
  const message =
    conflicts.length === 1
      ? `Apply failed with 1 conflict: ${who(conflicts[0])}: ${render(conflicts[0].path)}`
      : `Apply failed with ${conflicts.length} conflicts: ${conflicts.map((c) => `${who(c)}: ${render(c.path)}`).join("\n")}`;
  return new ApiError(409, "Conflict", message, {
    causes: conflicts.map((c) => ({
      reason: "FieldManagerConflict",
      message: who(c),
      field: render(c.path),
    })),
  });
}

/**
 * Record a non-apply write: the writer owns every field whose value changed, other managers lose them.
 * Returns the new managedFields list.
 */
export function recordUpdate(
  previous: KubeObject | undefined,
  next: KubeObject,
  options: {
    manager: string;
    apiVersion: string;
    subresource?: string;
    scope: FieldScope;
    listKeys?: ListKeys;
    now?: Date;
  },
): ManagedFieldsEntry[] {
  const entries = clone(previous?.metadata.managedFields ?? next.metadata.managedFields ?? []);
  const candidates = new Map<string, FieldPath>();
  const listKeys = options.listKeys ?? atomicLists;
  for (const path of [
    ...leafPaths(previous ?? {}, options.scope, listKeys),
    ...leafPaths(next, options.scope, listKeys),
  ])
    candidates.set(keyOf(path), path);
  const changed = [...candidates.values()].filter(
    (path) => !deepEqual(getPath(previous, path), getPath(next, path)),
  );
  if (changed.length === 0) return entries;
  const changedKeys = new Set(changed.map(keyOf));
  const presentNow = changed.filter((path) => getPath(next, path) !== undefined);
  const mine = entries.find(
    (e) =>
      e.manager === options.manager && e.operation === "Update" && sameSubresource(e, options.subresource),
  );
  const kept = releasePaths(entries, changedKeys, mine);
  const owned = mine ? decodeFields(mine.fieldsV1).filter((p) => !changedKeys.has(keyOf(p))) : [];
  const entry: ManagedFieldsEntry = {
    manager: options.manager,
    operation: "Update",
    apiVersion: options.apiVersion,
    time: kubeTimestamp(options.now),
    fieldsType: "FieldsV1",
    fieldsV1: encodeFields([...owned, ...presentNow]),
  };
  if (options.subresource) entry.subresource = options.subresource;
  const result = mine ? kept.map((e) => (e === mine ? entry : e)) : [...kept, entry];
  return result.filter((e) => decodeFields(e.fieldsV1).length > 0);
}
