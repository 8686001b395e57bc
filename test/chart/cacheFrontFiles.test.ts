/**
 * The chart gives the cache front the registry's volume, read-only, and `--storage-root` at the
 * registry's filesystem root, so hits are read from the files (src/cache/blobFiles.ts); with S3
 * there are no files and the front reads over HTTP. Rendered by the real helm.
 */
import { describe, expect, it } from "vitest";
import { parseCacheArgs } from "../../src/cache/command.ts";
import { containerOf, flagValues, getObject, RELEASE, type RenderedObject, render } from "./render.ts";

const statefulSetOf = (objects: RenderedObject[]) => getObject(objects, "StatefulSet", `${RELEASE}-cache`);

describe("the cache front in the chart reads hits from the registry's volume", () => {
  it("mounts the registry's data read-only into the front at the registry's rootdirectory and names it --storage-root", async () => {
    const objects = await render();
    const statefulSet = statefulSetOf(objects);
    const registry = containerOf(statefulSet, "registry");
    const front = containerOf(statefulSet, "front");
    const registryData = (registry.volumeMounts ?? []).find(
      (mount: { name: string }) => mount.name === "data",
    );
    const frontData = (front.volumeMounts ?? []).find((mount: { name: string }) => mount.name === "data");
    expect(registryData?.mountPath).toBe("/var/lib/registry");
    expect(frontData).toEqual({ name: "data", mountPath: "/var/lib/registry", readOnly: true });
    // The registry's own config puts its filesystem root there.
    const config = getObject(objects, "ConfigMap", `${RELEASE}-cache`);
    expect(config.data["config.yml"]).toMatch(/rootdirectory: \/var\/lib\/registry/);
    const args = (front.args ?? []).slice(1);
    expect(flagValues(args).get("storage-root")).toEqual(["/var/lib/registry"]);
    const parsed = await parseCacheArgs(
      args.filter((arg: string) => !arg.startsWith("--node-token-secret-file=")),
      {},
    );
    if (parsed === "help") throw new Error("unexpected help");
    expect(parsed.config.storageRoot).toBe("/var/lib/registry");
  });

  it("gives the front no volume and no --storage-root when the registry stores in S3", async () => {
    const objects = await render({
      values: [
        {
          cache: { s3: { enabled: true, bucket: "images", regionEndpoint: "http://seaweedfs.storage:8333" } },
        },
      ],
    });
    const front = containerOf(statefulSetOf(objects), "front");
    expect((front.volumeMounts ?? []).map((mount: { name: string }) => mount.name)).not.toContain("data");
    expect(flagValues((front.args ?? []).slice(1)).get("storage-root")).toBeUndefined();
  });
});
