/**
 * The container tier's containerd node (testkit/containers/containerdNode.ts): Debian's
 * containerd in a container with CAP_SYS_ADMIN on the host network pulls through CRI from a registry
 * container, with its hosts.toml written by the test as the agent would write it, and leaves
 * nothing behind once stopped.
 */
import { mkdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CriClient } from "../../src/agent/cri.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type ContainerdNode, startContainerdNode } from "../../testkit/containers/containerdNode.ts";
import { dockerUnavailableHere } from "../../testkit/docker.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import {
  type ContainerEngine,
  type ContainerRegistry,
  startContainerEngine,
  startContainerRegistry,
} from "../../testkit/testcontainers.ts";

const whyNoDocker = dockerUnavailableHere();
const title = "containerd node as a container (testcontainers)";

describe.skipIf(whyNoDocker !== undefined)(whyNoDocker ? `${title} (skipped: ${whyNoDocker})` : title, () => {
  let engine: ContainerEngine;
  let registry: ContainerRegistry;
  let node: ContainerdNode;
  let client: RegistryClient;
  let cri: CriClient;

  beforeAll(async () => {
    engine = await startContainerEngine();
    [registry, node] = await Promise.all([startContainerRegistry(engine), startContainerdNode(engine)]);
    client = new RegistryClient({ insecureHosts: [registry.host] });
    cri = new CriClient(node.socketPath);
  }, 300_000);

  afterAll(async () => {
    cri?.close();
    await client?.close();
    await engine?.dispose();
  }, 120_000);

  it("answers CRI from inside a host-network container (CAP_SYS_ADMIN) of the locally built containerd image", async () => {
    const [info] = JSON.parse((await engine.docker.docker(["inspect", node.container.getId()])).out);
    expect(info.State.Running).toBe(true);
    expect(info.HostConfig.CapAdd).toContain("SYS_ADMIN");
    expect(info.HostConfig.NetworkMode).toBe("host");
    expect(info.Config.Image).toMatch(/^stowage\.test\/containerd:/);
    const version = await cri.version();
    expect(version.runtimeName).toBe("containerd");
    expect(version.runtimeApiVersion).toBe("v1");
  });

  it("pulls an image through CRI from a registry container, honouring the hosts.toml in its config_path", async () => {
    const pushed = await pushSinglePlatformImage(
      client,
      { registry: registry.host, repository: "node/app" },
      "v1",
      { layerSizes: [96 * 1024] },
    );
    // containerd speaks HTTPS to a registry unless its hosts.toml says otherwise.
    await mkdir(join(node.certsDir, registry.host), { recursive: true });
    await writeFile(join(node.certsDir, registry.host, "hosts.toml"), `server = "http://${registry.host}"\n`);

    const ref = `${registry.host}/node/app:v1`;
    await cri.pullImage(ref);
    const status = await cri.imageStatus(ref);
    expect(status?.repoDigests).toContain(`${registry.host}/node/app@${pushed.digest}`);
    // The content landed in the node's own root (the bind-mounted dir), fetched from the registry container.
    expect(
      (
        await stat(join(node.dir, "root", "io.containerd.content.v1.content", "blobs", "sha256"))
      ).isDirectory(),
    ).toBe(true);
    // Every layer was fetched from the registry container, which is what the node unpacked.
    const requests = await registry.requests();
    for (const layer of pushed.image.layers) {
      const path = `/v2/node/app/blobs/${layer.descriptor.digest}`;
      expect(requests.some((r) => r.method === "GET" && r.path === path && r.status === 200)).toBe(true);
    }
  });

  it("leaves no container of the session behind once the node and registry stop", async () => {
    expect(await engine.containers()).toHaveLength(2);
    cri.close();
    await Promise.all([node.stop(), registry.stop()]);
    expect(await engine.containers()).toEqual([]);
  });
});
