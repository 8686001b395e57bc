/**
 * A synthetic image a real kubelet can run: busybox (Debian's static /bin/busybox, as the
 * kubelet nodes' own images) in its first layer, then seeded random data layers as large as a
 * test or a benchmark wants. Pushed to a registry like any synthetic image (testkit/images.ts),
 * so the node pulls it from there instead of having it imported.
 */
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { MediaType } from "../src/oci/types.ts";
import { bytesBlob, rawManifest, type SyntheticBlob, type SyntheticImage, syntheticLayer } from "./images.ts";

const run = promisify(execFile);
const BUSYBOX = "/bin/busybox";
const APPLETS = ["sh", "echo", "sleep", "cat", "ls", "true"];

let busyboxLayerOnce: Promise<SyntheticBlob> | undefined;

/** The busybox layer (an uncompressed tar of /bin, a couple of MB, made once per process). */
export function busyboxLayer(): Promise<SyntheticBlob> {
  busyboxLayerOnce ??= (async () => {
    const work = await mkdtemp(join(tmpdir(), "busybox-layer-"));
    try {
      await mkdir(join(work, "rootfs", "bin"), { recursive: true });
      await run("cp", [BUSYBOX, join(work, "rootfs", "bin", "busybox")]);
      for (const applet of APPLETS) await symlink("busybox", join(work, "rootfs", "bin", applet));
      const tar = join(work, "layer.tar");
      // Fixed owner and mtime: the same bytes (and digest) on every run.
      await run("tar", [
        "--numeric-owner",
        "--owner=0",
        "--group=0",
        "--mtime=@0",
        "--sort=name",
        "-C",
        join(work, "rootfs"),
        "-cf",
        tar,
        "bin",
      ]);
      return bytesBlob(await readFile(tar), MediaType.OciLayerTar);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  })();
  return busyboxLayerOnce;
}

export interface RunnableImageSpec {
  /** Seed of the data layers: the same seed and sizes give the same digests. */
  seed: string;
  /** Bytes of random content per data layer, after the busybox layer. */
  dataLayerSizes: number[];
  /** The image's entrypoint (default: a shell that prints a line and sleeps until stopped). */
  entrypoint?: string[];
}

/** An OCI linux/amd64 image: busybox, then the data layers. */
export async function runnableImage(spec: RunnableImageSpec): Promise<SyntheticImage> {
  const layers = [
    await busyboxLayer(),
    ...(await Promise.all(
      spec.dataLayerSizes.map((size, i) => syntheticLayer({ seed: `${spec.seed}/${i}`, size })),
    )),
  ];
  const platform = { os: "linux", architecture: "amd64" };
  const config = bytesBlob(
    Buffer.from(
      JSON.stringify({
        created: "2024-01-01T00:00:00Z",
        ...platform,
        config: {
          Env: ["PATH=/bin"],
          Entrypoint: spec.entrypoint ?? [
            "/bin/sh",
            "-c",
            "echo model server up; trap 'exit 0' TERM; while true; do sleep 1; done",
          ],
        },
        rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
      }),
    ),
    MediaType.OciConfig,
  );
  const manifest = rawManifest(
    {
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      config: config.descriptor,
      layers: layers.map((l) => l.descriptor),
    },
    MediaType.OciManifest,
  );
  return {
    manifest,
    config,
    layers,
    platform,
    blobs: [config, ...layers],
    descriptor: {
      mediaType: MediaType.OciManifest,
      digest: manifest.digest,
      size: manifest.bytes.length,
      platform,
    },
  };
}
