import { describe, expect, it } from "vitest";
import { parseAgentArgs } from "../../src/agent/command.ts";
import { parseControllerArgs } from "../../src/controller/command.ts";

const base = ["--cache-registry=http://127.0.0.1:5000"];

describe("--health-bind-address", () => {
  it("keeps the controller's health server on every address by default and binds the address given", async () => {
    const byDefault = await parseControllerArgs(base, {});
    expect(byDefault !== "help" && byDefault.healthBindAddress).toBe("0.0.0.0");
    const loopback = await parseControllerArgs([...base, "--health-bind-address=127.0.0.1"], {});
    expect(loopback !== "help" && loopback.healthBindAddress).toBe("127.0.0.1");
    const ipv6 = await parseControllerArgs([...base, "--health-bind-address", "::1"], {});
    expect(ipv6 !== "help" && ipv6.healthBindAddress).toBe("::1");
  });

  it("refuses a controller bind address that is not an IP address, naming the flag", async () => {
    const refused = await parseControllerArgs([...base, "--health-bind-address=0.0.0.0:8080"], {}).catch(
      (e: unknown) => e,
    );
    expect((refused as Error).message).toContain("--health-bind-address");
  });

  it("gives the agent the same flag with the same default", () => {
    const byDefault = parseAgentArgs([], { NODE_NAME: "n" });
    expect(byDefault !== "help" && byDefault.healthBindAddress).toBe("0.0.0.0");
    const loopback = parseAgentArgs(["--health-bind-address", "127.0.0.1"], { NODE_NAME: "n" });
    expect(loopback !== "help" && loopback.healthBindAddress).toBe("127.0.0.1");
    expect(() => parseAgentArgs(["--health-bind-address", "localhost:1"], { NODE_NAME: "n" })).toThrow(
      /--health-bind-address/,
    );
  });
});
