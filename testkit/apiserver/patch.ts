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
  if (!Array.isArray(operations)) throw badRequest("json patch must be a JSON array of operations");
  try {
    return fastJsonPatch.applyPatch(clone(target), operations, true, false).newDocument;
  } catch (err) {
    const message = err instanceof Error ? err.message.split("\n")[0] : String(err);
    throw new ApiError(
      422,
      "Invalid",
      `the server rejected our request due to an error in our request: ${message}`,
    );
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
  subjects: "name",
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
      const merged = [...result[key]];
      for (const item of value) {
        if (isPlainObject(item) && item.$patch === "replace") continue;
        if (!merged.some((existing) => JSON.stringify(existing) === JSON.stringify(item))) merged.push(item);
      }
      result[key] = merged;
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
  for (const item of patchItems) {
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
  return result;
}
