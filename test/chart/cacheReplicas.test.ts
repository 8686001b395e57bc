/**
 * More than one cache registry replica: refused by the values schema unless the blobs are in
 * shared object storage (S3), and then every replica gets one shared http.secret, which signs the
 * state of uploads in progress. Rendered by the real helm.
 */
import { describe, expect, it } from "vitest";
import {
  containerOf,
  findObject,
  getObject,
  helmTemplate,
  RELEASE,
  type RenderedObject,
  render,
} from "./render.ts";

const s3 = { enabled: true, bucket: "ml-image-cache" };
const httpSecretName = `${RELEASE}-cache-http-secret`;

function registryEnv(objects: RenderedObject[]) {
  const statefulSet = getObject(objects, "StatefulSet", `${RELEASE}-cache`);
  return containerOf(statefulSet, "registry").env ?? [];
}

describe("cache registry replicas", () => {
  it("are refused above one on a volume per replica, with helm naming cache.replicas", async () => {
    for (const cache of [{ replicas: 2 }, { replicas: 3, persistence: { enabled: false } }]) {
      const result = await helmTemplate({ values: [{ cache }] });
      expect(result.code, result.stdout).not.toBe(0);
      expect(result.stderr).toContain("values don't meet the specifications of the schema");
      expect(result.stderr).toMatch(/\/cache\/replicas'?: maximum: got \d, want 1/);
      expect(result.objects).toEqual([]);
    }
  });

  it("are accepted above one on S3, every replica reading one generated http.secret", async () => {
    const objects = await render({ values: [{ cache: { replicas: 3, s3 } }] });
    expect(getObject(objects, "StatefulSet", `${RELEASE}-cache`).spec.replicas).toBe(3);
    const secret = getObject(objects, "Secret", httpSecretName);
    const value = Buffer.from(secret.data["http-secret"], "base64").toString();
    expect(value).toMatch(/^[A-Za-z0-9]{64}$/);
    // One pod template for every replica, and the secret comes from the Secret, not a literal.
    expect(registryEnv(objects).filter((v) => v.name === "REGISTRY_HTTP_SECRET")).toEqual([
      {
        name: "REGISTRY_HTTP_SECRET",
        valueFrom: { secretKeyRef: { name: httpSecretName, key: "http-secret" } },
      },
    ]);
  });

  it("read the user's Secret instead when cache.httpSecret.existingSecret names one", async () => {
    const objects = await render({
      values: [{ cache: { replicas: 2, s3, httpSecret: { existingSecret: "registry-http" } } }],
    });
    expect(findObject(objects, "Secret", httpSecretName)).toBeUndefined();
    expect(registryEnv(objects).find((v) => v.name === "REGISTRY_HTTP_SECRET")).toEqual({
      name: "REGISTRY_HTTP_SECRET",
      valueFrom: { secretKeyRef: { name: "registry-http", key: "http-secret" } },
    });
  });

  it("need no shared secret when there is one", async () => {
    const objects = await render();
    expect(findObject(objects, "Secret", httpSecretName)).toBeUndefined();
    expect(registryEnv(objects).map((v) => v.name)).not.toContain("REGISTRY_HTTP_SECRET");
    // ... and keep their S3 credentials beside it when both are set
    const both = await render({
      values: [{ cache: { replicas: 2, s3: { ...s3, existingSecret: "s3-creds" } } }],
    });
    expect(registryEnv(both).map((v) => v.name)).toEqual([
      "REGISTRY_HTTP_SECRET",
      "REGISTRY_STORAGE_S3_ACCESSKEY",
      "REGISTRY_STORAGE_S3_SECRETKEY",
    ]);
  });
});
