import { formatTime } from "./time.ts";

/** A metav1.Condition, as kstatus, kubectl and Argo CD read it. */
export interface Condition {
  type: string;
  status: "True" | "False" | "Unknown";
  reason: string;
  message: string;
  observedGeneration?: number;
  lastTransitionTime: string;
}

export type ConditionInput = Omit<Condition, "lastTransitionTime">;

/**
 * The conditions with `input` set. `lastTransitionTime` changes only when the status flips
 * (or the condition is new), so a steady state produces an identical list — and no write.
 */
export function setCondition(
  conditions: readonly Condition[] | undefined,
  input: ConditionInput,
  now: number,
): Condition[] {
  const list = [...(conditions ?? [])];
  const index = list.findIndex((c) => c.type === input.type);
  const existing = index >= 0 ? list[index] : undefined;
  const lastTransitionTime =
    existing && existing.status === input.status ? existing.lastTransitionTime : formatTime(now);
  const next: Condition = {
    type: input.type,
    status: input.status,
    reason: input.reason,
    message: input.message,
    ...(input.observedGeneration !== undefined ? { observedGeneration: input.observedGeneration } : {}),
    lastTransitionTime,
  };
  if (index >= 0) list[index] = next;
  else list.push(next);
  return list;
}

/**
 * `next` with each condition's lastTransitionTime as `stored` has it wherever the status did not
 * change against `stored`. A status computed in steps (one step sets Ready True, the next sets it
 * False again) is a transition only against what is stored; otherwise every pass that ends
 * where it began would move the time, and write.
 */
export function keepTransitionTimes(
  stored: readonly Condition[] | undefined,
  next: readonly Condition[],
): Condition[] {
  return next.map((condition) => {
    const before = stored?.find((c) => c.type === condition.type);
    return before &&
      before.status === condition.status &&
      before.lastTransitionTime !== condition.lastTransitionTime
      ? { ...condition, lastTransitionTime: before.lastTransitionTime }
      : condition;
  });
}

export function getCondition(
  conditions: readonly Condition[] | undefined,
  type: string,
): Condition | undefined {
  return conditions?.find((c) => c.type === type);
}

export function isConditionTrue(conditions: readonly Condition[] | undefined, type: string): boolean {
  return getCondition(conditions, type)?.status === "True";
}

export function removeCondition(conditions: readonly Condition[] | undefined, type: string): Condition[] {
  return (conditions ?? []).filter((c) => c.type !== type);
}
