/**
 * The pull-through front (`stowage cache`) in the cache pod, rendered by the real helm: what nodes
 * pull from by default, reading the registry over loopback, with the node-token key the
 * controller signs with mounted into both; the controller keeps pushing to the registry.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseCacheArgs } from "../../src/cache/command.ts";
import { parseControllerArgs, readNodeTokenSecret } from "../../src/controller/command.ts";
import {
  containerOf,
  findObject,
  flagValues,
  getObject,
  helmTemplate,
  NAMESPACE,
  RELEASE,
  type RenderedObject,
  render,
  volumeFor,
} from "./render.ts";

const statefulSetOf = (objects: RenderedObject[]) => getObject(objects, "StatefulSet", `${RELEASE}-cache`);
const controllerOf = (objects: RenderedObject[]) => getObject(objects, "Deployment", `${RELEASE}-controller`);

async function controllerInvocation(objects: RenderedObject[]) {
  const [, ...args] = containerOf(controllerOf(objects), "controller").args ?? [];
  const invocation = await parseControllerArgs(args, {});
  if (invocation === "help") throw new Error("unexpected help");
  return invocation;
}

describe("the cache front in the chart", () => {
  it("runs beside the registry, reading it over loopback, and is what nodes pull from while the controller pushes to the registry", async () => {
    const objects = await render({ values: [{ cache: { port: 5000, front: { port: 5002 } } }] });
    const front = containerOf(statefulSetOf(objects), "front");
    const [command, ...args] = front.args ?? [];
    expect(command).toBe("cache");
    const flags = flagValues(args);
    expect(flags.get("storage-registry")).toEqual(["http://127.0.0.1:5000"]);
    expect(flags.get("port")).toEqual(["5002"]);
    // `stowage cache` accepts what the chart passes (the key file is read separately below).
    const parsed = await parseCacheArgs(
      args.filter((a) => !a.startsWith("--node-token-secret-file=")),
      {},
    );
    if (parsed === "help") throw new Error("unexpected help");
    expect(parsed.config.upstreamHosts).toEqual([
      "docker.io",
      "ghcr.io",
      "nvcr.io",
      "quay.io",
      "registry.k8s.io",
      "public.ecr.aws",
    ]);
    expect(parsed.config.upstreamHosts).not.toContain("*");

    const service = getObject(objects, "Service", `${RELEASE}-cache`);
    expect(service.spec.ports).toContainEqual(
      expect.objectContaining({ name: "front", port: 5002, targetPort: "front" }),
    );

    const invocation = await controllerInvocation(objects);
    expect(invocation.prewarm?.cacheEndpointForNodes).toBe(`http://${RELEASE}-cache.${NAMESPACE}.svc:5002`);
    expect(invocation.cache.registry).toBe(`${RELEASE}-cache.${NAMESPACE}.svc:5000`);
    expect(invocation.prewarm?.pullThroughHosts).toEqual(parsed.config.upstreamHosts);
    // Pre-warm waits for the mirror unless asked to resolve images through the front.
    expect(invocation.prewarm?.throughCache).toBeUndefined();
    const through = await render({ values: [{ cache: { front: { prewarmThrough: true } } }] });
    expect((await controllerInvocation(through)).prewarm?.throughCache).toBe(
      `http://${RELEASE}-cache.${NAMESPACE}.svc:5002`,
    );
  });

  it("mounts one generated node-token key into the front and the controller, at the files their flags name", async () => {
    const objects = await render();
    const secretName = `${RELEASE}-node-token`;
    const secret = getObject(objects, "Secret", secretName);
    const key = Buffer.from(secret.data.secret, "base64").toString();
    expect(key).toMatch(/^[A-Za-z0-9]{64}$/);

    const cache = statefulSetOf(objects);
    const front = containerOf(cache, "front");
    const frontFile = flagValues(front.args ?? []).get("node-token-secret-file")?.[0] ?? "";
    expect(volumeFor(cache, front, frontFile)?.volume.secret?.secretName).toBe(secretName);
    expect(volumeFor(cache, front, frontFile)?.file).toBe("secret");

    const controller = controllerOf(objects);
    const container = containerOf(controller, "controller");
    const controllerFile = (await controllerInvocation(objects)).prewarm?.nodeTokenSecretFile ?? "";
    expect(volumeFor(controller, container, controllerFile)?.volume.secret?.secretName).toBe(secretName);
    expect(volumeFor(controller, container, controllerFile)?.file).toBe("secret");

    // The controller reads the key as the front does (whitespace trimmed, >= 32 bytes).
    const dir = await mkdtemp(join(tmpdir(), "front-key-"));
    try {
      await writeFile(join(dir, "secret"), `${key}\n`);
      expect((await readNodeTokenSecret(join(dir, "secret")))?.toString()).toBe(key);
      await writeFile(join(dir, "short"), "too-short");
      await expect(readNodeTokenSecret(join(dir, "short"))).rejects.toThrow(/fewer than 32 bytes/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("uses the user's Secret when cache.front.nodeToken.existingSecret names one", async () => {
    const objects = await render({
      values: [{ cache: { front: { nodeToken: { existingSecret: "my-key" } } } }],
    });
    expect(findObject(objects, "Secret", `${RELEASE}-node-token`)).toBeUndefined();
    const cache = statefulSetOf(objects);
    const front = containerOf(cache, "front");
    expect(volumeFor(cache, front, "/etc/stowage/node-token/secret")?.volume.secret?.secretName).toBe(
      "my-key",
    );
  });

  it("leaves nodes on the registry when the front is off or the registry serves TLS", async () => {
    for (const cache of [
      { front: { enabled: false } },
      { tls: { enabled: true, secretName: "cache-tls" } },
    ]) {
      const objects = await render({ values: [{ cache }] });
      expect(() => containerOf(statefulSetOf(objects), "front")).toThrow(/no container front/);
      expect(findObject(objects, "Secret", `${RELEASE}-node-token`)).toBeUndefined();
      const invocation = await controllerInvocation(objects);
      expect(invocation.prewarm?.cacheEndpointForNodes).toMatch(/:5000$/);
      expect(invocation.prewarm?.nodeTokenSecretFile).toBeUndefined();
      expect(invocation.prewarm?.pullThroughHosts).toEqual([]);
      expect(invocation.prewarm?.throughCache).toBeUndefined();
    }
  });

  it("gives the front the registry's htpasswd credentials when the registry requires them", async () => {
    const objects = await render({
      values: [{ cache: { htpasswd: { enabled: true, secretName: "registry-auth" } } }],
    });
    const front = containerOf(statefulSetOf(objects), "front");
    // The container's environment as the kubelet resolves it, each Secret key standing for its value.
    const env: Record<string, string> = {};
    for (const variable of front.env ?? []) {
      const ref = variable.valueFrom?.secretKeyRef;
      if (ref) {
        expect(ref.name).toBe("registry-auth");
        env[variable.name] = `value-of-${ref.key}`;
      }
    }
    const parsed = await parseCacheArgs(
      (front.args ?? []).slice(1).filter((a) => !a.startsWith("--node-token-secret-file=")),
      env,
    );
    if (parsed === "help") throw new Error("unexpected help");
    expect(parsed.config.storageCredentials).toEqual({
      username: "value-of-username",
      password: "value-of-password",
    });
  });

  it("keeps cache.nodeEndpoint when it is set", async () => {
    const objects = await render({ values: [{ cache: { nodeEndpoint: "http://10.0.0.5:30502" } }] });
    expect((await controllerInvocation(objects)).prewarm?.cacheEndpointForNodes).toBe(
      "http://10.0.0.5:30502",
    );
  });

  it("lets nodes reach the front port through the NetworkPolicy", async () => {
    const objects = await render({
      values: [{ networkPolicy: { enabled: true, nodeCidrs: ["10.0.0.0/16"] } }],
    });
    const policy = getObject(objects, "NetworkPolicy", `${RELEASE}-cache`);
    const toFront = policy.spec.ingress.find((rule: { ports: { port: string }[] }) =>
      rule.ports.some((p) => p.port === "front"),
    );
    expect(toFront.from).toContainEqual({ ipBlock: { cidr: "10.0.0.0/16" } });
    const ports = statefulSetOf(objects).spec.template.spec.containers.flatMap(
      (c: { ports?: { name: string }[] }) => c.ports ?? [],
    );
    expect(ports.map((p: { name: string }) => p.name)).toContain("front");
  });

  it("refuses no upstream hosts at all, naming cache.front.upstreamHosts", async () => {
    const result = await helmTemplate({ values: [{ cache: { front: { upstreamHosts: [] } } }] });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/front\/upstreamHosts/);
  });
});
