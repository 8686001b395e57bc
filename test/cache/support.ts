/**
 * Shared set-up for the cache front's tests: a real upstream registry behind the fault proxy
 * (which records what reaches the upstream), a real storage registry, and the front itself,
 * started in-process on loopback with a short spool directory of its own.
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { request } from "undici";
import type { CollectionPacer } from "../../src/cache/collect.ts";
import { type CacheConfig, type RunningCache, startCache } from "../../src/cache/command.ts";
import { cacheHostSegment } from "../../src/cache/layout.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import type { Clock } from "../../src/util/clock.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { type RegistryOptions, type RunningRegistry, startRegistry } from "../../testkit/registry.ts";

export interface CacheRig {
  upstream: RunningRegistry;
  /** The upstream as the front sees it: through the fault proxy. */
  proxy: FaultProxy;
  storage: RunningRegistry;
  front: RunningCache;
  spoolDir: string;
  /** `/v2/<cache layout host>/<repository>` for an upstream repository. */
  prefix(repository: string): string;
  stop(): Promise<void>;
}

/** A front on a free loopback port for `upstreamHost` (plain HTTP), in front of `storageUrl`. */
export function frontConfig(storageUrl: string, upstreamHost: string, spoolDir: string): CacheConfig {
  return {
    storageUrl,
    upstreamHosts: [upstreamHost],
    insecureRegistries: [upstreamHost],
    caPem: [],
    authFiles: [],
    ecr: false,
    tagTtlMs: 30_000,
    accessTtlMs: 60_000,
    spoolDir,
    stallTimeoutMs: 30_000,
    port: 0,
    host: "127.0.0.1",
  };
}

export async function startRig(
  options: {
    upstream?: RegistryOptions;
    config?: Partial<CacheConfig>;
    clock?: Clock;
    /** Something between the fault proxy and the registry (a test's own auth realm). */
    wrapUpstream?: (upstream: RunningRegistry) => Promise<{ url: string; stop(): Promise<void> }>;
    /** The front's own upstream credentials, written to an --auth-file keyed by the proxy's host. */
    frontCredentials?: { username: string; password: string };
    /** The front reads hits from the storage registry's files (`--storage-root`), as beside it in a pod. */
    readStorageFiles?: boolean;
    /** Collections paced by fetched bytes (src/cache/collect.ts). */
    collection?: CollectionPacer;
  } = {},
): Promise<CacheRig> {
  const [upstream, storage] = await Promise.all([startRegistry(options.upstream), startRegistry()]);
  const wrapper = await options.wrapUpstream?.(upstream);
  const proxy = await startFaultProxy(wrapper?.url ?? upstream.url);
  const spoolDir = await mkdtemp(join(tmpdir(), "stowage-spool-"));
  const authFiles: string[] = [];
  if (options.frontCredentials) {
    const { username, password } = options.frontCredentials;
    const file = join(spoolDir, "front-auth.json");
    const auth = Buffer.from(`${username}:${password}`).toString("base64");
    await writeFile(file, JSON.stringify({ auths: { [proxy.host]: { auth } } }));
    authFiles.push(file);
  }
  // The registry creates its root on the first push; a pod's volume mount is there from the start.
  if (options.readStorageFiles) await mkdir(storage.storageDir, { recursive: true });
  const storageRoot = options.readStorageFiles ? storage.storageDir : undefined;
  const front = await startCache(
    {
      ...frontConfig(storage.url, proxy.host, spoolDir),
      authFiles,
      healthPort: 0,
      storageRoot,
      ...options.config,
    },
    { clock: options.clock, collection: options.collection },
  );
  return {
    upstream,
    proxy,
    storage,
    front,
    spoolDir,
    prefix: (repository) => `/v2/${cacheHostSegment(proxy.host)}/${repository}`,
    async stop() {
      await front.stop();
      await proxy.stop();
      await wrapper?.stop();
      await Promise.all([upstream.stop(), storage.stop()]);
      await rm(spoolDir, { recursive: true, force: true });
    },
  };
}

/** A client that pushes test images straight to the rig's upstream (and reads its storage). */
export function rigClient(
  rig: CacheRig,
  credentials?: { username: string; password: string },
): RegistryClient {
  return new RegistryClient({
    insecureHosts: [rig.upstream.host, rig.storage.host],
    credentials: credentials ? () => credentials : undefined,
    retry: { attempts: 2 },
  });
}

export interface Fetched {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  /** False when the connection was cut before the declared length arrived. */
  complete: boolean;
}

/** One GET/HEAD to the front; a cut connection is reported (status 0 before headers), not thrown. */
export async function fetchFrom(
  baseUrl: string,
  path: string,
  headers: Record<string, string> = {},
  method: "GET" | "HEAD" = "GET",
): Promise<Fetched> {
  let response: Awaited<ReturnType<typeof request>>;
  try {
    response = await request(`${baseUrl}${path}`, { method, headers });
  } catch {
    return { status: 0, headers: {}, body: Buffer.alloc(0), complete: false };
  }
  const chunks: Buffer[] = [];
  let complete = true;
  try {
    for await (const chunk of response.body) chunks.push(chunk as Buffer);
  } catch {
    complete = false;
  }
  return { status: response.statusCode, headers: response.headers, body: Buffer.concat(chunks), complete };
}

export function basic(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString("base64")}`;
}

/** Upstream requests the proxy saw that fetched blob bytes (GET .../blobs/...). */
export function upstreamBlobGets(proxy: FaultProxy): string[] {
  return proxy
    .seen()
    .filter((seen) => seen.method === "GET" && /\/blobs\/sha256:/.test(seen.path))
    .map((seen) => seen.path);
}

/** A metric's value from the front's /metrics, summed over series matching `labels`. */
export async function metricValue(
  front: RunningCache,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const text = await front.metrics.registry.metrics();
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const match = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const series = match[2] ?? "";
    if (Object.entries(labels).every(([key, value]) => series.includes(`${key}="${value}"`))) {
      total += Number(match[3]);
    }
  }
  return total;
}
