import { describe, expect, it } from "vitest";
import { parseControllerArgs } from "../../src/controller/command.ts";
import { UsageError } from "../../src/util/flags.ts";

const base = ["--cache-registry=http://127.0.0.1:5000"];

describe("controller eviction flags", () => {
  it("turn eviction on with --cache-size-budget in bytes or a quantity, and leave it off without", async () => {
    const off = await parseControllerArgs(base, {});
    expect(off !== "help" && off.cacheGc).toBeUndefined();
    const binary = await parseControllerArgs([...base, "--cache-size-budget=200Gi"], {});
    expect(binary !== "help" && binary.cacheGc).toEqual({ budgetBytes: 200 * 2 ** 30, intervalMs: 600_000 });
    const fromEnv = await parseControllerArgs(base, {
      STOWAGE_CACHE_SIZE_BUDGET: "1500000",
      STOWAGE_CACHE_GC_INTERVAL: "30s",
    });
    expect(fromEnv !== "help" && fromEnv.cacheGc).toEqual({ budgetBytes: 1_500_000, intervalMs: 30_000 });
  });

  it("refuse a budget that is not a size, naming the flag", async () => {
    const refused = await parseControllerArgs([...base, "--cache-size-budget=lots"], {}).catch((e) => e);
    expect(refused).toBeInstanceOf(UsageError);
    expect(refused.message).toContain("--cache-size-budget");
  });
});
