/** The transport flags of stowage controller: defaults, flag or STOWAGE_* variable, bad values refused naming the flag. */
import { describe, expect, it } from "vitest";
import { parseControllerArgs } from "../../src/controller/command.ts";

const base = ["--cache-registry=http://127.0.0.1:5000"];

async function parsed(args: string[], env: NodeJS.ProcessEnv = {}) {
  const invocation = await parseControllerArgs([...base, ...args], env);
  if (invocation === "help") throw new Error("unexpected help");
  return invocation;
}

describe("transport flags of stowage controller", () => {
  it("defaults to a 30s request deadline, a 60s stall timeout, a 5m Retry-After cap and a daily verify", async () => {
    const invocation = await parsed([]);
    expect(invocation.requestTimeoutMs).toBe(30_000);
    expect(invocation.stallTimeoutMs).toBe(60_000);
    expect(invocation.maxRetryAfterMs).toBe(5 * 60_000);
    expect(invocation.verifyIntervalMs).toBe(24 * 3_600_000);
  });

  it("reads each from its flag or STOWAGE_* variable, and --verify-interval=0 turns verifying off", async () => {
    const invocation = await parsed(["--request-timeout=10s", "--stall-timeout=2m", "--verify-interval=0"], {
      STOWAGE_MAX_RETRY_AFTER: "15m",
    });
    expect(invocation.requestTimeoutMs).toBe(10_000);
    expect(invocation.stallTimeoutMs).toBe(120_000);
    expect(invocation.maxRetryAfterMs).toBe(15 * 60_000);
    expect(invocation.verifyIntervalMs).toBe(0);
  });

  it("refuses durations that are not positive or that a timer cannot honour", async () => {
    await expect(parsed(["--request-timeout=soon"])).rejects.toThrow(
      /--request-timeout must be a positive duration/,
    );
    await expect(parsed(["--stall-timeout=0s"])).rejects.toThrow(
      /--stall-timeout must be a positive duration/,
    );
    await expect(parsed(["--max-retry-after=1000h"])).rejects.toThrow(
      /--max-retry-after must be at most 596h/,
    );
  });
});
