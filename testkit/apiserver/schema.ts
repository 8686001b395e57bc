import { compileCel, evaluateCel, toCelValue, usesOldSelf } from "./cel.ts";
import { badRequest, type FieldError, fieldErrors, invalid, quoteValue } from "./errors.ts";
import type { ResourceDef } from "./resources.ts";
import type { WriteContext } from "./rest.ts";
import { clone, deepEqual, isPlainObject, type Json, type KubeObject } from "./types.ts";

/**
 * Structural schema handling for custom resources, in the real server's order: prune unknown fields
 * (or reject them with fieldValidation=Strict), apply defaults (nulls of non-nullable fields are
 * dropped first), then validate (OpenAPI value validations, then `x-kubernetes-validations` CEL).
 * Hand-written rather than ajv: Kubernetes semantics (pruning, defaulting inside nested objects,
 * int-or-string, list-type map/set, CEL with oldSelf correlation, field paths like `spec.items[0].name`
 * and the apiserver's exact messages) do not map onto JSON Schema's keywords and error objects.
 */
export function validateCustomResource(
  def: ResourceDef,
  obj: KubeObject,
  old: KubeObject | undefined,
  ctx: WriteContext,
): KubeObject {
  const schema = def.schema;
  const result = clone(obj);
  const unknown: string[] = [];
  for (const [key, value] of Object.entries(result)) {
    if (key === "apiVersion" || key === "kind" || key === "metadata") continue;
    const propSchema = schema?.properties?.[key];
    if (!propSchema) {
      if (!schema?.["x-kubernetes-preserve-unknown-fields"]) {
        unknown.push(key);
        delete result[key];
      }
      continue;
    }
    result[key] = prune(value, propSchema, key, unknown);
  }
  if (unknown.length > 0) {
    const mode = ctx.fieldValidation ?? "Warn";
    if (mode === "Strict")
      throw badRequest(
        `${def.kind} in version "${def.version}" cannot be handled as a ${def.kind}: strict decoding error: ${unknown.map((p) => `unknown field "${p}"`).join(", ")}`,
      );
    if (mode === "Warn") for (const path of unknown) ctx.warnings.push(`unknown field "${path}"`);
  }
  for (const [key, propSchema] of Object.entries<Json>(schema?.properties ?? {})) {
    if (key === "metadata" || key === "apiVersion" || key === "kind") continue;
    if (result[key] === null && !propSchema.nullable) delete result[key];
    if (result[key] === undefined && propSchema.default !== undefined)
      result[key] = clone(propSchema.default);
    if (result[key] !== undefined) result[key] = applyDefaults(result[key], propSchema);
  }

  const errors: FieldError[] = [];
  validateName(result, errors);
  for (const [key, propSchema] of Object.entries<Json>(schema?.properties ?? {})) {
    if (key === "apiVersion" || key === "kind" || key === "metadata" || result[key] === undefined) continue;
    validateValue(result[key], propSchema, key, old?.[key], old !== undefined, errors);
  }
  for (const key of schema?.required ?? []) {
    if (result[key] === undefined) errors.push(fieldErrors.required(key));
  }
  // CEL rules run after the OpenAPI checks, on the whole object, unless one of those found an
  // error that makes evaluating rules meaningless (customresource strategy's hasBlockingErr)
  if (errors.some((e) => blockingReasons.has(e.reason))) {
    if (hasRules(schema))
      errors.push(
        fieldErrors.invalid(
          "<nil>",
          null,
          "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
        ),
      );
  } else runAllRules(result, schema, "", old, old !== undefined, errors, true);
  if (errors.length > 0) throw invalid(def.kind, def.group, result.metadata.name ?? "", errors);
  return result;
}

/** Errors after which the real server does not evaluate CEL rules. */
const blockingReasons = new Set([
  "FieldValueNotSupported",
  "FieldValueRequired",
  "FieldValueTooLong",
  "FieldValueTooMany",
  "FieldValueTypeInvalid",
]);

function hasRules(schema: Json): boolean {
  if (!isPlainObject(schema)) return false;
  if (Array.isArray(schema["x-kubernetes-validations"]) && schema["x-kubernetes-validations"].length > 0)
    return true;
  return (
    Object.values<Json>(schema.properties ?? {}).some(hasRules) ||
    hasRules(schema.items) ||
    hasRules(schema.additionalProperties) ||
    (schema.allOf ?? []).some(hasRules)
  );
}

/**
 * Every `x-kubernetes-validations` rule of the schema on the values present, as the CEL validator
 * walks them: a node's own rules, then its allOf, then its items or properties.
 */
function runAllRules(
  value: Json,
  schema: Json,
  path: string,
  old: Json,
  isUpdate: boolean,
  errors: FieldError[],
  root = false,
): void {
  if (!isPlainObject(schema) || value === undefined || value === null) return;
  if (schema["x-kubernetes-validations"]) runRules(value, schema, path, old, isUpdate, errors);
  for (const sub of schema.allOf ?? []) runAllRules(value, sub, path, old, isUpdate, errors);
  if (Array.isArray(value)) {
    const oldByKey = correlateList(old, schema);
    for (const [i, item] of value.entries())
      runAllRules(item, schema.items, `${path}[${i}]`, oldByKey?.(item), isUpdate, errors);
    return;
  }
  if (!isPlainObject(value)) return;
  for (const [key, child] of Object.entries(value)) {
    if (root && (key === "apiVersion" || key === "kind" || key === "metadata")) continue;
    const oldChild = isPlainObject(old) ? old[key] : undefined;
    const propSchema = schema.properties?.[key];
    if (propSchema) runAllRules(child, propSchema, childPath(path, key), oldChild, isUpdate, errors);
    else if (isPlainObject(schema.additionalProperties))
      runAllRules(child, schema.additionalProperties, `${path}[${key}]`, oldChild, isUpdate, errors);
  }
}

const dnsSubdomain = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

function validateName(obj: KubeObject, errors: FieldError[]): void {
  const name = obj.metadata.name;
  if (!name && !obj.metadata.generateName)
    errors.push(fieldErrors.required("metadata.name", "name or generateName is required"));
  if (name && (!dnsSubdomain.test(name) || name.length > 253))
    errors.push(
      fieldErrors.invalid(
        "metadata.name",
        name,
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
      ),
    );
}

function childPath(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

function preservesUnknown(schema: Json): boolean {
  return !!schema?.["x-kubernetes-preserve-unknown-fields"];
}

function prune(value: Json, schema: Json, path: string, unknown: string[]): Json {
  if (!schema || value === null || value === undefined) return value;
  if (Array.isArray(value)) {
    return schema.items ? value.map((item, i) => prune(item, schema.items, `${path}[${i}]`, unknown)) : value;
  }
  if (!isPlainObject(value)) return value;
  if (schema["x-kubernetes-embedded-resource"] && !schema.properties) return value;
  const out: Json = {};
  for (const [key, child] of Object.entries(value)) {
    const propSchema = schema.properties?.[key];
    if (propSchema) out[key] = prune(child, propSchema, childPath(path, key), unknown);
    else if (isPlainObject(schema.additionalProperties))
      out[key] = prune(child, schema.additionalProperties, childPath(path, key), unknown);
    else if (
      schema.additionalProperties === true ||
      preservesUnknown(schema) ||
      (schema["x-kubernetes-embedded-resource"] && ["apiVersion", "kind", "metadata"].includes(key))
    )
      out[key] = child;
    else unknown.push(childPath(path, key));
  }
  return out;
}

function applyDefaults(value: Json, schema: Json): Json {
  if (!schema || value === null || value === undefined) return value;
  if (Array.isArray(value))
    return schema.items ? value.map((item) => applyDefaults(item, schema.items)) : value;
  if (!isPlainObject(value)) return value;
  const out: Json = { ...value };
  for (const [key, propSchema] of Object.entries<Json>(schema.properties ?? {})) {
    if (out[key] === null && !propSchema.nullable) delete out[key];
    if (out[key] === undefined && propSchema.default !== undefined) out[key] = clone(propSchema.default);
    if (out[key] !== undefined) out[key] = applyDefaults(out[key], propSchema);
  }
  if (isPlainObject(schema.additionalProperties)) {
    for (const key of Object.keys(out)) {
      if (schema.properties?.[key]) continue;
      out[key] = applyDefaults(out[key], schema.additionalProperties);
    }
  }
  return out;
}

function typeName(value: Json): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  if (typeof value === "object") return "object";
  return typeof value;
}

function typeMatches(value: Json, schema: Json): boolean {
  if (schema["x-kubernetes-int-or-string"]) return typeof value === "string" || Number.isInteger(value);
  switch (schema.type) {
    case "string":
      return typeof value === "string";
    case "integer":
      return typeof value === "number" && Number.isInteger(value);
    case "number":
      return typeof value === "number";
    case "boolean":
      return typeof value === "boolean";
    case "object":
      return isPlainObject(value);
    case "array":
      return Array.isArray(value);
    default:
      return true;
  }
}

const formats: Record<string, RegExp> = {
  "date-time": /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/,
  date: /^\d{4}-\d{2}-\d{2}$/,
  duration: /^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/,
  uuid: /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/,
  hostname: /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/i,
  ipv4: /^(\d{1,3}\.){3}\d{1,3}$/,
  byte: /^[A-Za-z0-9+/]*={0,2}$/,
};

function validateValue(
  value: Json,
  schema: Json,
  path: string,
  old: Json,
  isUpdate: boolean,
  errors: FieldError[],
): void {
  if (!schema) return;
  if (value === null) {
    if (!schema.nullable)
      errors.push(
        fieldErrors.invalid(path, "null", `${path} in body must be of type ${schema.type}: "null"`),
      );
    return;
  }
  if (!typeMatches(value, schema)) {
    const expected = schema["x-kubernetes-int-or-string"] ? "integer,string" : schema.type;
    errors.push({
      reason: "FieldValueTypeInvalid",
      field: path,
      message: `${path}: Invalid value: "${typeName(value)}": ${path} in body must be of type ${expected}: "${typeName(value)}"`,
    });
    return;
  }
  if (Array.isArray(schema.enum) && !schema.enum.some((allowed: Json) => deepEqual(allowed, value))) {
    errors.push(fieldErrors.notSupported(path, value, schema.enum));
  }
  if (typeof value === "string") {
    const length = [...value].length;
    if (schema.maxLength !== undefined && length > schema.maxLength)
      errors.push(fieldErrors.tooLong(path, schema.maxLength));
    if (schema.minLength !== undefined && length < schema.minLength)
      errors.push(
        fieldErrors.invalid(path, value, `${path} in body should be at least ${schema.minLength} chars long`),
      );
    if (schema.pattern && !new RegExp(schema.pattern, "u").test(value))
      errors.push(fieldErrors.invalid(path, value, `${path} in body should match '${schema.pattern}'`));
    if (schema.format && formats[schema.format] && !formats[schema.format].test(value))
      errors.push(
        fieldErrors.invalid(
          path,
          value,
          `${path} in body must be of type ${schema.format}: ${JSON.stringify(value)}`,
        ),
      );
  }
  if (typeof value === "number") {
    if (schema.maximum !== undefined) {
      if (schema.exclusiveMaximum === true ? value >= schema.maximum : value > schema.maximum)
        errors.push(
          fieldErrors.invalid(
            path,
            value,
            `${path} in body should be less than ${schema.exclusiveMaximum === true ? "" : "or equal to "}${schema.maximum}`,
          ),
        );
    }
    if (schema.minimum !== undefined) {
      if (schema.exclusiveMinimum === true ? value <= schema.minimum : value < schema.minimum)
        errors.push(
          fieldErrors.invalid(
            path,
            value,
            `${path} in body should be greater than ${schema.exclusiveMinimum === true ? "" : "or equal to "}${schema.minimum}`,
          ),
        );
    }
    if (schema.multipleOf !== undefined && value % schema.multipleOf !== 0)
      errors.push(
        fieldErrors.invalid(path, value, `${path} in body should be a multiple of ${schema.multipleOf}`),
      );
  }
  if (Array.isArray(value)) {
    if (schema.maxItems !== undefined && value.length > schema.maxItems)
      errors.push(fieldErrors.tooMany(path, value.length, schema.maxItems));
    if (schema.minItems !== undefined && value.length < schema.minItems)
      errors.push(
        fieldErrors.invalid(
          path,
          value.length,
          `${path} in body should have at least ${schema.minItems} items`,
        ),
      );
    validateListType(value, schema, path, errors);
    const oldByKey = correlateList(old, schema);
    for (const [i, item] of value.entries())
      validateValue(item, schema.items, `${path}[${i}]`, oldByKey?.(item), isUpdate, errors);
  }
  if (isPlainObject(value)) {
    const count = Object.keys(value).length;
    if (schema.maxProperties !== undefined && count > schema.maxProperties)
      errors.push(fieldErrors.tooMany(path, count, schema.maxProperties));
    if (schema.minProperties !== undefined && count < schema.minProperties)
      errors.push(
        fieldErrors.invalid(
          path,
          count,
          `${path} in body should have at least ${schema.minProperties} properties`,
        ),
      );
    // declared properties in schema order, then map entries, then missing required fields
    for (const [key, propSchema] of Object.entries<Json>(schema.properties ?? {})) {
      if (value[key] === undefined) continue;
      const oldChild = isPlainObject(old) ? old[key] : undefined;
      validateValue(value[key], propSchema, childPath(path, key), oldChild, isUpdate, errors);
    }
    if (isPlainObject(schema.additionalProperties)) {
      for (const [key, child] of Object.entries(value)) {
        if (schema.properties?.[key]) continue;
        const oldChild = isPlainObject(old) ? old[key] : undefined;
        // the OpenAPI validator names map entries as fields (the CEL validator as keys: `[key]`)
        validateValue(child, schema.additionalProperties, `${path}.${key}`, oldChild, isUpdate, errors);
      }
    }
    for (const key of schema.required ?? []) {
      if (value[key] === undefined) errors.push(fieldErrors.required(childPath(path, key)));
    }
  }
  for (const sub of schema.allOf ?? [])
    validateValue(value, { ...sub, type: sub.type ?? schema.type }, path, old, isUpdate, errors);
  if (Array.isArray(schema.anyOf) && !schema.anyOf.some((sub: Json) => passes(value, sub, path)))
    errors.push(fieldErrors.invalid(path, value, `${path} in body must match at least one schema (anyOf)`));
  if (
    Array.isArray(schema.oneOf) &&
    schema.oneOf.filter((sub: Json) => passes(value, sub, path)).length !== 1
  )
    errors.push(fieldErrors.invalid(path, value, `${path} in body must match exactly one schema (oneOf)`));
  if (schema.not && passes(value, schema.not, path))
    errors.push(fieldErrors.invalid(path, value, `${path} in body must not match the schema (not)`));
}

function passes(value: Json, schema: Json, path: string): boolean {
  const errors: FieldError[] = [];
  validateValue(value, schema, path, undefined, false, errors);
  return errors.length === 0;
}

function listMapKey(item: Json, keys: string[]): string {
  return JSON.stringify(keys.map((k) => (isPlainObject(item) ? item[k] : undefined)));
}

function validateListType(value: Json[], schema: Json, path: string, errors: FieldError[]): void {
  const listType = schema["x-kubernetes-list-type"];
  if (listType === "set" || schema.uniqueItems) {
    value.forEach((item, i) => {
      if (value.slice(0, i).some((earlier) => deepEqual(earlier, item)))
        errors.push(fieldErrors.duplicate(`${path}[${i}]`, item));
    });
  }
  if (listType === "map") {
    const keys: string[] = schema["x-kubernetes-list-map-keys"] ?? [];
    const seen = new Set<string>();
    value.forEach((item, i) => {
      const key = listMapKey(item, keys);
      if (seen.has(key)) {
        const shown: Json = {};
        for (const k of keys) shown[k] = item?.[k];
        errors.push(fieldErrors.duplicate(`${path}[${i}]`, shown));
      }
      seen.add(key);
    });
  }
}

/** Old items of a list-type map are matched to new ones by their keys (the only correlatable lists). */
function correlateList(old: Json, schema: Json): ((item: Json) => Json) | undefined {
  if (!Array.isArray(old) || schema["x-kubernetes-list-type"] !== "map") return undefined;
  const keys: string[] = schema["x-kubernetes-list-map-keys"] ?? [];
  const byKey = new Map(old.map((item) => [listMapKey(item, keys), item]));
  return (item) => byKey.get(listMapKey(item, keys));
}

const reasonFormat: Record<string, string> = {
  FieldValueRequired: "Required value",
  FieldValueForbidden: "Forbidden",
  FieldValueDuplicate: "Duplicate value",
};

/** A failed rule shows the value it judged when that is a scalar; objects and lists are left out. */
function celShownValue(value: Json): string {
  if (Array.isArray(value) || isPlainObject(value)) return "";
  return `${quoteValue(value)}: `;
}

function runRules(
  value: Json,
  schema: Json,
  path: string,
  old: Json,
  isUpdate: boolean,
  errors: FieldError[],
): void {
  const self = toCelValue(value, schema);
  for (const rule of schema["x-kubernetes-validations"] as Json[]) {
    const transition = usesOldSelf(rule.rule);
    if (transition && (!isUpdate || old === undefined)) continue;
    const context: Record<string, unknown> = { self };
    if (transition) context.oldSelf = toCelValue(old, schema);
    let message: string;
    try {
      if (evaluateCel(rule.rule, context) === true) continue;
      message = rule.message ?? `failed rule: ${rule.rule}`;
      if (rule.messageExpression) {
        try {
          const computed = evaluateCel(rule.messageExpression, context);
          if (typeof computed === "string" && computed.trim() !== "") message = computed;
        } catch {
          // the real server falls back to `message` when messageExpression fails
        }
      }
    } catch (err) {
      message = `${(err as Error).message.split("\n")[0]} evaluating rule: ${rule.rule}`;
    }
    const suffix = typeof rule.fieldPath === "string" ? rule.fieldPath.replace(/^\./, "") : "";
    const field = suffix ? childPath(path, suffix) : path || "<nil>";
    const reason = rule.reason ?? "FieldValueInvalid";
    const shown = reasonFormat[reason]
      ? `${field}: ${reasonFormat[reason]}: ${message}`
      : `${field}: Invalid value: ${celShownValue(value)}${message}`;
    errors.push({ reason, field, message: shown } as FieldError);
  }
}

/**
 * What the real server checks when a CRD is written: the schema is structural (every node has a
 * type unless int-or-string or preserve-unknown-fields; arrays have items; properties and
 * additionalProperties exclude each other), defaults validate against their schema, and CEL rules
 * compile. A CRD that passes here would pass on a real cluster for these reasons at least.
 */
export function structuralErrors(schema: Json, path: string): FieldError[] {
  const errors: FieldError[] = [];
  const walk = (node: Json, at: string, root: boolean) => {
    if (!isPlainObject(node)) return;
    const intOrString = !!node["x-kubernetes-int-or-string"];
    if (!node.type && !intOrString && !node["x-kubernetes-preserve-unknown-fields"])
      errors.push(fieldErrors.required(`${at}.type`, "must not be empty for specified object fields"));
    if (root && node.type && node.type !== "object")
      errors.push(fieldErrors.invalid(`${at}.type`, node.type, "must be object at the root"));
    if (node.type === "array" && !node.items)
      errors.push(fieldErrors.required(`${at}.items`, "must be specified"));
    if (node.properties && node.additionalProperties !== undefined && node.additionalProperties !== false)
      errors.push(
        fieldErrors.forbidden(
          `${at}.additionalProperties`,
          "additionalProperties and properties are mutual exclusive",
        ),
      );
    if (node.default !== undefined) {
      const defaultErrors: FieldError[] = [];
      validateValue(node.default, node, `${at}.default`, undefined, false, defaultErrors);
      if (defaultErrors.length === 0)
        runAllRules(node.default, node, `${at}.default`, undefined, false, defaultErrors);
      errors.push(...defaultErrors);
    }
    for (const [i, rule] of (node["x-kubernetes-validations"] ?? []).entries()) {
      const rulePath = `${at}.x-kubernetes-validations[${i}].rule`;
      try {
        compileCel(rule.rule);
      } catch (err) {
        errors.push(
          fieldErrors.invalid(
            rulePath,
            rule.rule,
            `compilation failed: ${(err as Error).message.split("\n")[0]}`,
          ),
        );
      }
    }
    for (const [key, child] of Object.entries<Json>(node.properties ?? {}))
      walk(child, `${at}.properties[${key}]`, false);
    if (isPlainObject(node.additionalProperties))
      walk(node.additionalProperties, `${at}.additionalProperties`, false);
    if (isPlainObject(node.items)) walk(node.items, `${at}.items`, false);
  };
  walk(schema, path, true);
  return errors;
}
