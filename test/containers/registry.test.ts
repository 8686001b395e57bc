/**
 * The container tier (testkit/testcontainers.ts): distribution registries run by testcontainers
 * from the image built here, on a private Docker engine with host networking, and `stowage
 * mirror` copying between them as it does between the process-tier registries. Cleanup is the
 * file's own Ryuk equivalent: nothing of the session is left once the registries stop.
 */
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
import { stowage } from "../support/run.ts";

const whyNoDocker = dockerUnavailableHere();

describe.runIf(whyNoDocker === undefined)("registries as containers (testcontainers)", () => {
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

  it("leaves no container of the session behind once the registries stop", async () => {
    expect(await engine.containers()).toHaveLength(2);
    await Promise.all([source.stop(), target.stop()]);
    expect(await engine.containers()).toEqual([]);
  });
});

describe.runIf(whyNoDocker !== undefined)("registries as containers (no Docker engine here)", () => {
  it.skip(`needs a Docker engine: ${whyNoDocker}`, () => {});
});
