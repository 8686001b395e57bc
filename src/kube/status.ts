import { isDeepStrictEqual } from "node:util";
import { type Clock, systemClock } from "../util/clock.ts";
import { StowageError } from "../util/errors.ts";
import { isConflict, type KubeObject, type ObjectClient } from "./client.ts";

export interface WithStatus<S> extends KubeObject {
  status?: S;
}

export interface WriteStatusOptions {
  clock?: Clock;
  /** Attempts before giving up on conflicts (default 5). */
  maxAttempts?: number;
  /** First delay after a conflict; doubles each time (default 20 ms). */
  backoffMs?: number;
  /**
   * The reconcile's signal: once aborted (the controller stopped, at shutdown or on losing the
   * lease) nothing is written, so a reconcile abandoned then cannot write a stale status over the
   * next leader's.
   */
  signal?: AbortSignal;
}

export interface WriteStatusResult<T> {
  /** False when the mutation left the status unchanged and nothing was sent. */
  written: boolean;
  object: T;
}

/**
 * Write `mutate(status)` through the /status subresource with a PUT that carries the
 * object's resourceVersion. On 409 Conflict it re-reads the object, applies `mutate` to the
 * fresh status and tries again with backoff. When the mutated status equals the current one
 * nothing is written, so a steady state costs zero API writes.
 */
export async function writeStatus<S, T extends WithStatus<S>>(
  objects: ObjectClient<T>,
  obj: T,
  mutate: (status: S | undefined, obj: T) => S,
  options: WriteStatusOptions = {},
): Promise<WriteStatusResult<T>> {
  const clock = options.clock ?? systemClock;
  const maxAttempts = options.maxAttempts ?? 5;
  let delayMs = options.backoffMs ?? 20;
  let current = obj;
  for (let attempt = 1; ; attempt++) {
    const desired = mutate(structuredClone(current.status), current);
    if (sameJson(desired, current.status)) return { written: false, object: current };
    if (options.signal?.aborted) {
      throw new StowageError(
        "Aborted",
        `not writing status of ${objects.type.kind} ${current.metadata?.namespace ?? ""}/${current.metadata?.name}: the controller stopped (shutdown or lost leadership)`,
      );
    }
    try {
      const object = await objects.updateStatus({ ...current, status: desired });
      return { written: true, object };
    } catch (err) {
      if (!isConflict(err)) throw err;
      if (attempt >= maxAttempts) {
        throw new StowageError(
          "Conflict",
          `status of ${objects.type.kind} ${current.metadata?.namespace ?? ""}/${current.metadata?.name} kept changing underneath; gave up after ${attempt} attempts`,
          { cause: err, retryable: true },
        );
      }
      await clock.sleep(delayMs);
      delayMs *= 2;
      current = await objects.get(current.metadata?.name ?? "", current.metadata?.namespace);
    }
  }
}

/** The object's metadata.generation, for `status.observedGeneration`. */
export function observedGeneration(obj: KubeObject): number | undefined {
  return obj.metadata?.generation;
}

/** Equal once serialised: `undefined` members and key order do not count as changes. */
export function sameJson(a: unknown, b: unknown): boolean {
  const fast = plainJsonEqual(a, b);
  return fast ?? isDeepStrictEqual(normalise(a), normalise(b));
}

/**
 * `sameJson` over plain JSON data (objects, arrays, strings, finite numbers, booleans, null,
 * undefined members) without serialising: every status write compares two statuses, and the
 * round trip through JSON made a sizeable share of the controller's garbage at 2,000
 * ModelImages (bench:controller). Undefined when a value is anything else (a Date, a NaN, an
 * undefined array element...): the caller then serialises, as before.
 */
function plainJsonEqual(a: unknown, b: unknown): boolean | undefined {
  const ta = typeof a;
  const tb = typeof b;
  const jsonType = (t: string) =>
    t === "string" || t === "boolean" || t === "number" || t === "object" || t === "undefined";
  if (!jsonType(ta) || !jsonType(tb)) return undefined;
  if ((ta === "number" && !Number.isFinite(a)) || (tb === "number" && !Number.isFinite(b))) return undefined;
  if (a === b) return true;
  // A Date or other class instance serialises through its toJSON: compare serialised.
  const notPlain = (v: unknown) =>
    v !== null && typeof v === "object" && !Array.isArray(v) && Object.getPrototypeOf(v) !== Object.prototype;
  if (notPlain(a) || notPlain(b)) return undefined;
  if (a === null || b === null || ta !== "object" || tb !== "object") return false;
  const arrayA = Array.isArray(a);
  if (arrayA !== Array.isArray(b)) return false;
  if (arrayA) {
    const x = a as unknown[];
    const y = b as unknown[];
    if (x.length !== y.length) return false;
    for (let i = 0; i < x.length; i++) {
      if (x[i] === undefined || y[i] === undefined) return undefined;
      const equal = plainJsonEqual(x[i], y[i]);
      if (equal !== true) return equal;
    }
    return true;
  }
  const x = a as Record<string, unknown>;
  const y = b as Record<string, unknown>;
  let definedInX = 0;
  for (const key in x) {
    if (x[key] === undefined) continue;
    definedInX++;
    const equal = plainJsonEqual(x[key], y[key]);
    if (equal !== true) return equal;
  }
  let definedInY = 0;
  for (const key in y) if (y[key] !== undefined) definedInY++;
  return definedInX === definedInY;
}

function normalise(value: unknown): unknown {
  return value === undefined ? undefined : JSON.parse(JSON.stringify(value));
}
