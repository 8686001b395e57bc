/**
 * The container tier (testkit/testcontainers.ts): distribution registries run by testcontainers
 * from the image built here, on a private Docker engine with host networking, and `stowage
 * mirror` copying between them as it does between the process-tier registries. Cleanup is the
 * file's own Ryuk equivalent: nothing of the session is left once the registries stop.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryClient } from "../../src/oci/registry.ts";
import { dockerUnavailableHere } from "../../testkit/docker.ts";
import { pushMultiArchIndex } from "../../testkit/images.ts";
import {
  type ContainerEngine,
  type ContainerRegistry,
  SESSION_LABEL,
  startContainerEngine,
  startContainerRegistry,
} from "../../testkit/testcontainers.ts";
import { root, stowage } from "../support/run.ts";

const whyNoDocker = dockerUnavailableHere();

const title = "registries as containers (testcontainers)";
describe.skipIf(whyNoDocker !== undefined)(whyNoDocker ? `${title} (skipped: ${whyNoDocker})` : title, () => {
  let engine: ContainerEngine;
  let source: ContainerRegistry;
  let target: ContainerRegistry;
  let client: RegistryClient;

  beforeAll(async () => {
    engine = await startContainerEngine();
    [source, target] = await Promise.all([
      startContainerRegistry(engine),
      startContainerRegistry(engine, {
        auth: "htpasswd",
        users: [{ username: "mirror", password: "m1rror" }],
      }),
    ]);
    client = new RegistryClient({ insecureHosts: [source.host, target.host] });
  }, 300_000);

  afterAll(async () => {
    await client?.close();
    // Already stopped by the last test unless an earlier one failed; stop() removes the htpasswd dir.
    await Promise.all([source?.stop(), target?.stop()]);
    await engine?.dispose();
  }, 120_000);

  it("runs each registry as a labelled container of the locally built distribution image on the host network", async () => {
    for (const registry of [source, target]) {
      const inspected = await engine.docker.docker(["inspect", registry.container.getId()]);
      const [info] = JSON.parse(inspected.out);
      expect(info.State.Running).toBe(true);
      expect(info.HostConfig.NetworkMode).toBe("host");
      expect(info.Config.Labels[SESSION_LABEL]).toBe(engine.session);
      expect(info.Config.Image).toMatch(/^stowage\.test\/distribution:/);
      // The image's own non-root user, as the chart runs it.
      expect(info.Config.User).toBe("65532:65532");
    }
    expect((await fetch(`${target.url}/v2/`)).status).toBe(401);
  });

  it("serves `stowage mirror` between two container registries, byte-exact, with the target's credentials", async () => {
    const pushed = await pushMultiArchIndex(client, { registry: source.host, repository: "tc/app" }, "v1");
    const copied = await stowage([
      "mirror",
      "--insecure-registry",
      source.host,
      "--insecure-registry",
      target.host,
      "--dest-creds",
      "mirror:m1rror",
      "--json",
      "--quiet",
      `${source.host}/tc/app:v1`,
      `${target.host}/copied/app:v1`,
    ]);
    expect(copied.code, copied.stderr).toBe(0);
    expect(JSON.parse(copied.stdout).targetDigest).toBe(pushed.digest);

    const withCreds = new RegistryClient({
      insecureHosts: [target.host],
      credentials: () => ({ username: "mirror", password: "m1rror" }),
    });
    try {
      const head = await withCreds.headManifest({ registry: target.host, repository: "copied/app" }, "v1");
      expect(head?.digest).toBe(pushed.digest);
    } finally {
      await withCreds.close();
    }
    // The target container really served the upload (its own access log).
    const requests = await target.requests();
    expect(requests.some((r) => r.method === "PUT" && r.path.startsWith("/v2/copied/app/manifests/v1"))).toBe(
      true,
    );
  });

  it("removes a session's containers when its test process is killed outright, as Ryuk would", async () => {
    const child = spawn(process.execPath, ["test/containers/fixtures/killedSession.ts"], {
      cwd: root,
      env: { ...process.env, DOCKER_HOST: engine.docker.env.DOCKER_HOST },
      stdio: ["pipe", "pipe", "inherit"],
    });
    const exited = once(child, "exit");
    const lines = createInterface({ input: child.stdout });
    const [first] = (await once(lines, "line")) as [string];
    const { session, container } = JSON.parse(first) as { session: string; container: string };
    const labelled = ["ps", "-aq", "--no-trunc", "--filter", `label=${SESSION_LABEL}=${session}`];
    expect((await engine.docker.docker(labelled)).out.trim()).toBe(container);

    child.stdin.write("die\n");
    const [, signal] = await exited;
    expect(signal).toBe("SIGKILL");
    // No handler ran in the killed process: only its reaper can remove the container.
    let left = container;
    for (let i = 0; i < 300 && left !== ""; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      left = (await engine.docker.docker(labelled)).out.trim();
    }
    expect(left).toBe("");
  }, 120_000);

  it("leaves no container of the session behind once the registries stop", async () => {
    expect(await engine.containers()).toHaveLength(2);
    await Promise.all([source.stop(), target.stop()]);
    expect(await engine.containers()).toEqual([]);
  });
});
