import { expect } from "vitest";

/** The structural part of an openAPIV3Schema that a typed sample is compared with. */
export type Schema = {
  type?: string;
  properties?: Record<string, Schema>;
  items?: Schema;
  additionalProperties?: Schema | boolean;
};

/** Paths where the schema and the sample disagree: "+path" only in the sample, "-path" only in the schema. */
export function drift(schema: Schema, sample: unknown, path: string): string[] {
  if (schema.type === "array") {
    expect(Array.isArray(sample) && sample.length > 0, `${path} has an item in the sample`).toBe(true);
    return schema.items ? drift(schema.items, (sample as unknown[])[0], `${path}[]`) : [];
  }
  if (schema.type !== "object" || !schema.properties) return [];
  const fields = sample as Record<string, unknown>;
  const out: string[] = [];
  for (const key of Object.keys(fields)) if (!schema.properties[key]) out.push(`+${path}.${key}`);
  for (const [key, child] of Object.entries(schema.properties)) {
    if (fields[key] === undefined) out.push(`-${path}.${key}`);
    else out.push(...drift(child, fields[key], `${path}.${key}`));
  }
  return out;
}
