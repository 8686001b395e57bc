import { isPlainObject, type Json } from "./types.ts";

/**
 * The subset of Kubernetes JSONPath printer columns use: `.a.b`, `.a[0]`, `.a[*].b`,
 * `.a[?(@.type=="Ready")].status` (==, !=), optionally wrapped in `{...}`. Returns every match.
 */
export function evaluateJsonPath(root: Json, expression: string): Json[] {
  let path = expression.trim();
  if (path.startsWith("{") && path.endsWith("}")) path = path.slice(1, -1).trim();
  if (path.startsWith("$")) path = path.slice(1);
  let current: Json[] = [root];
  let i = 0;
  while (i < path.length && current.length > 0) {
    const ch = path[i];
    if (ch === ".") {
      const m = /^\.([A-Za-z0-9_\-$/\\]+(?:\\\.[A-Za-z0-9_\-$/]+)*)/.exec(path.slice(i));
      if (!m) {
        i++;
        continue;
      }
      const key = m[1].replace(/\\\./g, ".");
      current = current.flatMap((node) =>
        isPlainObject(node) && node[key] !== undefined ? [node[key]] : [],
      );
      i += m[0].length;
      continue;
    }
    if (ch === "[") {
      const end = findClosingBracket(path, i);
      const inner = path.slice(i + 1, end).trim();
      i = end + 1;
      if (inner === "*") {
        current = current.flatMap((node) =>
          Array.isArray(node) ? node : isPlainObject(node) ? Object.values(node) : [],
        );
        continue;
      }
      if (/^-?\d+$/.test(inner)) {
        const index = Number(inner);
        current = current.flatMap((node) => {
          if (!Array.isArray(node)) return [];
          const item = node[index < 0 ? node.length + index : index];
          return item === undefined ? [] : [item];
        });
        continue;
      }
      const filter =
        /^\?\(\s*@((?:\.[A-Za-z0-9_\-$]+)+)\s*(==|!=)\s*(?:"([^"]*)"|'([^']*)'|(\S+?))\s*\)$/.exec(inner);
      if (filter) {
        const [, fieldPath, op, dq, sq, bare] = filter;
        const expected = dq ?? sq ?? bare;
        current = current.flatMap((node) =>
          Array.isArray(node)
            ? node.filter((item) => {
                const [value] = evaluateJsonPath(item, fieldPath);
                const same = value !== undefined && String(value) === expected;
                return op === "==" ? same : !same;
              })
            : [],
        );
        continue;
      }
      const quoted = /^['"](.*)['"]$/.exec(inner);
      if (quoted) {
        current = current.flatMap((node) =>
          isPlainObject(node) && node[quoted[1]] !== undefined ? [node[quoted[1]]] : [],
        );
        continue;
      }
      return [];
    }
    i++;
  }
  return current;
}

function findClosingBracket(text: string, open: number): number {
  let depth = 0;
  let quote: string | undefined;
  for (let i = open; i < text.length; i++) {
    const ch = text[i];
    if (quote) {
      if (ch === quote) quote = undefined;
      continue;
    }
    if (ch === '"' || ch === "'") quote = ch;
    else if (ch === "[") depth++;
    else if (ch === "]" && --depth === 0) return i;
  }
  return text.length;
}
