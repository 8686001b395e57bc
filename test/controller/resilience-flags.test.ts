/** The controller's resilience flags: sensible defaults, and bad values refused naming the flag. */
import { describe, expect, it } from "vitest";
import { parseControllerArgs, shutdownDeadline } from "../../src/controller/command.ts";
import { syncsPerUpstreamHost } from "../../src/controller/config.ts";

const base = ["--cache-registry=http://127.0.0.1:5000"];

async function refusal(args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  const outcome = await parseControllerArgs([...base, ...args], env).then(
    () => "accepted",
    (err: Error) => err.message,
  );
  return outcome;
}

describe("resilience flags of stowage controller", () => {
  it("defaults to a 30m sync deadline, a 25s shutdown inside the pod's grace and half the workers per upstream host", async () => {
    const invocation = await parseControllerArgs(base, {});
    if (invocation === "help") throw new Error("unexpected help");
    expect(invocation.syncTimeoutMs).toBe(30 * 60_000);
    expect(invocation.shutdownTimeoutMs).toBe(25_000);
    expect(shutdownDeadline(invocation.shutdownTimeoutMs)).toBe(20_000);
    expect(invocation.maxSyncsPerUpstreamHost).toBeUndefined();
    expect(syncsPerUpstreamHost({ workers: invocation.workers })).toBe(2);
    expect(syncsPerUpstreamHost({ workers: 1 })).toBe(1);
  });

  it("reads each from its flag or STOWAGE_* variable", async () => {
    const invocation = await parseControllerArgs(
      [...base, "--sync-timeout=2h", "--workers=8", "--max-syncs-per-upstream-host=3"],
      { STOWAGE_SHUTDOWN_TIMEOUT: "50s" },
    );
    if (invocation === "help") throw new Error("unexpected help");
    expect(invocation.syncTimeoutMs).toBe(2 * 3_600_000);
    expect(invocation.shutdownTimeoutMs).toBe(50_000);
    expect(shutdownDeadline(invocation.shutdownTimeoutMs)).toBe(45_000);
    expect(syncsPerUpstreamHost(invocation)).toBe(3);
  });

  it("refuses a per-host limit above the workers, and durations that are not positive", async () => {
    expect(await refusal(["--workers=4", "--max-syncs-per-upstream-host=5"])).toContain(
      "--max-syncs-per-upstream-host must be an integer from 1 to 4",
    );
    expect(await refusal(["--max-syncs-per-upstream-host=0"])).toContain("--max-syncs-per-upstream-host");
    expect(await refusal(["--sync-timeout=0s"])).toContain("--sync-timeout must be a positive duration");
    expect(await refusal(["--shutdown-timeout=soon"])).toContain("--shutdown-timeout");
  });
});
