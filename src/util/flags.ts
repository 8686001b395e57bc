/**
 * Flag parsing shared by the long-running commands (`controller`, `agent`). node:util
 * parseArgs does the parsing; this adds what Kubernetes operators are configured with and
 * parseArgs lacks: `--flag=false` booleans, STOWAGE_* environment fallbacks, and typed values
 * with one-line errors that name the flag.
 */
import { isIP } from "node:net";
import { parseDuration } from "./duration.ts";

/** Bad usage: the command prints the message in one line and exits 2. */
export class UsageError extends Error {}

/** `--name false` and a bare `--name` become `--name=false|true` for the given boolean flags. */
export function normaliseBooleanFlags(args: string[], booleanFlags: ReadonlySet<string>): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const name = arg.startsWith("--") ? arg.slice(2) : "";
    if (booleanFlags.has(name)) {
      const next = args[i + 1];
      if (next === "true" || next === "false") {
        out.push(`${arg}=${next}`);
        i++;
      } else out.push(`${arg}=true`);
    } else out.push(arg);
  }
  return out;
}

export function booleanFlag(value: string | undefined, flag: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (value === "true" || value === "1") return true;
  if (value === "false" || value === "0") return false;
  throw new UsageError(`--${flag} must be true or false, got "${value}"`);
}

/** An IP address to listen on (`0.0.0.0` all IPv4, `::` all addresses, `127.0.0.1` loopback only). */
export function bindAddressFlag(value: string | undefined, flag: string, fallback: string): string {
  if (value === undefined) return fallback;
  if (isIP(value) === 0) {
    throw new UsageError(`--${flag} must be an IP address such as 0.0.0.0, :: or 127.0.0.1, got "${value}"`);
  }
  return value;
}

export function integerFlag(
  value: string | undefined,
  flag: string,
  fallback: number,
  min: number,
  max: number,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(`--${flag} must be an integer from ${min} to ${max}, got "${value}"`);
  }
  return n;
}

/** A positive Go-style duration (`30s`, `5m`, `1h30m`) in milliseconds. */
export function durationFlag(value: string | undefined, flag: string, fallbackMs: number): number {
  if (value === undefined) return fallbackMs;
  try {
    const ms = parseDuration(value);
    if (ms > 0) return ms;
  } catch {
    // reported below, with the flag's name
  }
  throw new UsageError(`--${flag} must be a positive duration like 30s or 5m, got "${value}"`);
}

/** The environment variable a flag falls back to: `--cache-registry` → `STOWAGE_CACHE_REGISTRY`. */
export function envName(flag: string): string {
  return `STOWAGE_${flag.toUpperCase().replaceAll("-", "_")}`;
}
