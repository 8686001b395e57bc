import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { StowageError } from "../../src/util/errors.ts";
import { createLogger } from "../../src/util/log.ts";

function capture() {
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split("\n").filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { lines, destination };
}

describe("logs", () => {
  it("label the level by name and serialise an error with its type, message, reason and stack", () => {
    const { lines, destination } = capture();
    const log = createLogger({ destination });
    log.warn(
      { err: new StowageError("UpstreamUnavailable", "upstream ghcr.io did not answer") },
      "sync failed",
    );
    expect(lines).toHaveLength(1);
    expect(lines[0].level).toBe("warn");
    const err = lines[0].err as Record<string, unknown>;
    expect(err.message).toBe("upstream ghcr.io did not answer");
    expect(err.reason).toBe("UpstreamUnavailable");
    expect(String(err.stack)).toContain("log.test.ts");
  });

  it("serialises an Error logged under error as well, not as {}", () => {
    const { lines, destination } = capture();
    createLogger({ destination }).error({ error: new Error("cache refused the push") }, "copy failed");
    expect(lines[0].level).toBe("error");
    expect(lines[0].error).toMatchObject({ type: "Error", message: "cache refused the push" });
    expect(String((lines[0].error as { stack?: string }).stack)).toContain("log.test.ts");
  });

  it("still redacts passwords and tokens, nested ones too", () => {
    const { lines, destination } = capture();
    const log = createLogger({ destination });
    log.info({ password: "hunter2", auth: { token: "t0k3n" } }, "credentials");
    expect(JSON.stringify(lines)).not.toMatch(/hunter2|t0k3n/);
    expect(lines[0].level).toBe("info");
  });
});
