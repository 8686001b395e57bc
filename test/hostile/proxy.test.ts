/**
 * Corporate proxies: the OCI transport honours HTTPS_PROXY/HTTP_PROXY/NO_PROXY through a real
 * proxy process (Debian's tinyproxy) on loopback, while the cache registry is always reached
 * directly. Upstream and cache are real CNCF distribution registries.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeClient, Resources } from "../../src/kube/client.ts";
import { loadClusterConfig } from "../../src/kube/kubeconfig.ts";
import { Copier } from "../../src/oci/copy.ts";
import { isNamedHost, isSingleLabelHost, proxyConfig } from "../../src/oci/proxy.ts";
import { parseReference } from "../../src/oci/reference.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { startTestCluster } from "../../testkit/cluster.ts";
import { startFaultProxy } from "../../testkit/faultProxy.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { failure } from "../support/failure.ts";
import { stowage } from "../support/run.ts";

interface Tinyproxy {
  url: string;
  /** The hosts (host:port) it was asked to connect to, from its log. */
  targets(): Promise<string[]>;
  stop(): Promise<void>;
}

async function startTinyproxy(dir: string): Promise<Tinyproxy> {
  const port = await freePort();
  const log = join(dir, "tinyproxy.log");
  const config = join(dir, "tinyproxy.conf");
  // No ConnectPort line: CONNECT to any port (undici tunnels plain-HTTP targets too).
  await writeFile(
    config,
    [
      `Port ${port}`,
      "Listen 127.0.0.1",
      "Timeout 60",
      `LogFile "${log}"`,
      "LogLevel Connect",
      "MaxClients 50",
      "Allow 127.0.0.1",
      "DisableViaHeader Yes",
      "",
    ].join("\n"),
  );
  const child: ChildProcess = spawn("tinyproxy", ["-d", "-c", config], { stdio: "ignore" });
  const url = `http://127.0.0.1:${port}`;
  // Ready once it accepts a connection.
  for (let tries = 0; ; tries++) {
    const accepting = await fetch(`${url}/`).then(
      () => true,
      () => false,
    );
    if (accepting) break;
    if (tries > 100 || child.exitCode !== null) throw new Error("tinyproxy did not start");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    url,
    async targets() {
      const text = await readFile(log, "utf8").catch(() => "");
      const found = [
        ...text.matchAll(/Request \(file descriptor \d+\): (?:CONNECT (\S+)|\S+ https?:\/\/([^/\s]+))/g),
      ];
      return found.map((match) => match[1] ?? match[2]);
    },
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}

let dir: string;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let proxy: Tinyproxy;
let seeder: RegistryClient;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "stowage-proxy-"));
  [upstream, cache] = await Promise.all([startRegistry(), startRegistry()]);
  proxy = await startTinyproxy(dir);
  seeder = new RegistryClient({ insecureHosts: [upstream.host], proxy: false });
  await pushSinglePlatformImage(seeder, { registry: upstream.host, repository: "p/app" }, "v1");
});

afterAll(async () => {
  await seeder?.close();
  await proxy?.stop();
  await Promise.all([upstream?.stop(), cache?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("HTTPS_PROXY / HTTP_PROXY / NO_PROXY", () => {
  it("copies from the upstream through the proxy and pushes to the cache directly", async () => {
    const client = new RegistryClient({
      insecureHosts: [upstream.host, cache.host],
      cacheRegistries: [cache.host],
      proxy: { env: { HTTP_PROXY: proxy.url, HTTPS_PROXY: proxy.url } },
    });
    try {
      const result = await new Copier({ client }).copy(
        parseReference(`${upstream.host}/p/app:v1`),
        parseReference(`${cache.host}/p/app:v1`),
      );
      expect(result.blobs.transferred).toBeGreaterThan(0);
    } finally {
      await client.close();
    }
    const targets = await proxy.targets();
    expect(targets).toContain(upstream.host);
    expect(targets).not.toContain(cache.host);
  });

  it("pushes to the cache on the bulk path (a connection of its own) while the upstream goes through the proxy", async () => {
    const front = await startFaultProxy(cache.url);
    const client = new RegistryClient({
      insecureHosts: [upstream.host, front.host],
      cacheRegistries: [front.host],
      proxy: { env: { HTTP_PROXY: proxy.url, HTTPS_PROXY: proxy.url } },
      // Every blob is "large": each one's GET and PUT would take the bulk path with no proxy.
      bulkMinBytes: 1,
    });
    const before = (await proxy.targets()).length;
    try {
      const result = await new Copier({ client }).copy(
        parseReference(`${upstream.host}/p/app:v1`),
        parseReference(`${front.host}/p/bulk:v1`),
      );
      expect(result.blobs.transferred).toBeGreaterThan(0);
      // The bulk path asks for its connection's close; undici's pooled requests never do.
      const puts = front.seen().filter((r) => r.method === "PUT" && r.path.includes("/blobs/uploads/"));
      expect(puts.length).toBe(result.blobs.transferred);
      expect(puts.every((r) => r.closes)).toBe(true);
    } finally {
      await client.close();
      await front.stop();
    }
    const targets = (await proxy.targets()).slice(before);
    expect(targets).toContain(upstream.host);
    expect(targets).not.toContain(front.host);
  });

  it("leaves a host named in NO_PROXY alone", async () => {
    const before = (await proxy.targets()).length;
    const client = new RegistryClient({
      insecureHosts: [upstream.host],
      proxy: { env: { http_proxy: proxy.url, no_proxy: `example.invalid, ${upstream.host}` } },
    });
    try {
      expect(await client.headManifest({ registry: upstream.host, repository: "p/app" }, "v1")).toBeDefined();
    } finally {
      await client.close();
    }
    expect((await proxy.targets()).slice(before)).toEqual([]);
  });

  it("stowage mirror reads HTTP_PROXY from its environment and fails clearly when the proxy is down", async () => {
    const args = [
      "mirror",
      "--no-blob-index",
      "--quiet",
      "--insecure-registry",
      upstream.host,
      "--insecure-registry",
      cache.host,
      `${upstream.host}/p/app:v1`,
      `${cache.host}/p/cli:v1`,
    ];
    const before = (await proxy.targets()).length;
    const through = await stowage(args, { HTTP_PROXY: proxy.url });
    expect(through.stderr).toBe("");
    expect(through.code).toBe(0);
    const targets = (await proxy.targets()).slice(before);
    expect(targets).toContain(upstream.host);
    expect(targets).not.toContain(cache.host);

    // A proxy that is not there: the upstream cannot be reached, the error says so.
    const deadProxy = `http://127.0.0.1:${await freePort()}`;
    const client = new RegistryClient({
      insecureHosts: [upstream.host],
      retry: { attempts: 1 },
      proxy: { env: { HTTP_PROXY: deadProxy } },
    });
    try {
      const err = await failure(client.headManifest({ registry: upstream.host, repository: "p/app" }, "v1"));
      expect(err.reason).toBe("UpstreamUnavailable");
      expect(err.message).toContain(upstream.host);
    } finally {
      await client.close();
    }
  });
});

describe("what is never proxied", () => {
  it("treats one-label host names (a Service in the same namespace) as local, never as proxy targets", () => {
    expect(isSingleLabelHost("stowage-cache")).toBe(true);
    expect(isSingleLabelHost("localhost")).toBe(true);
    expect(isSingleLabelHost("registry-1.docker.io")).toBe(false);
    expect(isSingleLabelHost("127.0.0.1")).toBe(false);
    expect(isSingleLabelHost("[::1]")).toBe(false);
  });

  it("knows a host the caller named as never proxied by its exact name only, with its port if the name has one", () => {
    const named = ["cache.stowage:5000", "registry.corp", "[::1]:5000"];
    expect(isNamedHost(new URL("http://cache.stowage:5000/v2/"), named)).toBe(true);
    expect(isNamedHost(new URL("https://CACHE.stowage:5000/v2/"), named)).toBe(true);
    expect(isNamedHost(new URL("http://cache.stowage:5001/v2/"), named)).toBe(false);
    expect(isNamedHost(new URL("https://registry.corp/v2/"), named)).toBe(true);
    expect(isNamedHost(new URL("https://registry.corp:8443/v2/"), named)).toBe(true);
    expect(isNamedHost(new URL("https://mirror.registry.corp/v2/"), named)).toBe(false);
    expect(isNamedHost(new URL("http://[::1]:5000/v2/"), named)).toBe(true);
    // Suffix and wildcard forms are NO_PROXY's matching, left to undici: never "named".
    expect(isNamedHost(new URL("http://cache.svc/v2/"), [".svc", "*.svc"])).toBe(false);
    expect(isNamedHost(new URL("http://cache.svc/v2/"), [])).toBe(false);
  });

  it("adds the cache, in-cluster names and the API server to NO_PROXY, and nothing without a proxy", () => {
    expect(proxyConfig({ env: {} })).toBeUndefined();
    const config = proxyConfig({
      env: {
        https_proxy: "http://proxy:3128",
        NO_PROXY: "corp.example",
        KUBERNETES_SERVICE_HOST: "10.96.0.1",
      },
      noProxy: ["cache.stowage:5000"],
    });
    expect(config?.httpsProxy).toBe("http://proxy:3128");
    expect(config?.noProxy.split(",")).toEqual([
      "corp.example",
      "localhost",
      ".svc",
      ".cluster.local",
      "10.96.0.1",
      "cache.stowage:5000",
    ]);
  });
});

describe("the Kubernetes API client", () => {
  it("reaches the API server through HTTP_PROXY, except in a pod where the API server is never proxied", async () => {
    const api = await startTestCluster();
    try {
      const config = loadClusterConfig({ path: api.kubeconfigPath });
      const apiHost = new URL(config.server).host;
      const before = (await proxy.targets()).length;
      const proxied = new KubeClient(config, "stowage-test/0", undefined, {
        HTTP_PROXY: proxy.url,
        HTTPS_PROXY: proxy.url,
      });
      await proxied.resource(Resources.Namespace).list();
      expect((await proxy.targets()).slice(before)).toContain(apiHost);

      const between = (await proxy.targets()).length;
      const inPod = new KubeClient(config, "stowage-test/0", undefined, {
        HTTP_PROXY: proxy.url,
        HTTPS_PROXY: proxy.url,
        KUBERNETES_SERVICE_HOST: new URL(config.server).hostname,
      });
      await inPod.resource(Resources.Namespace).list();
      expect((await proxy.targets()).slice(between)).toEqual([]);
    } finally {
      await api.stop();
    }
  });
});
