import { describe, expect, it } from "vitest";
import { FRONT_RUNTIME_ENV } from "../../src/cache/runtimeEnv.ts";
import { containerOf, getObject, RELEASE, render } from "../chart/render.ts";

describe("the cache front's process environment", () => {
  it("is what the chart gives the front container, the one bench:cache measures", async () => {
    const objects = await render({ values: [] });
    const front = containerOf(getObject(objects, "StatefulSet", `${RELEASE}-cache`), "front");
    const env = Object.fromEntries(
      (front.env ?? []).filter((variable) => variable.value !== undefined).map((v) => [v.name, v.value]),
    );
    for (const [name, value] of Object.entries(FRONT_RUNTIME_ENV)) expect(env[name], name).toBe(value);
  });
});
