/**
 * The CNCF distribution image built here from Debian's docker-registry (testkit/registryImage.ts)
 * runs the way the chart's cache StatefulSet runs it: as uid 65532, read-only root filesystem,
 * an empty volume at /var/lib/registry and /tmp, host networking. An image pushed through it
 * comes back byte for byte, which needs the binary's glibc, the default config and the writable
 * storage dir to all be right.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryClient } from "../../src/oci/registry.ts";
import { dockerUnavailableHere, type RunningDocker, startDocker } from "../../testkit/docker.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import { buildRegistryImage, saveImage } from "../../testkit/registryImage.ts";

const whyNoDocker = dockerUnavailableHere();
const run = promisify(execFile);

async function sha256Of(stream: AsyncIterable<Buffer>): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of stream) hash.update(chunk);
  return `sha256:${hash.digest("hex")}`;
}

const title = "distribution image built from Debian's binary";
describe.skipIf(whyNoDocker !== undefined)(whyNoDocker ? `${title} (skipped: ${whyNoDocker})` : title, () => {
  let docker: RunningDocker;
  let tag: string;
  let containerId: string | undefined;
  let host: string;
  let work: string;

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), "registry-image-test-"));
    docker = await startDocker();
    tag = await buildRegistryImage(docker);
    host = `127.0.0.1:${await freePort()}`;
    const started = await docker.docker([
      "run",
      "-d",
      "--network",
      "host",
      "--user",
      "65532:65532",
      "--read-only",
      // The chart's emptyDirs: an anonymous volume (takes the image's ownership of the dir) and a tmpfs.
      "--mount",
      "type=volume,target=/var/lib/registry",
      "--tmpfs",
      "/tmp",
      "-e",
      `REGISTRY_HTTP_ADDR=${host}`,
      tag,
    ]);
    if (started.code !== 0) throw new Error(`docker run ${tag} failed: ${started.err}`);
    containerId = started.out.trim();
    for (let i = 0; ; i++) {
      const status = await fetch(`http://${host}/v2/`).then(
        (res) => res.status,
        () => 0,
      );
      if (status === 200) break;
      if (i > 200) {
        const logs = await docker.docker(["logs", containerId]);
        throw new Error(`registry image did not serve /v2/ on ${host}: ${logs.out}${logs.err}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }, 300_000);

  afterAll(async () => {
    if (containerId) await docker?.docker(["rm", "-fv", containerId]);
    await docker?.dispose();
    if (work) await rm(work, { recursive: true, force: true });
  }, 120_000);

  it("is tagged with the Debian package version and keeps the upstream entrypoint, command and user", async () => {
    expect(tag).toMatch(/^stowage\.test\/distribution:[A-Za-z0-9_.-]+$/);
    const inspected = await docker.docker(["image", "inspect", tag]);
    expect(inspected.code, inspected.err).toBe(0);
    const [image] = JSON.parse(inspected.out);
    expect(image.Config.Entrypoint).toEqual(["/bin/registry"]);
    expect(image.Config.Cmd).toEqual(["serve", "/etc/docker/registry/config.yml"]);
    expect(image.Config.User).toBe("65532:65532");
    console.log(`${tag}: ${(image.Size / 1e6).toFixed(1)} MB`);
  });

  it("is built once per engine: later calls share the first build", async () => {
    const first = buildRegistryImage(docker);
    expect(buildRegistryImage(docker)).toBe(first);
    expect(await first).toBe(tag);
  });

  it("runs as non-root 65532 on a read-only root filesystem with host networking", async () => {
    const inspected = await docker.docker(["inspect", containerId as string]);
    const [container] = JSON.parse(inspected.out);
    expect(container.State.Running).toBe(true);
    expect(container.HostConfig.ReadonlyRootfs).toBe(true);
    expect(container.HostConfig.NetworkMode).toBe("host");
    expect(container.Config.User).toBe("65532:65532");
  });

  it("stores a pushed image and serves it back byte-exact, manifest and every blob", async () => {
    const client = new RegistryClient({ insecureHosts: [host] });
    try {
      const repo = { registry: host, repository: "image-test/app" };
      const pushed = await pushSinglePlatformImage(client, repo, "v1", {
        layerSizes: [300 * 1024, 20 * 1024],
      });
      const manifest = await client.getManifest(repo, "v1");
      expect(`sha256:${createHash("sha256").update(manifest.bytes).digest("hex")}`).toBe(pushed.digest);
      for (const blob of pushed.image.blobs) {
        const served = await sha256Of(client.getBlob(repo, blob.descriptor));
        expect(served).toBe(blob.descriptor.digest);
      }
    } finally {
      await client.close();
    }
    // The bytes went to the storage volume, written by the non-root user (the image has no shell
    // to look from inside, so the volume is read from the engine's side).
    const mounts = await docker.docker([
      "inspect",
      "-f",
      "{{range .Mounts}}{{.Source}}{{end}}",
      containerId as string,
    ]);
    const volume = mounts.out.trim();
    const repository = await stat(join(volume, "docker/registry/v2/repositories/image-test/app"));
    expect(repository.isDirectory()).toBe(true);
    expect(repository.uid).toBe(65532);
  });

  it("saves to a docker-save archive that names the tag, the form `ctr images import` takes", async () => {
    const archive = join(work, "distribution.tar");
    await saveImage(docker, tag, archive);
    const { stdout: manifest } = await run("tar", ["-xOf", archive, "manifest.json"]);
    const [entry] = JSON.parse(manifest);
    expect(entry.RepoTags).toEqual([tag]);
    const { stdout: listed } = await run("tar", ["-tf", archive]);
    for (const layer of entry.Layers) expect(listed.split("\n")).toContain(layer);
  });
});
