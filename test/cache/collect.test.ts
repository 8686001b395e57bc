import { createHash } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { CollectionPacer, fullCollection } from "../../src/cache/collect.ts";
import type { RegistryClient } from "../../src/oci/registry.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { eventually } from "../support/eventually.ts";
import { type CacheRig, fetchFrom, rigClient, startRig } from "./support.ts";

const MiB = 1024 * 1024;

describe("stowage cache: collections paced by fetched bytes", () => {
  it("collects once per interval of counted bytes, however many fetches count at once", () => {
    let collections = 0;
    const pacer = new CollectionPacer(() => collections++, 4 * MiB);
    const fetches = [0, 1, 2];
    for (let round = 0; round < 8; round++) for (const _fetch of fetches) pacer.count(MiB / 2);
    expect(collections).toBe(3);
    // A chunk far past the mark is one collection, and the count goes on from what is left.
    pacer.count(9 * MiB);
    expect(collections).toBe(4);
    pacer.count(3 * MiB);
    expect(collections).toBe(5);
  });

  it("frees buffers nothing holds any more, outside V8's heap", async () => {
    const collect = fullCollection();
    let dead: Buffer[] | undefined = Array.from({ length: 64 }, () => Buffer.alloc(MiB, 1));
    expect(dead.length).toBe(64);
    dead = undefined;
    const before = process.memoryUsage().arrayBuffers;
    collect();
    await eventually(
      "the dropped 64 MiB freed",
      async () => process.memoryUsage().arrayBuffers < before - 32 * MiB,
      5_000,
      20,
    );
    // No `gc` for other code: the collector comes from a context of its own.
    expect((globalThis as { gc?: unknown }).gc).toBeUndefined();
  });

  describe("a cold pull through the front", () => {
    let rig: CacheRig | undefined;
    let client: RegistryClient | undefined;
    afterEach(async () => {
      await client?.close();
      await rig?.stop();
    });

    it("counts the bytes it fetched and the bytes it stored towards collections", async () => {
      let collections = 0;
      rig = await startRig({ collection: new CollectionPacer(() => collections++, MiB) });
      client = rigClient(rig);
      const pushed = await pushSinglePlatformImage(
        client,
        { registry: rig.upstream.host, repository: "acme/collected" },
        "v1",
        { layerSizes: [6 * MiB] },
      );
      const layer = pushed.image.layers[0].descriptor;
      const result = await fetchFrom(rig.front.url, `${rig.prefix("acme/collected")}/blobs/${layer.digest}`);
      expect(result.status).toBe(200);
      expect(`sha256:${createHash("sha256").update(result.body).digest("hex")}`).toBe(layer.digest);
      // 6 MiB from the upstream, then 6 MiB read back from the spool for storage.
      await eventually(
        "a collection per MiB fetched and per MiB stored",
        async () => collections >= 12,
        10_000,
        50,
      );
    });
  });
});
