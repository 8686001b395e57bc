import { describe, expect, it } from "vitest";
import { WARM_LABEL_PREFIX, warmNodeLabel } from "../../src/api/labels.ts";

const labelName = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;

describe("warmNodeLabel", () => {
  it("names the label after namespace and ModelImage when that fits a label name", () => {
    expect(warmNodeLabel("ml", "llama3-serve")).toBe("warm.stowage.dev/ml.llama3-serve");
  });

  it("shortens long names with a hash that keeps different ModelImages apart", () => {
    const long = "a".repeat(60);
    const first = warmNodeLabel("team-a", long);
    const second = warmNodeLabel("team-b", long);
    for (const label of [first, second]) {
      const name = label.slice(WARM_LABEL_PREFIX.length);
      expect(name.length).toBeLessThanOrEqual(63);
      expect(name).toMatch(labelName);
    }
    expect(first).not.toBe(second);
  });
});
