import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stowage } from "../support/run.ts";
import { type Cluster, startCluster } from "./helpers.ts";

let withoutCrd: Cluster;
let withCrd: Cluster;

beforeAll(async () => {
  [withoutCrd, withCrd] = await Promise.all([startCluster({ crds: [] }), startCluster()]);
});

afterAll(async () => {
  await Promise.all([withoutCrd?.stop(), withCrd?.stop()]);
});

describe("stowage controller command line", () => {
  it("prints its flags for --help and exits 0", async () => {
    const run = await stowage(["controller", "--help"]);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain("--cache-registry URL");
    expect(run.stdout).toContain("--leader-elect");
    expect(run.stderr).toBe("");
  });

  it("lists the controller command in the top-level usage", async () => {
    const run = await stowage(["--help"]);
    expect(run.stdout).toMatch(/controller\s+run the ModelImage controller/);
  });

  it("refuses an unknown flag with exit code 2 and one line on stderr", async () => {
    const run = await stowage(["controller", "--cache-registry", "http://127.0.0.1:1", "--bogus"]);
    expect(run.code).toBe(2);
    expect(run.stderr.trim().split("\n")).toHaveLength(1);
    expect(run.stderr).toContain("--bogus");
  });

  it.each([
    [["--workers", "zero"], "--workers must be an integer"],
    [["--retain-on-delete=maybe"], "--retain-on-delete must be true or false"],
    [
      ["--lease-duration", "5s", "--renew-deadline", "10s"],
      "--renew-deadline must be shorter than --lease-duration",
    ],
    [["--cache-registry", "ftp://cache"], "--cache-registry must use http:// or https://"],
    [["--cache-username", "u"], "--cache-username and --cache-password must be given together"],
  ])("refuses %j with exit code 2 naming the flag", async (flags, message) => {
    const run = await stowage(["controller", "--cache-registry", "http://127.0.0.1:1", ...flags]);
    expect(run.code).toBe(2);
    expect(run.stderr.trim().split("\n")).toHaveLength(1);
    expect(run.stderr).toContain(message);
  });

  it("requires a cache registry, from the flag or STOWAGE_CACHE_REGISTRY", async () => {
    const missing = await stowage(["controller"], { STOWAGE_CACHE_REGISTRY: "" });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("--cache-registry (or STOWAGE_CACHE_REGISTRY) is required");
    const fromEnv = await stowage(["controller", "--workers", "nope"], {
      STOWAGE_CACHE_REGISTRY: "http://127.0.0.1:1",
    });
    expect(fromEnv.stderr).not.toContain("is required");
    expect(fromEnv.stderr).toContain("--workers must be an integer");
  });

  it("reads settings from STOWAGE_* variables, and a flag wins over the variable", async () => {
    const fromEnv = await stowage(["controller", "--cache-registry", "http://127.0.0.1:1"], {
      STOWAGE_MAX_CONCURRENT_SYNCS: "0",
    });
    expect(fromEnv.code).toBe(2);
    expect(fromEnv.stderr).toContain('--max-concurrent-syncs must be an integer from 1 to 256, got "0"');
    const flagWins = await stowage(
      [
        "controller",
        "--cache-registry",
        "http://127.0.0.1:1",
        "--max-concurrent-syncs",
        "2",
        "--workers",
        "x",
      ],
      { STOWAGE_MAX_CONCURRENT_SYNCS: "0" },
    );
    expect(flagWins.stderr).not.toContain("--max-concurrent-syncs");
    expect(flagWins.stderr).toContain("--workers must be an integer");
  });

  it("exits 1 saying the CRD is not installed when the API server does not serve ModelImages", async () => {
    const run = await stowage([
      "controller",
      "--kubeconfig",
      withoutCrd.api.kubeconfigPath,
      "--cache-registry",
      "http://127.0.0.1:1",
      "--health-port",
      "0",
    ]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(
      "the ModelImage CRD (modelimages.stowage.dev, version v1alpha1) is not installed",
    );
  });

  it("exits 1 naming the health port when it is already in use", async () => {
    const busy = createServer();
    await new Promise<void>((resolve) => busy.listen(0, "0.0.0.0", resolve));
    const port = (busy.address() as AddressInfo).port;
    try {
      const run = await stowage([
        "controller",
        "--kubeconfig",
        withCrd.api.kubeconfigPath,
        "--cache-registry",
        "http://127.0.0.1:1",
        "--health-port",
        String(port),
      ]);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain(`--health-port ${port} is already in use`);
    } finally {
      busy.close();
    }
  });

  it("exits 1 saying the API server is unreachable after retrying", async () => {
    const kubeconfig = withoutCrd.api.kubeconfig.replace(withoutCrd.api.url, "http://127.0.0.1:9");
    const path = join(withoutCrd.dir, "unreachable-kubeconfig");
    await import("node:fs/promises").then((fs) => fs.writeFile(path, kubeconfig));
    const run = await stowage(["controller", "--kubeconfig", path, "--cache-registry", "http://127.0.0.1:1"]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain("is unreachable after 5 attempts");
  });
});
