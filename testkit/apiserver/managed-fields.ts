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
 * - a field is a path of map keys; every list is atomic (owned and replaced as a whole), where the
 *   real server merges lists marked `x-kubernetes-list-type: map|set` or with merge keys item by item;
 * - apply: fields this manager applied before and omits now are removed unless another manager
 *   also owns them; a field another manager owns with a different value is a conflict (409) unless
 *   `force`, which moves ownership to the applier;
 * - update/patch/create: the writer (fieldManager, else the User-Agent's product) takes ownership of
 *   every field whose value changed, and those fields leave every other manager's set.
 * fieldsV1 is rendered as `{"f:spec":{"f:replicas":{}}}`; list items (`k:`/`v:`/`i:`) never appear.
 */
type FieldPath = string[];

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
  "metadata.generateName",
]);

function isUntracked(path: FieldPath): boolean {
  for (let i = 1; i <= path.length; i++) if (untracked.has(path.slice(0, i).join("."))) return true;
  return false;
}

/** Scope of a write: main resource fields exclude `status` when the kind has a status subresource. */
export type FieldScope = "all" | "main" | "status";

function inScope(path: FieldPath, scope: FieldScope): boolean {
  if (scope === "status") return path[0] === "status";
  if (scope === "main") return path[0] !== "status";
  return true;
}

export function leafPaths(value: Json, scope: FieldScope): FieldPath[] {
  const out: FieldPath[] = [];
  const walk = (node: Json, prefix: FieldPath) => {
    if (isPlainObject(node) && Object.keys(node).length > 0) {
      for (const [key, child] of Object.entries(node)) if (child !== undefined) walk(child, [...prefix, key]);
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

function getPath(obj: Json, path: FieldPath): Json {
  let cursor = obj;
  for (const part of path) {
    if (!isPlainObject(cursor)) return undefined;
    cursor = cursor[part];
  }
  return cursor;
}

function deletePath(obj: Json, path: FieldPath): void {
  const parents: Json[] = [];
  let cursor = obj;
  for (const part of path.slice(0, -1)) {
    if (!isPlainObject(cursor)) return;
    parents.push(cursor);
    cursor = cursor[part];
  }
  if (!isPlainObject(cursor)) return;
  delete cursor[path[path.length - 1]];
  // drop maps the removal left empty, as the real server does for applied-then-removed fields
  for (let i = path.length - 2; i >= 0; i--) {
    const parent = parents[i];
    const child = parent[path[i]];
    if (isPlainObject(child) && Object.keys(child).length === 0 && i > 0) delete parent[path[i]];
    else break;
  }
}

export function encodeFields(paths: FieldPath[]): Json {
  const root: Json = {};
  for (const path of paths) {
    let cursor = root;
    for (const part of path) {
      const key = `f:${part}`;
      cursor[key] ??= {};
      cursor = cursor[key];
    }
  }
  return root;
}

export function decodeFields(fieldsV1: Json): FieldPath[] {
  const out: FieldPath[] = [];
  const walk = (node: Json, prefix: FieldPath) => {
    const children = isPlainObject(node) ? Object.keys(node).filter((k) => k.startsWith("f:")) : [];
    if (children.length === 0 || (isPlainObject(node) && "." in node)) {
      if (prefix.length > 0) out.push(prefix);
    }
    for (const key of children) walk(node[key], [...prefix, key.slice(2)]);
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

/** Merge an apply configuration into an object: maps merge, lists and scalars replace. */
function mergeApplied(target: Json, config: Json): Json {
  if (!isPlainObject(config) || !isPlainObject(target)) return clone(config);
  const result = clone(target);
  for (const [key, value] of Object.entries(config)) {
    if (value === null) delete result[key];
    else result[key] = mergeApplied(result[key], value);
  }
  return result;
}

export interface ApplyOptions {
  manager: string;
  force: boolean;
  apiVersion: string;
  subresource?: string;
  scope: FieldScope;
  now?: Date;
}

export function serverSideApply(
  current: KubeObject | undefined,
  config: KubeObject,
  options: ApplyOptions,
): KubeObject {
  const entries = clone(current?.metadata.managedFields ?? []);
  const configPaths = leafPaths(config, options.scope);
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
    if (!options.force) throw applyConflict(conflicts);
    kept = releasePaths(entries, new Set(conflicts.map((c) => keyOf(c.path))), mine);
  }

  let result: KubeObject = current ? clone(current) : { metadata: {} };
  if (mine) {
    const ownedByOthers = new Set(
      kept.filter((e) => e !== mine).flatMap((e) => decodeFields(e.fieldsV1).map(keyOf)),
    );
    for (const path of decodeFields(mine.fieldsV1)) {
      if (!configKeys.has(keyOf(path)) && !ownedByOthers.has(keyOf(path))) deletePath(result, path);
    }
  }
  result = mergeApplied(result, config);
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

function applyConflict(conflicts: { manager: string; apiVersion: string; path: FieldPath }[]): ApiError {
  const render = (path: FieldPath) => `.${path.join(".")}`;
  const message =
    conflicts.length === 1
      ? `Apply failed with 1 conflict: conflict with "${conflicts[0].manager}" using ${conflicts[0].apiVersion}: ${render(conflicts[0].path)}`
      : `Apply failed with ${conflicts.length} conflicts: ${conflicts.map((c) => `conflict with "${c.manager}" using ${c.apiVersion}: ${render(c.path)}`).join("\n")}`;
  return new ApiError(409, "Conflict", message, {
    causes: conflicts.map((c) => ({
      reason: "FieldManagerConflict",
      message: `conflict with "${c.manager}" using ${c.apiVersion}`,
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
  options: { manager: string; apiVersion: string; subresource?: string; scope: FieldScope; now?: Date },
): ManagedFieldsEntry[] {
  const entries = clone(previous?.metadata.managedFields ?? next.metadata.managedFields ?? []);
  const candidates = new Map<string, FieldPath>();
  for (const path of [...leafPaths(previous ?? {}, options.scope), ...leafPaths(next, options.scope)])
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
