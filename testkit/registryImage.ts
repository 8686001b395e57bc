/**
 * A CNCF distribution container image built here from Debian's /usr/bin/docker-registry, since no
 * image can be pulled: FROM scratch with the binary, the glibc files it links against, a default
 * config (filesystem storage, :5000) and /var/lib/registry and /tmp owned by 65532, so it runs as
 * the chart's cache StatefulSet runs it (non-root 65532, read-only root filesystem, the config
 * mounted at /etc/docker/registry, emptyDirs at /var/lib/registry and /tmp). The entrypoint and
 * command are the upstream image's: `registry serve /etc/docker/registry/config.yml`.
 */
import { execFile } from "node:child_process";
import { chmod, copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { promisify } from "node:util";
import { type RunningDocker, runCommand } from "./docker.ts";

const run = promisify(execFile);
export const REGISTRY_BINARY = "/usr/bin/docker-registry";
const NONROOT = 65532;

const DEFAULT_CONFIG = `version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
`;

/** A Debian package's installed version, made a valid image tag. */
export async function debianPackageVersion(name: string): Promise<string> {
  // dpkg-query's own ${Version} field syntax, not a template literal
  const format = ["-f=$", "{Version}"].join("");
  const { stdout } = await run("dpkg-query", ["-W", format, name]);
  return stdout.trim().replace(/[^A-Za-z0-9_.-]/g, "_");
}

/** The shared libraries the binary loads, from `ldd` (the vDSO has no file). */
export async function linkedLibraries(binary: string): Promise<string[]> {
  const { stdout } = await run("ldd", [binary]);
  const paths: string[] = [];
  for (const line of stdout.split("\n")) {
    const match = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
    if (match?.[1]) paths.push(match[1]);
  }
  return paths;
}

export interface ScratchImageSpec {
  tag: string;
  /** A host binary, copied to /bin/<name> with the shared libraries it loads. */
  binary: string;
  name: string;
  /** Adds the image's other files: `rootfs` is copied owned by root, `writable` owned by 65532. */
  prepare?(dirs: { rootfs: string; writable: string }): Promise<void>;
  /** Dockerfile lines after the COPYs (USER, ENTRYPOINT, CMD, ...). */
  instructions: string[];
}

const built = new WeakMap<RunningDocker, Map<string, Promise<string>>>();

/**
 * Builds a FROM-scratch image of one host binary (the way this machine gets images: nothing can be
 * pulled) on `docker`, once per engine and tag; returns the tag.
 */
export function buildScratchImage(docker: RunningDocker, spec: ScratchImageSpec): Promise<string> {
  let images = built.get(docker);
  if (!images) {
    images = new Map();
    built.set(docker, images);
  }
  let pending = images.get(spec.tag);
  if (!pending) {
    pending = buildScratch(docker, spec);
    images.set(spec.tag, pending);
  }
  return pending;
}

async function buildScratch(docker: RunningDocker, spec: ScratchImageSpec): Promise<string> {
  const context = await mkdtemp(join(tmpdir(), `${spec.name}-image-`));
  try {
    const rootfs = join(context, "rootfs");
    const writable = join(context, "writable");
    await mkdir(join(rootfs, "bin"), { recursive: true });
    await mkdir(join(writable, "tmp"), { recursive: true });
    await chmod(join(writable, "tmp"), 0o1777);
    await copyFile(spec.binary, join(rootfs, "bin", spec.name));
    await chmod(join(rootfs, "bin", spec.name), 0o755);
    for (const library of await linkedLibraries(spec.binary)) {
      await mkdir(join(rootfs, dirname(library)), { recursive: true });
      await copyFile(library, join(rootfs, library));
    }
    await spec.prepare?.({ rootfs, writable });
    await writeFile(
      join(context, "Dockerfile"),
      [
        "FROM scratch",
        "COPY rootfs/ /",
        // COPY makes everything root-owned; the writable dirs come in a second COPY with --chown.
        `COPY --chown=${NONROOT}:${NONROOT} writable/ /`,
        ...spec.instructions,
        "",
      ].join("\n"),
    );
    const result = await docker.docker(["build", "--network", "host", "-t", spec.tag, context], 300_000);
    if (result.code !== 0)
      throw new Error(`docker build of ${spec.tag} failed (${result.code}): ${result.err.slice(-2000)}`);
    return spec.tag;
  } finally {
    await rm(context, { recursive: true, force: true });
  }
}

const registryImages = new WeakMap<RunningDocker, Promise<string>>();

/** Builds the distribution image on `docker` once (per engine) and returns its tag. */
export function buildRegistryImage(docker: RunningDocker): Promise<string> {
  let pending = registryImages.get(docker);
  if (!pending) {
    pending = buildDistribution(docker);
    registryImages.set(docker, pending);
  }
  return pending;
}

async function buildDistribution(docker: RunningDocker): Promise<string> {
  return buildScratchImage(docker, {
    tag: `stowage.test/distribution:${await debianPackageVersion("docker-registry")}`,
    binary: REGISTRY_BINARY,
    name: "registry",
    async prepare({ rootfs, writable }) {
      await mkdir(join(rootfs, "etc", "docker", "registry"), { recursive: true });
      await writeFile(join(rootfs, "etc", "docker", "registry", "config.yml"), DEFAULT_CONFIG);
      await mkdir(join(writable, "var", "lib", "registry"), { recursive: true });
    },
    instructions: [
      `USER ${NONROOT}:${NONROOT}`,
      "VOLUME /var/lib/registry",
      "EXPOSE 5000",
      'ENTRYPOINT ["/bin/registry"]',
      'CMD ["serve", "/etc/docker/registry/config.yml"]',
    ],
  });
}

/** `docker save` of `tag` into `file`, an archive `ctr images import` takes. */
export async function saveImage(docker: RunningDocker, tag: string, file: string): Promise<void> {
  const result = await docker.docker(["save", "-o", file, tag], 300_000);
  if (result.code !== 0) throw new Error(`docker save ${tag} failed (${result.code}): ${result.err}`);
}

/** The archives of what the chart runs, ready for `ctr images import` on a kubelet node. */
export interface ChartImageArchives {
  stowage: string;
  registry: string;
  /** the distribution image's tag, for the chart's cache.image values */
  registryTag: string;
}

/**
 * Builds the Stowage image (scripts/build-image.sh, tagged `stowageTag`) and the distribution
 * image, and `docker save`s both into `dir`: what the chart-on-kubelet tests import into their
 * node's containerd.
 */
export async function buildChartImageArchives(
  docker: RunningDocker,
  dir: string,
  stowageTag: string,
): Promise<ChartImageArchives> {
  const root = resolve(import.meta.dirname, "..");
  const built = await runCommand("bash", [join(root, "scripts/build-image.sh")], {
    env: { ...docker.env, STOWAGE_IMAGE_TAG: stowageTag },
    timeoutMs: 600_000,
  });
  if (built.code !== 0)
    throw new Error(`scripts/build-image.sh exited ${built.code}:\n${built.err.slice(-4000)}`);
  const registryTag = await buildRegistryImage(docker);
  const stowage = join(dir, "stowage.tar");
  const registry = join(dir, "registry.tar");
  await saveImage(docker, stowageTag, stowage);
  await saveImage(docker, registryTag, registry);
  return { stowage, registry, registryTag };
}
