/**
 * The cache registry's S3 storage as the chart renders it (real helm), run by the real
 * distribution against a real S3 server (SeaweedFS, testkit/s3.ts) with the credentials passed
 * the way the StatefulSet passes them (REGISTRY_STORAGE_S3_* from the existingSecret).
 */
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { RegistryClient } from "../../src/oci/registry.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { type RunningS3, startS3 } from "../../testkit/s3.ts";
import { containerOf, getObject, RELEASE, render } from "./render.ts";

async function renderedRegistryConfig(values: Record<string, unknown>) {
  const objects = await render({ values: [{ cache: values }] });
  const configMap = getObject(objects, "ConfigMap", `${RELEASE}-cache`);
  const env = containerOf(getObject(objects, "StatefulSet", `${RELEASE}-cache`), "registry").env ?? [];
  return { config: parse(configMap.data["config.yml"]), env };
}

describe("the chart's S3 storage config", () => {
  let s3: RunningS3;
  const registries: RunningRegistry[] = [];

  beforeAll(async () => {
    s3 = await startS3();
  }, 600_000);

  afterAll(async () => {
    await Promise.all(registries.map((r) => r.stop()));
    await s3?.stop();
  });

  it("addresses a non-AWS endpoint path-style and serves blobs itself rather than redirecting to S3", async () => {
    const { config } = await renderedRegistryConfig({
      s3: { enabled: true, bucket: "images", regionEndpoint: "http://seaweedfs.storage:8333" },
    });
    expect(config.storage.s3).toMatchObject({
      bucket: "images",
      region: "us-east-1",
      regionendpoint: "http://seaweedfs.storage:8333",
      forcepathstyle: true,
    });
    expect(config.storage.redirect).toEqual({ disable: true });
    // AWS itself: no endpoint, virtual-hosted style as the SDK chooses.
    const aws = await renderedRegistryConfig({ s3: { enabled: true, bucket: "images" } });
    expect(aws.config.storage.s3.regionendpoint).toBeUndefined();
    expect(aws.config.storage.s3.forcepathstyle).toBeUndefined();
  });

  it("stores and serves images in a real S3 bucket, two registries reading what one wrote", async () => {
    const { config, env } = await renderedRegistryConfig({
      replicas: 2,
      s3: {
        enabled: true,
        bucket: s3.bucket,
        region: s3.region,
        regionEndpoint: s3.endpoint,
        existingSecret: "cache-s3",
      },
      httpSecret: { existingSecret: "cache-http" },
    });
    // The StatefulSet reads the keys from the Secret into these variables: set them the same way.
    const names = env.map((v) => v.name);
    expect(names).toEqual(
      expect.arrayContaining([
        "REGISTRY_STORAGE_S3_ACCESSKEY",
        "REGISTRY_STORAGE_S3_SECRETKEY",
        "REGISTRY_HTTP_SECRET",
      ]),
    );
    const processEnv = {
      REGISTRY_STORAGE_S3_ACCESSKEY: s3.accessKey,
      REGISTRY_STORAGE_S3_SECRETKEY: s3.secretKey,
      REGISTRY_HTTP_SECRET: randomBytes(32).toString("hex"),
    };
    for (let i = 0; i < 2; i++)
      registries.push(await startRegistry({ storage: config.storage, env: processEnv }));
    const [writer, reader] = registries;
    const client = new RegistryClient({
      insecureHosts: registries.map((r) => r.host),
      retry: { attempts: 1 },
    });
    const pushed = await pushSinglePlatformImage(
      client,
      { registry: writer.host, repository: "docker.io/acme/model" },
      "v1",
      { layerSizes: [128 * 1024, 6 * 1024 * 1024] },
    );
    const read = await client.getManifest(
      { registry: reader.host, repository: "docker.io/acme/model" },
      "v1",
    );
    expect(read.digest).toBe(pushed.digest);
    for (const blob of pushed.image.blobs) {
      const response = await fetch(`${reader.url}/v2/docker.io/acme/model/blobs/${blob.descriptor.digest}`, {
        redirect: "manual",
      });
      // Served by the registry (200), not a redirect to a presigned S3 URL the nodes may not reach.
      expect(response.status).toBe(200);
      expect(Buffer.from(await response.arrayBuffer()).length).toBe(blob.descriptor.size);
    }
    await client.close();
  }, 300_000);
});
