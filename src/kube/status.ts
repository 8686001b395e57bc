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
  return isDeepStrictEqual(normalise(a), normalise(b));
}

function normalise(value: unknown): unknown {
  return value === undefined ? undefined : JSON.parse(JSON.stringify(value));
}
