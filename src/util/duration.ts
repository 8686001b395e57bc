/**
 * Durations in Go's `time.ParseDuration` syntax (`300ms`, `1.5h`, `2h45m`), the syntax the
 * Kubernetes CEL `duration()` function and every Kubernetes user already know. Negative
 * durations are refused: nothing in the API means "before now".
 */
import { StowageError } from "../util/errors.ts";

const NANOS_PER_UNIT: Record<string, bigint> = {
  ns: 1n,
  us: 1_000n,
  µs: 1_000n, // U+00B5 micro sign
  μs: 1_000n, // U+03BC Greek mu
  ms: 1_000_000n,
  s: 1_000_000_000n,
  m: 60_000_000_000n,
  h: 3_600_000_000_000n,
};

/** Go's limit: a duration is an int64 count of nanoseconds. */
const MAX_NANOS = 2n ** 63n - 1n;

/**
 * The same syntax as a single regular expression, shared with the CRD's `pattern` (a test keeps
 * them equal). Every number carries a unit, so the bare `0` Go accepts is refused here: write `0s`.
 * (`duration('0')` also fails in the CEL library the API test double uses.)
 */
export const DURATION_PATTERN = "^(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$";

function invalid(input: string, why: string): StowageError {
  return new StowageError("InvalidArgument", `invalid duration "${input}": ${why}`);
}

/** Parse to nanoseconds, exactly (fractions are truncated to the nanosecond as Go does). */
export function parseDurationNanos(input: string): bigint {
  if (input.length === 0) throw invalid(input, "empty");
  if (input.startsWith("-")) throw invalid(input, "negative durations are not allowed");
  let rest = input.startsWith("+") ? input.slice(1) : input;
  if (rest === "0") return 0n;
  if (rest.length === 0) throw invalid(input, "no number");
  let total = 0n;
  while (rest.length > 0) {
    const match = /^([0-9]*)(?:\.([0-9]*))?/.exec(rest);
    const whole = match?.[1] ?? "";
    const fraction = match?.[2] ?? "";
    if (whole === "" && fraction === "") throw invalid(input, `expected a number at "${rest}"`);
    rest = rest.slice(match?.[0].length ?? 0);
    const unit = /^[^0-9.]+/.exec(rest)?.[0];
    if (!unit) throw invalid(input, "missing unit (use ns, us, ms, s, m or h)");
    const scale = NANOS_PER_UNIT[unit];
    if (scale === undefined) throw invalid(input, `unknown unit "${unit}" (use ns, us, ms, s, m or h)`);
    rest = rest.slice(unit.length);
    let nanos = BigInt(whole || "0") * scale;
    if (fraction !== "") nanos += (BigInt(fraction) * scale) / 10n ** BigInt(fraction.length);
    total += nanos;
    if (total > MAX_NANOS) throw invalid(input, "too long (the maximum is about 2562047h)");
  }
  return total;
}

/** Parse to milliseconds (fractional when the duration is not a whole number of them). */
export function parseDuration(input: string): number {
  return Number(parseDurationNanos(input)) / 1e6;
}

/** Go's `Duration.String()`: `10m0s`, `1h30m0s`, `1.5s`, `300ms`, `0s`. */
export function formatDuration(ms: number): string {
  return formatDurationNanos(BigInt(Math.round(ms * 1e6)));
}

export function formatDurationNanos(nanos: bigint): string {
  if (nanos === 0n) return "0s";
  const sign = nanos < 0n ? "-" : "";
  const abs = nanos < 0n ? -nanos : nanos;
  if (abs < 1_000n) return `${sign}${abs}ns`;
  if (abs < 1_000_000n) return `${sign}${decimal(abs, 1_000n)}µs`;
  if (abs < 1_000_000_000n) return `${sign}${decimal(abs, 1_000_000n)}ms`;
  const hours = abs / NANOS_PER_UNIT.h;
  const minutes = (abs % NANOS_PER_UNIT.h) / NANOS_PER_UNIT.m;
  const seconds = decimal(abs % NANOS_PER_UNIT.m, NANOS_PER_UNIT.s);
  if (hours > 0n) return `${sign}${hours}h${minutes}m${seconds}s`;
  if (minutes > 0n) return `${sign}${minutes}m${seconds}s`;
  return `${sign}${seconds}s`;
}

/** `value / unit` with the fraction's trailing zeros dropped: 1500/1000 → "1.5". */
function decimal(value: bigint, unit: bigint): string {
  const whole = value / unit;
  const remainder = value % unit;
  if (remainder === 0n) return `${whole}`;
  const digits = unit.toString().length - 1;
  return `${whole}.${remainder.toString().padStart(digits, "0").replace(/0+$/, "")}`;
}
