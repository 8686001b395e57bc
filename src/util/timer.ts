/**
 * Node's timers hold a signed 32-bit count of milliseconds: a delay past 2^31-1 ms (about 24.8
 * days; a `720h` sync interval is past it) is replaced by 1 ms with only a warning, so a long
 * wait turns into a busy loop. Every delay handed to a timer goes through `clampTimerMs`.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** The delay a timer can honour: at most 2^31-1 ms; negative or NaN delays are zero. */
export function clampTimerMs(ms: number): number {
  if (Number.isNaN(ms) || ms <= 0) return 0;
  return Math.min(ms, MAX_TIMER_MS);
}
