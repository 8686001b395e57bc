import { randomBytes } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { digestOf, RegistryClient, type RepoRef } from "../../src/oci/registry.ts";
import { type Descriptor, MediaType, type RawManifest } from "../../src/oci/types.ts";
import { VerifyingTransform } from "../../src/oci/verify.ts";
import { StowageError } from "../../src/util/errors.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";

let registry: RunningRegistry;
let proxy: FaultProxy;
let client: RegistryClient;

beforeAll(async () => {
  registry = await startRegistry();
  proxy = await startFaultProxy(registry.url);
  client = new RegistryClient({ insecureHosts: [registry.host, proxy.host], chunkSizeBytes: 100_000 });
});

afterAll(async () => {
  await client?.close();
  await proxy?.stop();
  await registry?.stop();
});

function repo(repository: string): RepoRef {
  return { registry: registry.host, repository };
}

function blob(
  bytes: Buffer,
  mediaType: string = MediaType.OciLayerTar,
): { descriptor: Descriptor; bytes: Buffer } {
  return { descriptor: { mediaType, digest: digestOf(bytes), size: bytes.length }, bytes };
}

function manifestOf(text: string, mediaType: string): RawManifest {
  const bytes = Buffer.from(text);
  return { mediaType, digest: digestOf(bytes), bytes };
}

async function push(target: RepoRef, content: { descriptor: Descriptor; bytes: Buffer }): Promise<void> {
  await client.pushBlob(target, content.descriptor, () => Readable.from([content.bytes]));
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Pushes a config and one layer and an OCI image manifest for them; returns the manifest. */
async function pushImage(target: RepoRef, tag: string, seed: string): Promise<RawManifest> {
  const config = blob(
    Buffer.from(JSON.stringify({ architecture: "amd64", os: "linux", seed })),
    MediaType.OciConfig,
  );
  const layer = blob(randomBytes(50_000));
  await push(target, config);
  await push(target, layer);
  const manifest = manifestOf(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      config: config.descriptor,
      layers: [layer.descriptor],
    }),
    MediaType.OciManifest,
  );
  await client.putManifest(target, tag, manifest);
  return manifest;
}

describe("manifests", () => {
  it("pushes blobs and an OCI manifest and reads the manifest back byte-exact with its digest", async () => {
    const target = repo("oci/image");
    const pushed = await pushImage(target, "v1", "oci");
    const fetched = await client.getManifest(target, "v1");
    expect(fetched.bytes.equals(pushed.bytes)).toBe(true);
    expect(fetched.digest).toBe(pushed.digest);
    expect(fetched.mediaType).toBe(MediaType.OciManifest);
    const byDigest = await client.getManifest(target, pushed.digest);
    expect(byDigest.bytes.equals(pushed.bytes)).toBe(true);
  });

  it("keeps a Docker schema 2 manifest's exact bytes, whitespace included, and its media type", async () => {
    const target = repo("docker/image");
    const config = blob(Buffer.from('{"architecture":"arm64","os":"linux"}'), MediaType.DockerConfig);
    const layer = blob(randomBytes(10_000), MediaType.DockerLayerTarGzip);
    await push(target, config);
    await push(target, layer);
    // Unusual formatting: any re-serialisation would change the digest.
    const text = `{\n   "schemaVersion": 2,\n   "mediaType": "${MediaType.DockerManifest}",\n   "config": ${JSON.stringify(config.descriptor)},\n   "layers": [ ${JSON.stringify(layer.descriptor)} ]\n}\n`;
    const pushed = manifestOf(text, MediaType.DockerManifest);
    const stored = await client.putManifest(target, "v2", pushed);
    expect(stored).toBe(pushed.digest);
    const fetched = await client.getManifest(target, "v2");
    expect(fetched.bytes.toString()).toBe(text);
    expect(fetched.digest).toBe(pushed.digest);
    expect(fetched.mediaType).toBe(MediaType.DockerManifest);
  });

  it("pushes an image index once its child manifests exist and reads it back", async () => {
    const target = repo("multi/arch");
    const amd64 = await pushImage(target, "amd64", "amd64");
    const arm64 = await pushImage(target, "arm64", "arm64");
    const index = manifestOf(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.OciIndex,
        manifests: [
          {
            mediaType: MediaType.OciManifest,
            digest: amd64.digest,
            size: amd64.bytes.length,
            platform: { os: "linux", architecture: "amd64" },
          },
          {
            mediaType: MediaType.OciManifest,
            digest: arm64.digest,
            size: arm64.bytes.length,
            platform: { os: "linux", architecture: "arm64" },
          },
        ],
      }),
      MediaType.OciIndex,
    );
    await client.putManifest(target, "latest", index);
    const fetched = await client.getManifest(target, "latest");
    expect(fetched.bytes.equals(index.bytes)).toBe(true);
    expect(fetched.mediaType).toBe(MediaType.OciIndex);
  });

  it("refuses an index whose child manifests are missing with ManifestBlobUnknown", async () => {
    const missing = `sha256:${"1".repeat(64)}`;
    const index = manifestOf(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.OciIndex,
        manifests: [{ mediaType: MediaType.OciManifest, digest: missing, size: 100 }],
      }),
      MediaType.OciIndex,
    );
    const err = await client.putManifest(repo("multi/broken"), "latest", index).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StowageError);
    expect((err as StowageError).reason).toBe("ManifestBlobUnknown");
  });

  it("answers HEAD with digest, media type and size, and undefined for an unknown tag", async () => {
    const target = repo("head/image");
    const pushed = await pushImage(target, "v1", "head");
    expect(await client.headManifest(target, "v1")).toEqual({
      digest: pushed.digest,
      mediaType: MediaType.OciManifest,
      size: pushed.bytes.length,
    });
    expect(await client.headManifest(target, "nope")).toBeUndefined();
  });

  it("deletes a manifest by digest so it can no longer be fetched", async () => {
    const target = repo("delete/image");
    const pushed = await pushImage(target, "v1", "delete");
    expect(await client.deleteManifest(target, pushed.digest)).toBe(true);
    expect(await client.headManifest(target, pushed.digest)).toBeUndefined();
    expect(await client.deleteManifest(target, pushed.digest)).toBe(false);
  });

  it("reports an unknown tag as ImageNotFound naming the reference", async () => {
    await pushImage(repo("known/repo"), "v1", "known");
    const err = await client.getManifest(repo("known/repo"), "missing-tag").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StowageError);
    expect((err as StowageError).reason).toBe("ImageNotFound");
    expect((err as StowageError).message).toContain(`${registry.host}/known/repo:missing-tag`);
    const unknownRepo = await client.getManifest(repo("never/pushed"), "v1").catch((e: unknown) => e);
    expect((unknownRepo as StowageError).reason).toBe("ImageNotFound");
  });
});

describe("blobs", () => {
  it("reports the size of a present blob and undefined for a missing one", async () => {
    const target = repo("blobs/has");
    const content = blob(randomBytes(12_345));
    expect(await client.hasBlob(target, content.descriptor.digest)).toBeUndefined();
    await push(target, content);
    expect(await client.hasBlob(target, content.descriptor.digest)).toBe(12_345);
  });

  it("streams a blob back with exactly the pushed bytes and reports progress", async () => {
    const target = repo("blobs/get");
    const content = blob(randomBytes(700_000));
    await push(target, content);
    let progress = 0;
    const fetched = await readAll(
      client.getBlob(target, content.descriptor, { onBytes: (n) => (progress += n) }),
    );
    expect(fetched.equals(content.bytes)).toBe(true);
    expect(progress).toBe(700_000);
  });

  it("reports a blob the repository does not have as BlobNotFound", async () => {
    const content = blob(randomBytes(100));
    const err = await readAll(client.getBlob(repo("blobs/get"), content.descriptor)).catch((e: unknown) => e);
    expect((err as StowageError).reason).toBe("BlobNotFound");
  });

  it("mounts a blob from another repository without uploading it", async () => {
    const content = blob(randomBytes(40_000));
    await push(repo("mount/source"), content);
    const before = (await registry.requests()).length;
    expect(await client.mountBlob(repo("mount/target"), content.descriptor.digest, "mount/source")).toBe(
      true,
    );
    expect(await client.hasBlob(repo("mount/target"), content.descriptor.digest)).toBe(40_000);
    const after = (await registry.requests()).slice(before);
    expect(after.some((r) => r.method === "POST" && r.status === 201 && r.path.includes("mount="))).toBe(
      true,
    );
    expect(after.some((r) => r.method === "PUT" || r.method === "PATCH")).toBe(false);
  });

  it("returns false for a blob that cannot be mounted and cancels the upload session it opened", async () => {
    const content = blob(randomBytes(1_000));
    const before = (await registry.requests()).length;
    expect(await client.mountBlob(repo("mount/target2"), content.descriptor.digest, "mount/nowhere")).toBe(
      false,
    );
    const after = (await registry.requests()).slice(before);
    expect(after.map((r) => `${r.method} ${r.status}`)).toEqual(["POST 202", "DELETE 204"]);
    expect(await client.hasBlob(repo("mount/target2"), content.descriptor.digest)).toBeUndefined();
  });

  it("falls back to chunked PATCH uploads when the registry refuses the monolithic PUT", async () => {
    const viaProxy: RepoRef = { registry: proxy.host, repository: "chunked/blob" };
    const content = blob(randomBytes(250_000));
    proxy.addRule({
      match: { method: "PUT", path: /\/blobs\/uploads\// },
      action: { kind: "status", status: 405 },
    });
    const seenBefore = proxy.seen().length;
    let opened = 0;
    await client.pushBlob(viaProxy, content.descriptor, () => {
      opened++;
      return Readable.from([content.bytes.subarray(0, 120_000), content.bytes.subarray(120_000)]);
    });
    const seen = proxy.seen().slice(seenBefore);
    const patches = seen.filter((r) => r.method === "PATCH");
    expect(patches.map((r) => r.status)).toEqual([202, 202, 202]);
    expect(seen.filter((r) => r.method === "PUT").map((r) => r.status)).toEqual([405, 201]);
    expect(opened).toBe(2);
    const fetched = await readAll(client.getBlob(repo("chunked/blob"), content.descriptor));
    expect(fetched.equals(content.bytes)).toBe(true);
  });

  it("uploads through relative upload locations, chunked too", async () => {
    const relative = await startFaultProxy(registry.url, { relativeLocations: true });
    const viaRelative = new RegistryClient({ insecureHosts: [relative.host], chunkSizeBytes: 40_000 });
    try {
      const target: RepoRef = { registry: relative.host, repository: "relative/blob" };
      const content = blob(randomBytes(100_000));
      await viaRelative.pushBlob(target, content.descriptor, () => Readable.from([content.bytes]));
      relative.addRule({ match: { method: "PUT" }, action: { kind: "status", status: 405 } });
      const chunked = blob(randomBytes(100_000));
      await viaRelative.pushBlob(target, chunked.descriptor, () => Readable.from([chunked.bytes]));
      expect(relative.seen().filter((r) => r.method === "PATCH").length).toBe(3);
      expect(await client.hasBlob(repo("relative/blob"), content.descriptor.digest)).toBe(100_000);
      expect(await client.hasBlob(repo("relative/blob"), chunked.descriptor.digest)).toBe(100_000);
    } finally {
      await viaRelative.close();
      await relative.stop();
    }
  });

  it("refuses to commit an upload whose bytes do not match the digest", async () => {
    const content = blob(randomBytes(5_000));
    const lying = { ...content.descriptor, digest: digestOf(Buffer.from("something else")) };
    const err = await client
      .pushBlob(repo("blobs/lie"), lying, () => Readable.from([content.bytes]))
      .catch((e: unknown) => e);
    expect((err as StowageError).reason).toBe("DigestMismatch");
    expect(await client.hasBlob(repo("blobs/lie"), lying.digest)).toBeUndefined();
  });
});

describe("VerifyingTransform", () => {
  /** Feeds chunks through the transform, collecting what it lets out as it lets it out. */
  function through(bytes: Buffer[], expected: Descriptor): Promise<{ passed: Buffer; error?: StowageError }> {
    const passed: Buffer[] = [];
    const transform = new VerifyingTransform(expected);
    transform.on("data", (chunk: Buffer) => passed.push(chunk));
    return new Promise((resolve) => {
      transform.on("end", () => resolve({ passed: Buffer.concat(passed) }));
      transform.on("error", (err) => resolve({ passed: Buffer.concat(passed), error: err as StowageError }));
      for (const chunk of bytes) transform.write(chunk);
      transform.end();
    });
  }

  it("passes good content through whole", async () => {
    const content = blob(randomBytes(3_000));
    const { passed, error } = await through(
      [content.bytes.subarray(0, 1_000), content.bytes.subarray(1_000)],
      content.descriptor,
    );
    expect(error).toBeUndefined();
    expect(passed.equals(content.bytes)).toBe(true);
  });

  it("holds back the final chunk of content that does not match its digest", async () => {
    const content = blob(randomBytes(3_000));
    const corrupted = Buffer.from(content.bytes);
    corrupted[2_500] ^= 1;
    const { passed, error } = await through(
      [corrupted.subarray(0, 1_000), corrupted.subarray(1_000, 2_000), corrupted.subarray(2_000)],
      content.descriptor,
    );
    expect(error?.reason).toBe("DigestMismatch");
    expect(passed.length).toBe(2_000);
  });

  it("fails with SizeMismatch when content is shorter than declared", async () => {
    const content = blob(randomBytes(3_000));
    const { error } = await through([content.bytes.subarray(0, 2_999)], content.descriptor);
    expect(error?.reason).toBe("SizeMismatch");
  });
});

describe("tags and referrers", () => {
  it("lists every tag of a repository from a real registry", async () => {
    const target = repo("tags/many");
    const manifest = await pushImage(target, "t0", "tags");
    for (const tag of ["t1", "t2", "t3", "t4"]) await client.putManifest(target, tag, manifest);
    // distribution 2.8 ignores `n` on tags/list and answers in one page.
    expect((await client.listTags(target, { pageSize: 2 })).sort()).toEqual(["t0", "t1", "t2", "t3", "t4"]);
  });

  it("follows Link rel=next pages until the last one", async () => {
    // distribution 2.8 cannot paginate tags, so this stand-in speaks the spec's paging
    // protocol (n, last, a relative Link header) the way distribution 3 and GHCR do.
    const allTags = ["a", "b", "c", "d", "e"];
    const requested: string[] = [];
    const server = createServer((req, res) => {
      const url = new URL(req.url ?? "/", "http://x");
      requested.push(url.search);
      const n = Number(url.searchParams.get("n") ?? allTags.length);
      const last = url.searchParams.get("last");
      const from = last ? allTags.indexOf(last) + 1 : 0;
      const page = allTags.slice(from, from + n);
      const headers: Record<string, string> = { "content-type": "application/json" };
      if (from + n < allTags.length) {
        headers.link = `</v2/paged/repo/tags/list?n=${n}&last=${page[page.length - 1]}>; rel="next"`;
      }
      res.writeHead(200, headers);
      res.end(JSON.stringify({ name: "paged/repo", tags: page }));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    const paging = new RegistryClient({ insecureHosts: [host] });
    try {
      expect(await paging.listTags({ registry: host, repository: "paged/repo" }, { pageSize: 2 })).toEqual(
        allTags,
      );
      expect(requested).toEqual(["?n=2", "?n=2&last=b", "?n=2&last=d"]);
    } finally {
      await paging.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("finds referrers through the sha256-<hex> tag schema when the registry lacks the referrers API", async () => {
    const target = repo("refs/image");
    const subject = await pushImage(target, "v1", "subject");
    const subjectDescriptor = {
      mediaType: MediaType.OciManifest,
      digest: subject.digest,
      size: subject.bytes.length,
    };
    const empty = blob(Buffer.from("{}"), MediaType.OciEmpty);
    await push(target, empty);
    const signature = manifestOf(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.OciManifest,
        artifactType: "application/vnd.dev.cosign.simplesigning.v1+json",
        config: empty.descriptor,
        layers: [empty.descriptor],
        subject: subjectDescriptor,
      }),
      MediaType.OciManifest,
    );
    await client.putManifest(target, signature.digest, signature);
    const signatureDescriptor: Descriptor = {
      mediaType: MediaType.OciManifest,
      digest: signature.digest,
      size: signature.bytes.length,
      artifactType: "application/vnd.dev.cosign.simplesigning.v1+json",
    };
    const referrersIndex = manifestOf(
      JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [signatureDescriptor] }),
      MediaType.OciIndex,
    );
    await client.putManifest(target, subject.digest.replace(":", "-"), referrersIndex);

    expect(await client.referrers(target, subject.digest)).toEqual([signatureDescriptor]);
    expect(
      await client.referrers(target, subject.digest, {
        artifactType: "application/vnd.dev.cosign.simplesigning.v1+json",
      }),
    ).toEqual([signatureDescriptor]);
    expect(await client.referrers(target, subject.digest, { artifactType: "application/spdx+json" })).toEqual(
      [],
    );
    expect(await client.referrers(target, signature.digest)).toEqual([]);
  });
});
