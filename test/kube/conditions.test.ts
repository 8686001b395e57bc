import { describe, expect, it } from "vitest";
import { getCondition, setCondition } from "../../src/kube/conditions.ts";
import { formatMicroTime } from "../../src/kube/time.ts";

const t0 = Date.parse("2026-01-02T03:04:05.678Z");

describe("conditions", () => {
  it("keeps lastTransitionTime while the status stays the same, even when reason and message change", () => {
    const first = setCondition(
      [],
      { type: "Ready", status: "False", reason: "Pending", message: "waiting" },
      t0,
    );
    expect(first[0].lastTransitionTime).toBe("2026-01-02T03:04:05Z");
    const later = setCondition(
      first,
      {
        type: "Ready",
        status: "False",
        reason: "UpstreamUnavailable",
        message: "503",
        observedGeneration: 2,
      },
      t0 + 60_000,
    );
    expect(later[0]).toEqual({
      type: "Ready",
      status: "False",
      reason: "UpstreamUnavailable",
      message: "503",
      observedGeneration: 2,
      lastTransitionTime: "2026-01-02T03:04:05Z",
    });
  });

  it("moves lastTransitionTime when the status flips, leaving other conditions alone", () => {
    let conditions = setCondition([], { type: "Ready", status: "False", reason: "Pending", message: "" }, t0);
    conditions = setCondition(
      conditions,
      { type: "Synced", status: "True", reason: "Mirrored", message: "" },
      t0,
    );
    conditions = setCondition(
      conditions,
      { type: "Ready", status: "True", reason: "Ready", message: "" },
      t0 + 5000,
    );
    expect(getCondition(conditions, "Ready")?.lastTransitionTime).toBe("2026-01-02T03:04:10Z");
    expect(getCondition(conditions, "Synced")?.lastTransitionTime).toBe("2026-01-02T03:04:05Z");
    expect(conditions.map((c) => c.type)).toEqual(["Ready", "Synced"]);
  });

  it("returns an equal list when nothing changed, so a steady state has nothing to write", () => {
    const input = {
      type: "Ready",
      status: "True" as const,
      reason: "Ready",
      message: "ok",
      observedGeneration: 1,
    };
    const once = setCondition([], input, t0);
    expect(setCondition(once, input, t0 + 3_600_000)).toEqual(once);
  });

  it("formats MicroTime with six fractional digits as the API server expects", () => {
    expect(formatMicroTime(t0)).toBe("2026-01-02T03:04:05.678000Z");
  });
});
