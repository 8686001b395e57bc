/**
 * A containerd "node" as a container of the container tier (testkit/testcontainers.ts): Debian's
 * containerd binary and the glibc it links against in a scratch image built here, run
 * with CAP_SYS_ADMIN on the host network. Its root, state, socket and registry hosts dir sit in a host
 * temp dir bind-mounted at the same path, so the CRI socket and hosts.toml files are reached
 * from the test exactly as with testkit/containerd.ts's process. Image calls only (pull, status,
 * remove): the image has no runc, and no CNI is configured.
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { StartedTestContainer } from "testcontainers";
import { configToml } from "../containerd.ts";
import type { RunningDocker } from "../docker.ts";
import { buildScratchImage, debianPackageVersion } from "../registryImage.ts";
import { type ContainerEngine, SESSION_LABEL } from "../testcontainers.ts";

const CONTAINERD_BINARY = "/usr/bin/containerd";

/** Builds `stowage.test/containerd:<Debian version>` on `docker` once per engine; returns the tag. */
export async function buildContainerdImage(docker: RunningDocker): Promise<string> {
  return buildScratchImage(docker, {
    tag: `stowage.test/containerd:${await debianPackageVersion("containerd")}`,
    binary: CONTAINERD_BINARY,
    name: "containerd",
    instructions: ['ENTRYPOINT ["/bin/containerd"]'],
  });
}

export interface ContainerdNode {
  dir: string;
  socketPath: string;
  /** The registry hosts dir (`config_path`): `<certsDir>/<host>/hosts.toml`. */
  certsDir: string;
  configFile: string;
  container: StartedTestContainer;
  /** Removes the container, then its dir. */
  stop(): Promise<void>;
}

export async function startContainerdNode(engine: ContainerEngine): Promise<ContainerdNode> {
  const { GenericContainer, Wait } = await import("testcontainers");
  const image = await buildContainerdImage(engine.docker);
  // Short path: unix socket paths are limited to 108 bytes.
  const dir = await mkdtemp(join(tmpdir(), "ctrdc-"));
  const certsDir = join(dir, "certs.d");
  const configFile = join(dir, "config.toml");
  await mkdir(certsDir, { recursive: true });
  // The process tier's config: image calls only, so no cgroups, CNI left unconfigured.
  await writeFile(configFile, configToml(dir, "overlayfs", true, {}));
  let container: StartedTestContainer;
  try {
    container = await new GenericContainer(image)
      .withNetworkMode("host")
      // The overlayfs snapshotter mounts inside the container. Not --privileged: that asks for every
      // capability, and root here lacks CAP_SYS_RESOURCE, so runc refuses ("unable to apply caps").
      .withAddedCapabilities("SYS_ADMIN")
      .withSecurityOpt("seccomp=unconfined", "apparmor=unconfined")
      .withBindMounts([{ source: dir, target: dir, mode: "rw" }])
      .withCommand(["--config", configFile])
      .withLabels({ [SESSION_LABEL]: engine.session })
      .withWaitStrategy(Wait.forLogMessage("containerd successfully booted"))
      .withStartupTimeout(60_000)
      .start();
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    dir,
    socketPath: join(dir, "containerd.sock"),
    certsDir,
    configFile,
    container,
    async stop() {
      await container.stop({ remove: true, timeout: 10_000 });
      await rm(dir, { recursive: true, force: true });
    },
  };
}
