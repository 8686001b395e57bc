import { describe, expect, it } from "vitest";
import { maxMinRates } from "../../sim/fanout/bandwidth.ts";

describe("simulator bandwidth model (max-min fair share)", () => {
  it("splits a saturated link equally among the transfers crossing it", () => {
    // Link 0: a cache NIC of 100; links 1-4: node NICs of 50. The cache NIC is the bottleneck.
    expect([
      ...maxMinRates(
        [100, 50, 50, 50, 50],
        [
          [0, 1],
          [0, 2],
          [0, 3],
          [0, 4],
        ],
      ),
    ]).toEqual([25, 25, 25, 25]);
  });

  it("gives what a transfer held back elsewhere cannot use to the others on the link", () => {
    // The first receiver's NIC is 10: the other three share the remaining 90.
    expect([
      ...maxMinRates(
        [100, 10, 50, 50, 50],
        [
          [0, 1],
          [0, 2],
          [0, 3],
          [0, 4],
        ],
      ),
    ]).toEqual([10, 30, 30, 30]);
  });

  it("fixes the tightest link first across a chain of links", () => {
    // Link A (10) carries f0 and f1; link B (4) carries f1 and f2. B gives 2 each; f0 gets A's 8.
    expect([...maxMinRates([10, 4], [[0], [0, 1], [1]])]).toEqual([8, 2, 2]);
  });

  it("answers nothing for no transfers and keeps unused links out of the way", () => {
    expect([...maxMinRates([10, 20], [])]).toEqual([]);
    expect([...maxMinRates([10, 20, 5], [[1]])]).toEqual([20]);
  });
});
