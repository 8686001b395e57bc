/** Per-upstream-host slots: the rules that keep one upstream from taking every worker. */
import { describe, expect, it } from "vitest";
import { UpstreamSlots } from "../../src/controller/modelimage/fairness.ts";

describe("upstream host slots", () => {
  it("gives a host at most its slots, parks the next key without a worker and wakes it when one frees", () => {
    const woken: string[] = [];
    const slots = new UpstreamSlots(2, (key) => woken.push(key));
    const first = slots.tryAcquire("ml/a", ["hung.example"]);
    const second = slots.tryAcquire("ml/b", ["hung.example"]);
    expect(first && second).toBeTruthy();
    expect(slots.tryAcquire("ml/c", ["hung.example"])).toBeUndefined();
    expect(slots.parked("hung.example")).toEqual(["ml/c"]);
    // Another host is not held up by the busy one.
    const other = slots.tryAcquire("ml/d", ["docker.io"]);
    expect(other).toBeTruthy();
    expect(woken).toEqual([]);
    first?.();
    first?.(); // a second release frees nothing more
    expect(woken).toEqual(["ml/c"]);
    expect(slots.inUse("hung.example")).toBe(1);
    expect(slots.tryAcquire("ml/c", ["hung.example"])).toBeTruthy();
    expect(slots.tryAcquire("ml/e", ["hung.example"])).toBeUndefined();
  });

  it("takes a slot of every host a ModelImage names, or none", () => {
    const slots = new UpstreamSlots(1, () => {});
    const busy = slots.tryAcquire("ml/a", ["ghcr.io"]);
    expect(slots.tryAcquire("ml/multi", ["docker.io", "ghcr.io", "docker.io"])).toBeUndefined();
    expect(slots.inUse("docker.io")).toBe(0);
    busy?.();
    const both = slots.tryAcquire("ml/multi", ["docker.io", "ghcr.io", "docker.io"]);
    expect(slots.inUse("docker.io")).toBe(1);
    expect(slots.inUse("ghcr.io")).toBe(1);
    both?.();
    expect(slots.inUse("docker.io") + slots.inUse("ghcr.io")).toBe(0);
  });

  it("makes hosts that timed out share the per-host slots until one answers or the mark expires", () => {
    let now = 0;
    const woken: string[] = [];
    const slots = new UpstreamSlots(2, (key) => woken.push(key), { now: () => now, slowForMs: 60_000 });
    for (const host of ["a.example", "b.example", "c.example"]) slots.markSlow(host);
    const a = slots.tryAcquire("ml/a", ["a.example"]);
    const b = slots.tryAcquire("ml/b", ["b.example"]);
    expect(a && b).toBeTruthy();
    expect(slots.tryAcquire("ml/c", ["c.example"])).toBeUndefined();
    expect(slots.tryAcquire("ml/healthy", ["quay.io"])).toBeTruthy();
    a?.();
    expect(woken).toEqual(["ml/c"]);
    slots.markAnswered("c.example");
    b?.();
    expect(slots.tryAcquire("ml/c", ["c.example"])).toBeTruthy();
    slots.markSlow("a.example");
    now += 60_001;
    expect(slots.isSlow("a.example")).toBe(false);
  });

  it("wakes one parked key per freed slot, the longest parked first, not every parked key", () => {
    const woken: string[] = [];
    const slots = new UpstreamSlots(2, (key) => woken.push(key));
    const held = [
      slots.tryAcquire("ml/a", ["registry.example"]),
      slots.tryAcquire("ml/b", ["registry.example"]),
    ];
    for (const key of ["ml/c", "ml/d", "ml/e", "ml/f"])
      expect(slots.tryAcquire(key, ["registry.example"])).toBeUndefined();
    held[0]?.();
    expect(woken).toEqual(["ml/c"]);
    expect(slots.parked("registry.example")).toEqual(["ml/d", "ml/e", "ml/f"]);
    held[1]?.();
    expect(woken).toEqual(["ml/c", "ml/d"]);
    // Both woken keys take the freed slots; nobody else is woken until one of them ends.
    const c = slots.tryAcquire("ml/c", ["registry.example"]);
    expect(slots.tryAcquire("ml/d", ["registry.example"])).toBeTruthy();
    expect(woken).toEqual(["ml/c", "ml/d"]);
    c?.();
    expect(woken).toEqual(["ml/c", "ml/d", "ml/e"]);
  });

  it("hands a freed slot to the next parked key when the woken key does not come back for it", () => {
    const woken: string[] = [];
    const slots = new UpstreamSlots(1, (key) => woken.push(key));
    const a = slots.tryAcquire("ml/a", ["registry.example"]);
    for (const key of ["ml/deleted", "ml/next"]) slots.tryAcquire(key, ["registry.example"]);
    a?.();
    expect(woken).toEqual(["ml/deleted"]);
    // Its reconcile found it deleted (or suspended, or invalid) and never asked for a slot.
    slots.forget("ml/deleted");
    expect(woken).toEqual(["ml/deleted", "ml/next"]);
    expect(slots.parked("registry.example")).toEqual([]);
    expect(slots.tryAcquire("ml/next", ["registry.example"])).toBeTruthy();
  });

  it("hands a freed slot on when the woken key must park again for another host", () => {
    const woken: string[] = [];
    const slots = new UpstreamSlots(1, (key) => woken.push(key));
    const onA = slots.tryAcquire("ml/a", ["a.example"]);
    const onB = slots.tryAcquire("ml/b", ["b.example"]);
    expect(slots.tryAcquire("ml/both", ["a.example", "b.example"])).toBeUndefined();
    expect(slots.tryAcquire("ml/only-a", ["a.example"])).toBeUndefined();
    onA?.();
    expect(woken).toEqual(["ml/both"]);
    // b.example is still full: ml/both parks there, and a.example's slot goes to the next in line.
    expect(slots.tryAcquire("ml/both", ["a.example", "b.example"])).toBeUndefined();
    expect(woken).toEqual(["ml/both", "ml/only-a"]);
    expect(slots.parked("b.example")).toEqual(["ml/both"]);
    expect(slots.tryAcquire("ml/only-a", ["a.example"])).toBeTruthy();
    onB?.();
    expect(woken).toEqual(["ml/both", "ml/only-a", "ml/both"]);
  });

  it("refuses a slot count below one", () => {
    expect(() => new UpstreamSlots(0, () => {})).toThrow(/at least 1/);
  });
});
