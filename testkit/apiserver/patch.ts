import fastJsonPatch from "fast-json-patch";
import { ApiError, badRequest } from "./errors.ts";
import { clone, isPlainObject, type Json } from "./types.ts";

/** RFC 7386 JSON merge patch: objects merge, null deletes, everything else replaces. */
export function mergePatch(target: Json, patch: Json): Json {
  if (!isPlainObject(patch)) return clone(patch);
  const result: Json = isPlainObject(target) ? clone(target) : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key], value);
  }
  return result;
}

/** RFC 6902 JSON patch; a failed `test` or a bad path is an error of the request, as on the real server. */
export function jsonPatch(target: Json, operations: Json): Json {
  if (!Array.isArray(operations))
    throw badRequest(
      `error decoding patch: json: cannot unmarshal ${isPlainObject(operations) ? "object" : typeof operations} into Go value of type []handlers.jsonPatchOp`,
    );
  try {
    return fastJsonPatch.applyPatch(clone(target), operations, true, false).newDocument;
  } catch {
    // the real server says no more than this, whichever operation failed
    throw new ApiError(422, "Invalid", "the server rejected our request due to an error in our request", {});
  }
}

/**
 * Lists whose items strategic merge patch merges by a key rather than replacing, by field name
 * (the real server reads these from Go struct tags; the names below cover the kinds Stowage writes).
 */
export const mergeKeys: Record<string, string> = {
  containers: "name",
  initContainers: "name",
  ephemeralContainers: "name",
  env: "name",
  volumes: "name",
  volumeMounts: "mountPath",
  volumeDevices: "devicePath",
  ports: "containerPort",
  conditions: "type",
  ownerReferences: "uid",
  imagePullSecrets: "name",
  hostAliases: "ip",
  schedulingGates: "name",
  webhooks: "name",
  taints: "key",
};

/** Primitive lists merged as sets (union) rather than replaced. */
const setLists = new Set(["finalizers", "tolerations"]);

/**
 * Strategic merge patch for built-in kinds: maps merge, lists named in `mergeKeys` merge item by
 * key, `finalizers` and `tolerations` merge as sets, other lists replace. Directives understood:
 * `$patch: replace|delete` on maps and keyed list items, `$retainKeys` (ignored: keeps all),
 * `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>` (order is not enforced).
 */
export function strategicMergePatch(target: Json, patch: Json): Json {
  return strategicMerge(target, patch);
}

function strategicMerge(target: Json, patch: Json): Json {
  if (!isPlainObject(patch)) return clone(patch);
  if (patch.$patch === "replace") {
    const { $patch: _ignored, ...rest } = patch;
    return clone(rest);
  }
  if (patch.$patch === "delete") return undefined;
  const result: Json = isPlainObject(target) ? clone(target) : {};
  for (const [key, value] of Object.entries(patch)) {
    if (key === "$patch" || key === "$retainKeys" || key.startsWith("$setElementOrder/")) continue;
    if (key.startsWith("$deleteFromPrimitiveList/")) {
      const field = key.slice("$deleteFromPrimitiveList/".length);
      if (Array.isArray(result[field]) && Array.isArray(value))
        result[field] = result[field].filter((item: Json) => !value.includes(item));
      continue;
    }
    if (value === null) {
      delete result[key];
      continue;
    }
    if (Array.isArray(value) && mergeKeys[key] && Array.isArray(result[key])) {
      result[key] = mergeKeyedList(result[key], value, mergeKeys[key]);
      continue;
    }
    if (Array.isArray(value) && setLists.has(key) && Array.isArray(result[key])) {
      const original: Json[] = result[key];
      const patchItems = value.filter((item) => !(isPlainObject(item) && item.$patch === "replace"));
      const merged = [...original];
      for (const item of patchItems) {
        if (!merged.some((existing) => JSON.stringify(existing) === JSON.stringify(item))) merged.push(item);
      }
      result[key] = orderMerged(merged, patchItems, original, (item) => JSON.stringify(item));
      continue;
    }
    if (Array.isArray(value)) {
      result[key] = value.filter((item) => !(isPlainObject(item) && item.$patch)).map((item) => clone(item));
      continue;
    }
    const merged = strategicMerge(result[key], value);
    if (merged === undefined) delete result[key];
    else result[key] = merged;
  }
  return result;
}

function mergeKeyedList(current: Json[], patchItems: Json[], key: string): Json[] {
  if (
    patchItems.some(
      (item) => isPlainObject(item) && item.$patch === "replace" && Object.keys(item).length === 1,
    )
  ) {
    return patchItems.filter((item) => !(isPlainObject(item) && item.$patch)).map((item) => clone(item));
  }
  const result = current.map((item) => clone(item));
  const patchOrder: Json[] = [];
  for (const item of patchItems) {
    if (!(isPlainObject(item) && item.$patch)) patchOrder.push(item);
    if (!isPlainObject(item) || item[key] === undefined) {
      result.push(clone(item));
      continue;
    }
    const index = result.findIndex((existing) => isPlainObject(existing) && existing[key] === item[key]);
    if (item.$patch === "delete") {
      if (index >= 0) result.splice(index, 1);
      continue;
    }
    if (index >= 0) result[index] = strategicMerge(result[index], item);
    else result.push(strategicMerge({}, item));
  }
  const byKey = (item: Json) => JSON.stringify(isPlainObject(item) ? item[key] : item);
  const remaining = new Set(result.map(byKey));
  return orderMerged(
    result,
    patchOrder,
    current.filter((item) => remaining.has(byKey(item))),
    byKey,
  );
}

/**
 * The order apimachinery's strategic merge gives a merged list (normalizeElementOrder): the items
 * the patch names, in the patch's order, with the items only the server had slotted in before the
 * first patch item they preceded in the original list.
 */
function orderMerged(merged: Json[], patch: Json[], original: Json[], keyOf: (item: Json) => string): Json[] {
  const patchKeys = patch.map(keyOf);
  const originalKeys = original.map(keyOf);
  const fromPatch = merged
    .filter((item) => patchKeys.includes(keyOf(item)))
    .sort((a, b) => patchKeys.indexOf(keyOf(a)) - patchKeys.indexOf(keyOf(b)));
  const serverOnly = merged
    .filter((item) => !patchKeys.includes(keyOf(item)))
    .sort((a, b) => originalKeys.indexOf(keyOf(a)) - originalKeys.indexOf(keyOf(b)));
  const out: Json[] = [];
  let i = 0;
  let j = 0;
  while (i < serverOnly.length || j < fromPatch.length) {
    if (j >= fromPatch.length) out.push(serverOnly[i++]);
    else if (i >= serverOnly.length) out.push(fromPatch[j++]);
    else {
      const left = originalKeys.indexOf(keyOf(serverOnly[i]));
      const right = originalKeys.indexOf(keyOf(fromPatch[j]));
      if (left >= 0 && right >= 0 && left < right) out.push(serverOnly[i++]);
      else out.push(fromPatch[j++]);
    }
  }
  return out;
}
