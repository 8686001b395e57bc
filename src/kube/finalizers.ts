import { StowageError } from "../util/errors.ts";
import { isConflict, type KubeObject, type ObjectClient } from "./client.ts";

export function hasFinalizer(obj: KubeObject, finalizer: string): boolean {
  return obj.metadata?.finalizers?.includes(finalizer) ?? false;
}

export function isBeingDeleted(obj: KubeObject): boolean {
  return obj.metadata?.deletionTimestamp !== undefined && obj.metadata.deletionTimestamp !== null;
}

/** Add `finalizer` if missing; other controllers' finalizers are kept. Returns the object as stored. */
export function ensureFinalizer<T extends KubeObject>(
  objects: ObjectClient<T>,
  obj: T,
  finalizer: string,
): Promise<T> {
  return changeFinalizers(objects, obj, (list) => (list.includes(finalizer) ? list : [...list, finalizer]));
}

/** Remove `finalizer` if present; other controllers' finalizers are kept. Returns the object as stored. */
export function removeFinalizer<T extends KubeObject>(
  objects: ObjectClient<T>,
  obj: T,
  finalizer: string,
): Promise<T> {
  return changeFinalizers(objects, obj, (list) => list.filter((f) => f !== finalizer));
}

/**
 * A merge patch of the whole finalizer list with a resourceVersion precondition: if anyone
 * changed the object since we read it the server answers 409, we re-read and recompute, so a
 * finalizer added concurrently by someone else is never dropped.
 */
async function changeFinalizers<T extends KubeObject>(
  objects: ObjectClient<T>,
  obj: T,
  change: (list: string[]) => string[],
  maxAttempts = 5,
): Promise<T> {
  let current = obj;
  for (let attempt = 1; ; attempt++) {
    const before = current.metadata?.finalizers ?? [];
    const after = change(before);
    if (after.length === before.length && after.every((f, i) => f === before[i])) return current;
    const name = current.metadata?.name ?? "";
    const namespace = current.metadata?.namespace;
    try {
      return await objects.patch(
        name,
        { metadata: { resourceVersion: current.metadata?.resourceVersion, finalizers: after } },
        { namespace, type: "merge" },
      );
    } catch (err) {
      if (!isConflict(err)) throw err;
      if (attempt >= maxAttempts) {
        throw new StowageError(
          "Conflict",
          `finalizers of ${objects.type.kind} ${name} kept changing; gave up`,
          {
            cause: err,
            retryable: true,
          },
        );
      }
      current = await objects.get(name, namespace);
    }
  }
}
