import { describe, expect, it } from "vitest";
import { formatDuration, parseDuration, parseDurationNanos } from "../../src/api/duration.ts";

describe("parseDuration", () => {
  it.each([
    ["300ms", 300],
    ["10m", 600_000],
    ["1h30m", 5_400_000],
    ["2h45m", 9_900_000],
    ["1.5h", 5_400_000],
    [".5s", 500],
    ["1h0m0.25s", 3_600_250],
    ["1500us", 1.5],
    ["1500µs", 1.5],
    ["2ns", 0.000002],
    ["0", 0],
    ["0s", 0],
    ["+5s", 5000],
  ])("reads %s as Go does (%d ms)", (input, ms) => {
    expect(parseDuration(input)).toBe(ms);
  });

  it("keeps nanosecond precision and truncates finer fractions like Go", () => {
    expect(parseDurationNanos("1.0000000009s")).toBe(1_000_000_000n);
    expect(parseDurationNanos("1h1ns")).toBe(3_600_000_000_001n);
  });

  it.each([
    ["", "empty"],
    ["-1m", "negative"],
    ["10", "missing unit"],
    ["1d", 'unknown unit "d"'],
    ["ten minutes", "expected a number"],
    ["1h 30m", 'unknown unit "h "'],
    [".s", "expected a number"],
    ["9999999h", "too long"],
  ])("refuses %j (%s)", (input, why) => {
    expect(() => parseDuration(input)).toThrow(why);
    try {
      parseDuration(input);
    } catch (err) {
      expect((err as { reason?: string }).reason).toBe("InvalidArgument");
    }
  });
});

describe("formatDuration", () => {
  it.each([
    [0, "0s"],
    [300, "300ms"],
    [1500, "1.5s"],
    [600_000, "10m0s"],
    [5_400_000, "1h30m0s"],
    [9_900_000, "2h45m0s"],
    [90_061_001, "25h1m1.001s"],
    [0.0015, "1.5µs"],
    [0.000002, "2ns"],
    [-60_000, "-1m0s"],
  ])("writes %d ms as %s, like Go's Duration.String", (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
  });

  it("reads back what it writes", () => {
    for (const ms of [1, 999, 30_000, 86_400_000, 123_456_789])
      expect(parseDuration(formatDuration(ms))).toBe(ms);
  });
});
