import { describe, expect, it } from "vitest";
import { systemClock } from "../../src/util/clock.ts";
import { clampTimerMs, MAX_TIMER_MS } from "../../src/util/timer.ts";

describe("timers", () => {
  it("clamps delays to what setTimeout can honour (2^31-1 ms) and negative or NaN delays to zero", () => {
    expect(MAX_TIMER_MS).toBe(2 ** 31 - 1);
    expect(clampTimerMs(720 * 3_600_000)).toBe(MAX_TIMER_MS);
    expect(clampTimerMs(Number.POSITIVE_INFINITY)).toBe(MAX_TIMER_MS);
    expect(clampTimerMs(-5)).toBe(0);
    expect(clampTimerMs(Number.NaN)).toBe(0);
    expect(clampTimerMs(1500)).toBe(1500);
  });

  it("does not wake a 720h sleep at once, as an overflowing setTimeout would", async () => {
    const abort = new AbortController();
    let woke = false;
    const sleeping = systemClock.sleep(720 * 3_600_000, abort.signal).then(
      () => {
        woke = true;
      },
      () => undefined,
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(woke).toBe(false);
    abort.abort(new Error("test over"));
    await sleeping;
  });
});
