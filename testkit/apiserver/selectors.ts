import { badRequest } from "./errors.ts";
import type { Json, KubeObject } from "./types.ts";

/** Label selectors in the string form of apimachinery's labels.Parse. */
type LabelRequirement =
  | { key: string; op: "=" | "!="; value: string }
  | { key: string; op: "in" | "notin"; values: string[] }
  | { key: string; op: "exists" | "!" }
  | { key: string; op: "gt" | "lt"; value: number };

export type LabelSelector = LabelRequirement[];

function splitTopLevel(text: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let current = "";
  for (const ch of text) {
    if (ch === "(") depth++;
    if (ch === ")") depth--;
    if (ch === "," && depth === 0) {
      parts.push(current);
      current = "";
    } else current += ch;
  }
  parts.push(current);
  return parts.map((p) => p.trim()).filter((p) => p.length > 0);
}

const labelKey = /^([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?\/)?[a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?$/;
const labelValue = /^([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?)?$/;

function checkKey(key: string, raw: string): string {
  if (!labelKey.test(key))
    throw badRequest(`unable to parse requirement: invalid label key "${key}" in "${raw}"`);
  return key;
}

function checkValue(value: string, raw: string): string {
  if (!labelValue.test(value) || value.length > 63)
    throw badRequest(`unable to parse requirement: invalid label value: "${value}" in "${raw}"`);
  return value;
}

export function parseLabelSelector(text: string | undefined | null): LabelSelector {
  if (!text) return [];
  return splitTopLevel(text).map((raw): LabelRequirement => {
    let m = /^(\S+)\s+(in|notin)\s*\(([^)]*)\)$/.exec(raw);
    if (m) {
      const values = m[3]
        .split(",")
        .map((v) => v.trim())
        .map((v) => checkValue(v, raw));
      return { key: checkKey(m[1], raw), op: m[2] as "in" | "notin", values };
    }
    m = /^!\s*(\S+)$/.exec(raw);
    if (m) return { key: checkKey(m[1], raw), op: "!" };
    m = /^([^=!<>\s]+)\s*(==|=|!=)\s*(\S*)$/.exec(raw);
    if (m) return { key: checkKey(m[1], raw), op: m[2] === "!=" ? "!=" : "=", value: checkValue(m[3], raw) };
    m = /^([^=!<>\s]+)\s*([<>])\s*(-?\d+)$/.exec(raw);
    if (m) return { key: checkKey(m[1], raw), op: m[2] === ">" ? "gt" : "lt", value: Number(m[3]) };
    if (/^[^=!<>\s()]+$/.test(raw)) return { key: checkKey(raw, raw), op: "exists" };
    throw badRequest(`unable to parse requirement: found '${raw}', expected: in, notin, =, ==, !=, gt, lt`);
  });
}

export function matchesLabels(selector: LabelSelector, labels: Record<string, string> | undefined): boolean {
  const set = labels ?? {};
  return selector.every((req) => {
    const has = Object.hasOwn(set, req.key);
    const actual = set[req.key];
    switch (req.op) {
      case "=":
        return has && actual === req.value;
      case "!=":
        return !has || actual !== req.value;
      case "in":
        return has && req.values.includes(actual);
      case "notin":
        return !has || !req.values.includes(actual);
      case "exists":
        return has;
      case "!":
        return !has;
      case "gt":
        return has && /^-?\d+$/.test(actual) && Number(actual) > req.value;
      case "lt":
        return has && /^-?\d+$/.test(actual) && Number(actual) < req.value;
    }
    return false;
  });
}

/** Field selectors: `field=value`, `field==value`, `field!=value`, comma-joined. */
export interface FieldRequirement {
  field: string;
  op: "=" | "!=";
  value: string;
}

export function parseFieldSelector(
  text: string | undefined | null,
  supported: readonly string[],
): FieldRequirement[] {
  if (!text) return [];
  return splitTopLevel(text).map((raw) => {
    const m = /^([^=!]+?)\s*(==|=|!=)\s*(.*)$/.exec(raw);
    if (!m) throw badRequest(`invalid selector: '${text}'; can't understand '${raw}'`);
    const field = m[1].trim();
    if (!supported.includes(field))
      throw badRequest(
        `"${field}" is not a known field selector: only ${supported.map((f) => `"${f}"`).join(", ")}`,
      );
    return { field, op: m[2] === "!=" ? "!=" : "=", value: m[3].trim() } as FieldRequirement;
  });
}

function fieldValue(obj: KubeObject, field: string): string {
  if (field === "source") return String(obj.source?.component ?? "");
  let cursor: Json = obj;
  for (const part of field.split(".")) {
    if (cursor === null || typeof cursor !== "object") return "";
    cursor = cursor[part];
  }
  if (cursor === undefined || cursor === null) return "";
  return String(cursor);
}

export function matchesFields(requirements: FieldRequirement[], obj: KubeObject): boolean {
  return requirements.every((req) => {
    const actual = fieldValue(obj, req.field);
    return req.op === "=" ? actual === req.value : actual !== req.value;
  });
}

export interface ObjectFilter {
  labels: LabelSelector;
  fields: FieldRequirement[];
}

export function matchesFilter(filter: ObjectFilter, obj: KubeObject): boolean {
  return matchesLabels(filter.labels, obj.metadata.labels) && matchesFields(filter.fields, obj);
}
