/**
 * `--cache-size-budget`: how many bytes of the cache registry images nobody declared may take.
 * Accepts plain bytes or a Kubernetes-style quantity (Ki, Mi, Gi, Ti binary; K, M, G, T decimal).
 */
import { UsageError } from "../../util/flags.ts";

const UNITS: Record<string, number> = {
  "": 1,
  k: 1e3,
  K: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
};

/** Bytes of a size such as "500Gi" or "1073741824"; undefined when not given. */
export function parseByteSize(value: string | undefined, flag: string): number | undefined {
  if (value === undefined || value.trim() === "") return undefined;
  const match = /^(\d+(?:\.\d+)?)\s*([kKMGT]i?|)$/.exec(value.trim());
  const unit = match ? UNITS[match[2]] : undefined;
  if (!match || unit === undefined) {
    throw new UsageError(`--${flag} must be a size such as 200Gi, 500G or 1073741824, got "${value}"`);
  }
  return Math.floor(Number(match[1]) * unit);
}
