import { describe, expect, it } from "vitest";
import { CONTROLLER_RUNTIME_ENV, CONTROLLER_V8_FLAGS } from "../../src/controller/runtimeEnv.ts";
import { containerOf, getObject, RELEASE, render } from "../chart/render.ts";

describe("the controller's process environment", () => {
  it("is what the chart gives the controller container, the one bench:controller measures", async () => {
    const objects = await render({ values: [] });
    const controller = containerOf(getObject(objects, "Deployment", `${RELEASE}-controller`), "controller");
    const env = Object.fromEntries(
      (controller.env ?? []).filter((variable) => variable.value !== undefined).map((v) => [v.name, v.value]),
    );
    for (const [name, value] of Object.entries(CONTROLLER_RUNTIME_ENV)) expect(env[name], name).toBe(value);
  });

  it("is accepted by this Node in NODE_OPTIONS, and the V8 flags the controller sets on itself are ones this V8 knows", async () => {
    // Node refuses V8 flags NODE_OPTIONS does not allow, and exits on an unknown one on the command
    // line, where setFlagsFromString would ignore it without a word.
    const { execFileSync } = await import("node:child_process");
    const out = execFileSync(
      process.execPath,
      [
        ...CONTROLLER_V8_FLAGS,
        "-e",
        "process.stdout.write(String(require('node:v8').getHeapStatistics().total_available_size > 0))",
      ],
      { env: { ...process.env, ...CONTROLLER_RUNTIME_ENV }, encoding: "utf8" },
    );
    expect(out).toBe("true");
  });
});
