import { describe, expect, it } from "vitest";
import { sameJson } from "../../src/kube/status.ts";

// sameJson decides whether a status write is needed: it must agree with comparing the two values
// serialised (undefined members and key order not counting), whichever way it gets there.
const serialisedEqual = (a: unknown, b: unknown) =>
  JSON.stringify(sortKeys(a)) === JSON.stringify(sortKeys(b));
function sortKeys(value: unknown): unknown {
  const plain = value === undefined ? undefined : JSON.parse(JSON.stringify(value));
  const sort = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(sort)
      : v && typeof v === "object"
        ? Object.fromEntries(
            Object.keys(v)
              .sort()
              .map((k) => [k, sort((v as Record<string, unknown>)[k])]),
          )
        : v;
  return sort(plain);
}

const cases: [string, unknown, unknown][] = [
  [
    "the same status",
    { a: 1, conditions: [{ type: "Ready", status: "True" }] },
    { a: 1, conditions: [{ type: "Ready", status: "True" }] },
  ],
  ["keys in another order", { a: 1, b: "x" }, { b: "x", a: 1 }],
  ["an undefined member against a missing one", { a: 1, b: undefined }, { a: 1 }],
  [
    "a changed message",
    { conditions: [{ message: "0 pulling" }] },
    { conditions: [{ message: "4 pulling" }] },
  ],
  ["a member only one side has", { a: 1, b: 2 }, { a: 1 }],
  ["null against a missing member", { a: null }, {}],
  ["null against undefined", { a: null }, { a: undefined }],
  ["an array of another length", { n: [1, 2] }, { n: [1] }],
  ["an array against an object", { n: [] }, { n: {} }],
  ["a number against its string", { n: 1 }, { n: "1" }],
  ["NaN against null (both serialise to null)", { n: Number.NaN }, { n: null }],
  ["an undefined array element against null", [undefined], [null]],
  ["a Date against its ISO string", { t: new Date(0) }, { t: new Date(0).toISOString() }],
  [
    "nested objects that differ deep down",
    { a: { b: { c: [1, { d: 2 }] } } },
    { a: { b: { c: [1, { d: 3 }] } } },
  ],
  ["both undefined", undefined, undefined],
  ["undefined against an empty object", undefined, {}],
];

describe("sameJson", () => {
  it.each(cases)("agrees with comparing serialised values: %s", (_, a, b) => {
    expect(sameJson(a, b)).toBe(serialisedEqual(a, b));
    expect(sameJson(b, a)).toBe(serialisedEqual(b, a));
  });
});
