import { resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dockerUnavailableHere, type RunningDocker, runCommand, startDocker } from "../../testkit/docker.ts";

/**
 * The Dockerfile, built for real by scripts/build-image.sh on a Docker engine this test starts
 * (no registry: the bases come from debootstrap and Node from npm, cached outside the clone),
 * and the image run the way the chart runs it. Where dockerd cannot run (not root, docker.io
 * missing) this fails with the reason instead of passing without having built anything.
 */
const whyNoDocker = dockerUnavailableHere();
const buildScript = resolve(import.meta.dirname, "../../scripts/build-image.sh");
const tag = "stowage:image-test";

describe.runIf(whyNoDocker === undefined)("the Stowage image", () => {
  let engine: RunningDocker;

  beforeAll(async () => {
    engine = await startDocker();
    // Cold: debootstrap and the npm fetches (about a minute); warm: import, npm ci, copy.
    const built = await runCommand("bash", [buildScript], {
      env: { ...engine.env, STOWAGE_IMAGE_TAG: tag },
      timeoutMs: 600_000,
    });
    if (built.code !== 0)
      throw new Error(
        `scripts/build-image.sh exited ${built.code}:\n${built.err.slice(-4000)}\ndockerd:\n${engine.log().slice(-2000)}`,
      );
    expect(built.out.trim()).toBe(tag);
    const size = await engine.docker(["image", "inspect", "-f", "{{.Size}}", tag]);
    process.stdout.write(
      `image ${tag}: ${(Number(size.out.trim()) / 1e6).toFixed(1)} MB (goal: under 200 MB)\n`,
    );
  }, 660_000);

  afterAll(async () => {
    await engine?.dispose();
  }, 60_000);

  /** `docker run` of the image as the chart's Deployment would: its own entrypoint and user. */
  const run = (args: string[]) => engine.docker(["run", "--rm", "--network", "host", ...args]);

  it("runs as a non-root user by default", async () => {
    // No shell or `id` in the image: node itself reports the uid the entrypoint runs as.
    const result = await run([
      "--entrypoint",
      "/nodejs/bin/node",
      tag,
      "-e",
      "console.log(process.getuid(), process.getgid())",
    ]);
    expect(result.err).toBe("");
    expect(result.code).toBe(0);
    const [uid, gid] = result.out.trim().split(" ").map(Number);
    expect(uid).not.toBe(0);
    expect(uid).toBe(65532);
    expect(gid).toBe(65532);
  });

  it("prints `stowage controller --help` from the sources in the image", async () => {
    const result = await run([tag, "controller", "--help"]);
    expect(result.code).toBe(0);
    expect(result.out).toMatch(/^Usage: stowage controller \[flags\]\n/);
    expect(result.out).toContain("Run the ModelImage controller");
  });

  it("prints `stowage agent --help` from the sources in the image", async () => {
    const result = await run([tag, "agent", "--help"]);
    expect(result.code).toBe(0);
    expect(result.out).toMatch(/^Usage: stowage agent \[flags\]\n/);
    expect(result.out).toContain("Run the node agent");
  });
  it.each([
    ["65532", "the controller and the cache front"],
    ["0", "the agent"],
  ])(
    "ships its compile cache: as uid %s (%s) nothing loads the type stripper, on a read-only root",
    async (uid) => {
      const probe = [
        "await import('/app/src/agent/command.ts');",
        "await import('/app/src/controller/command.ts');",
        "await import('/app/src/cache/command.ts');",
        "const { getCompileCacheDir } = await import('node:module');",
        "console.log(JSON.stringify({ dir: getCompileCacheDir(), stripper: process.moduleLoadList.filter((m) => m.includes('amaro')) }));",
      ].join(" ");
      const result = await run([
        "--read-only",
        "--user",
        `${uid}:${uid}`,
        "--entrypoint",
        "/nodejs/bin/node",
        tag,
        "--input-type=module",
        "-e",
        probe,
      ]);
      expect(result.err).toBe("");
      expect(result.code).toBe(0);
      const loaded = JSON.parse(result.out.trim()) as { dir: string; stripper: string[] };
      expect(loaded.dir).toMatch(new RegExp(`^/app/compile-cache/v[^/]+-${uid}$`));
      // Without the image's cache Node loads internal/deps/amaro (swc) to strip the sources.
      expect(loaded.stripper).toEqual([]);
    },
  );
});

describe.runIf(whyNoDocker !== undefined)("the Stowage image (no Docker engine here)", () => {
  it("cannot be built and run here", () => {
    throw new Error(
      `the image test needs a Docker engine it can start: ${whyNoDocker}; run scripts/setup.sh as root`,
    );
  });
});
