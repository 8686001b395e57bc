import { Environment } from "@marcbachmann/cel-js";
import { isPlainObject, type Json } from "./types.ts";

/**
 * `x-kubernetes-validations` rules evaluated with @marcbachmann/cel-js. The library already gives the
 * CEL standard library plus `matches`, `size`, `has`, the macros (`all`, `exists`, `exists_one`, `map`,
 * `filter`), string `startsWith/endsWith/contains/lowerAscii/upperAscii/split/trim/indexOf/substring/join`,
 * `duration` and `timestamp`; the Kubernetes string extras it lacks are registered here.
 */
const environment = new Environment({
  unlistedVariablesAreDyn: true,
  homogeneousAggregateLiterals: false,
  // Kubernetes CEL has optionals (`self.?field.orValue(x)`) since 1.29
  enableOptionalTypes: true,
})
  .registerFunction("string.replace(string, string): string", (self: string, from: string, to: string) =>
    self.split(from).join(to),
  )
  .registerFunction("isURL(string): bool", (value: string) => {
    try {
      new URL(value);
      return true;
    } catch {
      return false;
    }
  });

type Compiled = (context: Record<string, unknown>) => unknown;
const cache = new Map<string, Compiled | Error>();

export function compileCel(expression: string): Compiled {
  let compiled = cache.get(expression);
  if (!compiled) {
    try {
      compiled = environment.parse(expression) as unknown as Compiled;
    } catch (err) {
      compiled = err instanceof Error ? err : new Error(String(err));
    }
    cache.set(expression, compiled);
  }
  if (compiled instanceof Error) throw compiled;
  return compiled;
}

export function usesOldSelf(rule: string): boolean {
  return /\boldSelf\b/.test(rule);
}

/** Evaluate an expression; throws the library's error (compile or evaluation) for the caller to report. */
export function evaluateCel(expression: string, context: Record<string, unknown>): unknown {
  return compileCel(expression)(context);
}

/** JSON → CEL values: integers the schema declares as `integer` become int (bigint), the rest stays. */
export function toCelValue(value: Json, schema: Json): unknown {
  if (value === null || value === undefined) return value;
  if (Array.isArray(value)) return value.map((item) => toCelValue(item, schema?.items));
  if (isPlainObject(value)) {
    const out: Record<string, unknown> = {};
    for (const [key, child] of Object.entries(value)) {
      const childSchema =
        schema?.properties?.[key] ??
        (isPlainObject(schema?.additionalProperties) ? schema.additionalProperties : undefined);
      out[key] = toCelValue(child, childSchema);
    }
    return out;
  }
  if (
    typeof value === "number" &&
    Number.isInteger(value) &&
    (schema?.type === "integer" || schema?.["x-kubernetes-int-or-string"])
  )
    return BigInt(value);
  return value;
}
