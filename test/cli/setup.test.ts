/**
 * scripts/setup.sh installs Node 24 when the machine's Node is older than what the code needs:
 * its floor (scripts/node-version.sh) is package.json's engines.node, checked here with the real
 * bash on the versions around it.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { root, run } from "../support/run.ts";

const tooOld = async (version: string) =>
  (await run("bash", ["-c", `. scripts/node-version.sh && node_too_old "$1"`, "check", version])).code === 0;

describe("scripts/setup.sh's Node check", () => {
  it("takes its floor from package.json's engines.node", () => {
    const engines = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).engines.node as string;
    const script = readFileSync(join(root, "scripts/node-version.sh"), "utf8");
    const [, major, minor] = /^>=(\d+)\.(\d+)$/.exec(engines) ?? [];
    expect(script).toContain(`STOWAGE_NODE_FLOOR_MAJOR=${major}`);
    expect(script).toContain(`STOWAGE_NODE_FLOOR_MINOR=${minor}`);
  });

  it("installs Node 24 over a Node 22 older than 22.19, as over Node 20 or none, and keeps 22.19 and later", async () => {
    for (const version of ["v20.19.5", "v22.0.0", "v22.17.1", "v22.18.0", "", "garbage"])
      expect(await tooOld(version), version).toBe(true);
    for (const version of ["v22.19.0", "v22.20.1", "v24.21.0", "v25.0.0"])
      expect(await tooOld(version), version).toBe(false);
  });
});
