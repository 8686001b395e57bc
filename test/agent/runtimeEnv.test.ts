import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { AGENT_RUNTIME_ENV, AGENT_V8_FLAGS } from "../../src/agent/runtimeEnv.ts";
import { containerOf, getObject, RELEASE, render } from "../chart/render.ts";

describe("the agent's process environment", () => {
  it("is what the chart gives the agent container, the one bench:agent measures", async () => {
    const objects = await render({ values: [] });
    const agent = containerOf(getObject(objects, "DaemonSet", `${RELEASE}-agent`), "agent");
    const env = Object.fromEntries(
      (agent.env ?? []).filter((variable) => variable.value !== undefined).map((v) => [v.name, v.value]),
    );
    for (const [name, value] of Object.entries(AGENT_RUNTIME_ENV)) expect(env[name], name).toBe(value);
  });

  it("is accepted by this Node in NODE_OPTIONS, and the V8 flags the agent sets on itself are ones this V8 knows", () => {
    // Node refuses V8 flags NODE_OPTIONS does not allow, and exits on an unknown one on the command
    // line, where setFlagsFromString would ignore it without a word.
    const out = execFileSync(
      process.execPath,
      [
        ...AGENT_V8_FLAGS,
        "-e",
        "process.stdout.write(String(require('node:v8').getHeapStatistics().total_available_size > 0))",
      ],
      { env: { ...process.env, ...AGENT_RUNTIME_ENV }, encoding: "utf8" },
    );
    expect(out).toBe("true");
  });
});
