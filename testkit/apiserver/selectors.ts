import { badRequest } from "./errors.ts";
import type { Json, KubeObject } from "./types.ts";

/**
 * Label selectors in the string form of apimachinery's labels.Parse, parsed by a port of its lexer
 * and recursive-descent parser so that malformed selectors fail with the same messages.
 */
type LabelOperator = "exists" | "!" | "=" | "==" | "!=" | "in" | "notin" | "gt" | "lt";

interface LabelRequirement {
  key: string;
  op: LabelOperator;
  values: string[];
}

export type LabelSelector = LabelRequirement[];

type Token = "error" | "end" | ")" | "," | "!" | "==" | "=" | ">" | "id" | "in" | "<" | "!=" | "notin" | "(";

interface Scanned {
  tok: Token;
  lit: string;
}

const literalTokens: Record<string, Token> = {
  ")": ")",
  ",": ",",
  "!": "!",
  "==": "==",
  "=": "=",
  ">": ">",
  in: "in",
  "<": "<",
  "!=": "!=",
  notin: "notin",
  "(": "(",
};
const specialSymbols = new Set(["=", "!", "(", ")", ",", ">", "<"]);
const whitespace = new Set([" ", "\t", "\r", "\n"]);

function lex(text: string): Scanned[] {
  let pos = 0;
  const read = () => (pos < text.length ? text[pos++] : "");
  const out: Scanned[] = [];
  for (;;) {
    let ch = read();
    while (whitespace.has(ch)) ch = read();
    if (ch === "") {
      out.push({ tok: "end", lit: "" });
      return out;
    }
    pos--;
    let buffer = "";
    if (specialSymbols.has(ch)) {
      let last: Scanned | undefined;
      for (;;) {
        const c = read();
        if (c === "") break;
        if (!specialSymbols.has(c)) {
          pos--;
          break;
        }
        buffer += c;
        const token = literalTokens[buffer];
        if (token) last = { tok: token, lit: buffer };
        else if (last) {
          pos--;
          break;
        }
      }
      out.push(last ?? { tok: "error", lit: `error expected: keyword found '${buffer}'` });
    } else {
      for (;;) {
        const c = read();
        if (c === "") break;
        if (specialSymbols.has(c) || whitespace.has(c)) {
          pos--;
          break;
        }
        buffer += c;
      }
      out.push({ tok: literalTokens[buffer] ?? "id", lit: buffer });
    }
  }
}

const labelNameFormat = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const labelName = new RegExp(`^${labelNameFormat}$`);
const labelValueFormat = `(${labelNameFormat})?`;
const labelValue = new RegExp(`^${labelValueFormat}$`);
const dnsSubdomainFormat = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const dnsSubdomain = new RegExp(`^${dnsSubdomainFormat}$`);

/** apimachinery's RegexError wording, examples and all. */
function regexError(message: string, format: string, ...examples: string[]): string {
  return `${message} (e.g. ${examples.map((e) => `'${e}', `).join(" or ")}regex used for validation is '${format}')`;
}

const labelNameMessage =
  "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/** content.IsLabelKey */
function labelKeyErrors(key: string): string[] {
  const parts = key.split("/");
  const errors: string[] = [];
  let name: string;
  if (parts.length === 1) name = parts[0];
  else if (parts.length === 2) {
    const prefix = parts[0];
    name = parts[1];
    if (prefix.length === 0) errors.push("prefix part must be non-empty");
    else {
      if (prefix.length > 253) errors.push("prefix part must be no more than 253 bytes");
      if (!dnsSubdomain.test(prefix))
        errors.push(
          `prefix part ${regexError("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character", dnsSubdomainFormat, "example.com")}`,
        );
    }
  } else
    return [
      `a valid label key ${regexError(labelNameMessage, labelNameFormat, "MyName", "my.name", "123-abc")} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')`,
    ];
  if (name.length === 0) errors.push("name part must be non-empty");
  else if (name.length > 63) errors.push("name part must be no more than 63 bytes");
  if (!labelName.test(name))
    errors.push(`name part ${regexError(labelNameMessage, labelNameFormat, "MyName", "my.name", "123-abc")}`);
  return errors;
}

/** content.IsLabelValue */
function labelValueErrors(value: string): string[] {
  const errors: string[] = [];
  if (value.length > 63) errors.push("must be no more than 63 bytes");
  if (!labelValue.test(value))
    errors.push(
      regexError(
        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        labelValueFormat,
        "MyValue",
        "my_value",
        "12345",
      ),
    );
  return errors;
}

class SelectorError extends Error {}

/** labels.NewRequirement: the checks a parsed requirement still has to pass. */
function newRequirement(key: string, op: LabelOperator, values: string[]): LabelRequirement {
  const errors: string[] = [];
  const keyErrors = labelKeyErrors(key);
  if (keyErrors.length > 0)
    errors.push(`key: Invalid value: ${JSON.stringify(key)}: ${keyErrors.join("; ")}`);
  if ((op === "gt" || op === "lt") && values.length === 1 && !/^[-+]?\d+$/.test(values[0]))
    errors.push(
      `values[0]: Invalid value: ${JSON.stringify(values[0])}: for 'Gt', 'Lt' operators, the value must be an integer`,
    );
  values.forEach((value, i) => {
    const problems = labelValueErrors(value);
    if (problems.length > 0)
      errors.push(`values[${i}][${key}]: Invalid value: ${JSON.stringify(value)}: ${problems.join("; ")}`);
  });
  const distinct = [...new Set(errors)];
  if (distinct.length === 1) throw new SelectorError(distinct[0]);
  if (distinct.length > 1) throw new SelectorError(`[${distinct.join(", ")}]`);
  return { key, op, values };
}

class LabelParser {
  private position = 0;
  private readonly items: Scanned[];

  constructor(items: Scanned[]) {
    this.items = items;
  }

  /** in Values context `in` and `notin` are plain identifiers */
  private lookahead(values: boolean): Scanned {
    const item = this.items[this.position];
    return values && (item.tok === "in" || item.tok === "notin") ? { tok: "id", lit: item.lit } : item;
  }

  private consume(values: boolean): Scanned {
    const item = this.lookahead(values);
    this.position++;
    return item;
  }

  parse(): LabelRequirement[] {
    const requirements: LabelRequirement[] = [];
    for (;;) {
      const { tok, lit } = this.lookahead(true);
      if (tok === "end") return requirements;
      if (tok !== "id" && tok !== "!")
        throw new SelectorError(`found '${lit}', expected: !, identifier, or 'end of string'`);
      try {
        requirements.push(this.requirement());
      } catch (err) {
        throw new SelectorError(`unable to parse requirement: ${(err as Error).message}`);
      }
      const next = this.consume(true);
      if (next.tok === "end") return requirements;
      if (next.tok !== ",") throw new SelectorError(`found '${next.lit}', expected: ',' or 'end of string'`);
      const after = this.lookahead(true);
      if (after.tok !== "id" && after.tok !== "!")
        throw new SelectorError(`found '${after.lit}', expected: identifier after ','`);
    }
  }

  private requirement(): LabelRequirement {
    let op: LabelOperator | undefined;
    let { tok, lit } = this.consume(true);
    if (tok === "!") {
      op = "!";
      ({ tok, lit } = this.consume(true));
    }
    if (tok !== "id") throw new SelectorError(`found '${lit}', expected: identifier`);
    const keyErrors = labelKeyErrors(lit);
    if (keyErrors.length > 0)
      throw new SelectorError(`<nil>: Invalid value: ${JSON.stringify(lit)}: ${keyErrors.join("; ")}`);
    const key = lit;
    const next = this.lookahead(true).tok;
    if (next === "end" || next === ",") op ??= "exists";
    if (op === "exists" || op === "!") return newRequirement(key, op, []);
    const operator = this.consume(false);
    const operators: Partial<Record<Token, LabelOperator>> = {
      in: "in",
      "=": "=",
      "==": "==",
      ">": "gt",
      "<": "lt",
      notin: "notin",
      "!=": "!=",
    };
    const found = operators[operator.tok];
    if (!found) throw new SelectorError(`found '${operator.lit}', expected: in, notin, =, ==, !=, gt, lt`);
    const values = found === "in" || found === "notin" ? this.valueSet() : this.exactValue();
    return newRequirement(key, found, [...new Set(values)].sort());
  }

  private valueSet(): string[] {
    const open = this.consume(true);
    if (open.tok !== "(") throw new SelectorError(`found '${open.lit}' expected: '('`);
    const { tok, lit } = this.lookahead(true);
    if (tok === ")") {
      this.consume(true);
      return [""];
    }
    if (tok !== "id" && tok !== ",")
      throw new SelectorError(`found '${lit}', expected: ',', ')' or identifier`);
    const values = this.identifiers();
    if (this.consume(true).tok !== ")") throw new SelectorError(`found '${lit}', expected: ')'`);
    return values;
  }

  private identifiers(): string[] {
    const values = new Set<string>();
    for (;;) {
      const { tok, lit } = this.consume(true);
      if (tok === "id") {
        values.add(lit);
        const after = this.lookahead(true);
        if (after.tok === ",") continue;
        if (after.tok === ")") return [...values];
        throw new SelectorError(`found '${after.lit}', expected: ',' or ')'`);
      }
      if (tok !== ",") throw new SelectorError(`found '${lit}', expected: ',', or identifier`);
      if (values.size === 0) values.add("");
      const after = this.lookahead(true).tok;
      if (after === ")") {
        values.add("");
        return [...values];
      }
      if (after === ",") values.add("");
    }
  }

  private exactValue(): string[] {
    const ahead = this.lookahead(true).tok;
    if (ahead === "end" || ahead === ",") return [""];
    const { tok, lit } = this.consume(true);
    if (tok === "id") return [lit];
    throw new SelectorError(`found '${lit}', expected: identifier`);
  }
}

export function parseLabelSelector(text: string | undefined | null): LabelSelector {
  if (!text) return [];
  try {
    return new LabelParser(lex(text)).parse();
  } catch (err) {
    if (err instanceof SelectorError) throw badRequest(err.message);
    throw err;
  }
}

export function matchesLabels(selector: LabelSelector, labels: Record<string, string> | undefined): boolean {
  const set = labels ?? {};
  return selector.every((req) => {
    const has = Object.hasOwn(set, req.key);
    const actual = set[req.key];
    switch (req.op) {
      case "=":
      case "==":
      case "in":
        return has && req.values.includes(actual);
      case "!=":
      case "notin":
        return !has || !req.values.includes(actual);
      case "exists":
        return has;
      case "!":
        return !has;
      case "gt":
      case "lt": {
        if (!has || !/^[-+]?\d+$/.test(actual)) return false;
        const limit = Number(req.values[0]);
        return req.op === "gt" ? Number(actual) > limit : Number(actual) < limit;
      }
    }
    return false;
  });
}

function splitTopLevel(text: string): string[] {
  return text
    .split(",")
    .map((p) => p.trim())
    .filter((p) => p.length > 0);
}

/** Field selectors: `field=value`, `field==value`, `field!=value`, comma-joined. */
export interface FieldRequirement {
  field: string;
  op: "=" | "!=";
  value: string;
}

/**
 * `supported` lists the selectable fields; `customLabels` is how the kind converts field labels:
 * custom resources and built-ins with their own selectable fields answer "field label not
 * supported", the others list what they support.
 */
export function parseFieldSelector(
  text: string | undefined | null,
  supported: readonly string[],
  customLabels = false,
): FieldRequirement[] {
  if (!text) return [];
  return splitTopLevel(text).map((raw) => {
    const m = /^([^=!]+?)\s*(==|=|!=)\s*(.*)$/.exec(raw);
    if (!m) throw badRequest(`invalid selector: '${text}'; can't understand '${raw}'`);
    const field = m[1].trim();
    if (!supported.includes(field))
      throw badRequest(
        customLabels
          ? `field label not supported: ${field}`
          : `"${field}" is not a known field selector: only ${supported.map((f) => `"${f}"`).join(", ")}`,
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
