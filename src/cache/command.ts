/**
 * `stowage cache`: the pull-through front nodes pull from. Flags (each also STOWAGE_<FLAG>)
 * become a CacheConfig; startCache wires storage, upstream client, access control, tag
 * resolver and single flight behind one HTTP server, plus a health server with /metrics.
 * Exit codes: 0 after SIGTERM/SIGINT, 1 on a fatal startup error, 2 on bad usage.
 */
import { readFile, stat } from "node:fs/promises";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { hostname, tmpdir } from "node:os";
import { parseArgs } from "node:util";
import { type CacheMetrics, createCacheMetrics, createRegistry, promClient } from "../metrics.ts";
import { RegistryClient } from "../oci/registry.ts";
import { Transport } from "../oci/transport.ts";
import { type Clock, systemClock } from "../util/clock.ts";
import { asStowageError, StowageError } from "../util/errors.ts";
import {
  booleanFlag,
  durationFlag,
  envName,
  integerFlag,
  normaliseBooleanFlags,
  UsageError,
} from "../util/flags.ts";
import { createLogger, type Logger, silentLogger } from "../util/log.ts";
import { nodeHttp } from "../util/nodeHttp.ts";
import { stowageVersion } from "../util/version.ts";
import { AccessControl } from "./access.ts";
import { BlobFiles } from "./blobFiles.ts";
import { CollectionPacer, fullCollection } from "./collect.ts";
import { BlobFlights } from "./flights.ts";
import { Manifests } from "./manifests.ts";
import { ManifestPromotion } from "./promotion.ts";
import { PullLog } from "./pulls.ts";
import { Front, listenFront } from "./server.ts";
import { Storage } from "./storage.ts";
import { TagResolver } from "./tags.ts";
import { loadUpstreamCredentials } from "./upstreamAuth.ts";

export const cacheHelp = `Usage: stowage cache [flags]

Run the pull-through cache front: a read-only OCI registry over the cache layout
(/v2/<upstream-host>/<repository>/..., or /v2/<repository>/...?ns=<upstream-host>) that
serves from the storage registry and fetches misses from the upstream once, verified by
digest, while storing them. Every flag can also be set as STOWAGE_<FLAG>.

Flags:
  --storage-registry URL         the CNCF distribution registry behind the front, the one the
                                 controller pushes into, e.g. http://stowage-cache:5000 (required)
  --storage-ca-file FILE         CA certificate(s) of an HTTPS storage registry
  --storage-username USER        storage registry user (env STOWAGE_STORAGE_USERNAME)
  --storage-password PASS        storage registry password (prefer env STOWAGE_STORAGE_PASSWORD)
  --storage-root DIR             the storage registry's filesystem root (its
                                 storage.filesystem.rootdirectory), mounted read-only beside it:
                                 hits are read from there, linked blobs only (optional; without
                                 it, or for S3, hits are read from the registry over HTTP)
  --upstream-host HOST           an upstream host[:port] the front fetches from (repeatable, or a
                                 comma list; "*" allows any host a caller names; required)
  --insecure-registry HOST       talk plain HTTP to this upstream host[:port] (repeatable)
  --ca-file FILE                 extra CA certificate(s) for upstream registries (repeatable)
  --auth-file FILE               docker config.json (or a mounted pull secret's .dockerconfigjson)
                                 with the front's upstream credentials (repeatable)
  --ecr=BOOL                     get ECR tokens for ECR hosts from the AWS default chain (default true)
  --tag-ttl DURATION             how long a tag's upstream digest is trusted (default 30s)
  --access-ttl DURATION          how long an upstream's answer to a caller's credentials is
                                 remembered (default 60s)
  --node-token-secret-file FILE  shared HMAC secret for node tokens issued by the controller
                                 (optional; without it node tokens are refused)
  --spool-dir DIR                where blobs being fetched are spooled (default the temp dir)
  --stall-timeout DURATION       abort an upstream fetch that receives nothing this long (default 60s)
  --pull-record-interval DURATION  how often this front writes when it last served each image into
                                 the storage registry, for the controller's eviction (default 60s)
  --instance NAME                this replica's name in those records (default POD_NAME, else the
                                 hostname)
  --port N                       serve the registry API on this port (default 5000; 0 picks one)
  --health-port N                serve /healthz, /readyz, /metrics (default 8082; 0 picks one)
  --log-level LEVEL              trace, debug, info, warn, error (default info)
  -h, --help                     show this help

On SIGTERM the front stops accepting and gives responses under way 20 s to finish.
Exit codes: 0 stopped gracefully, 1 fatal startup error, 2 bad usage.
`;

export const cacheOptions = {
  "storage-registry": { type: "string" },
  "storage-ca-file": { type: "string" },
  "storage-username": { type: "string" },
  "storage-password": { type: "string" },
  "storage-root": { type: "string" },
  "upstream-host": { type: "string", multiple: true },
  "insecure-registry": { type: "string", multiple: true },
  "ca-file": { type: "string", multiple: true },
  "auth-file": { type: "string", multiple: true },
  ecr: { type: "string" },
  "tag-ttl": { type: "string" },
  "access-ttl": { type: "string" },
  "node-token-secret-file": { type: "string" },
  "spool-dir": { type: "string" },
  "stall-timeout": { type: "string" },
  "pull-record-interval": { type: "string" },
  instance: { type: "string" },
  port: { type: "string" },
  "health-port": { type: "string" },
  "log-level": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

type FlagName = keyof typeof cacheOptions;

export interface CacheConfig {
  storageUrl: string;
  storageCaPem?: string[];
  storageCredentials?: { username: string; password: string };
  /** The registry's filesystem root, read directly for hits (blobFiles.ts). */
  storageRoot?: string;
  upstreamHosts: string[];
  insecureRegistries: string[];
  caPem: string[];
  authFiles: string[];
  ecr: boolean;
  tagTtlMs: number;
  accessTtlMs: number;
  nodeTokenSecret?: Buffer;
  spoolDir: string;
  stallTimeoutMs: number;
  /** How often pull records are written (pulls.ts); 0 never writes them. */
  pullRecordIntervalMs?: number;
  /** This replica's name in the pull records (default the hostname). */
  instance?: string;
  port: number;
  healthPort?: number;
  /** Bind address; tests use 127.0.0.1. */
  host?: string;
}

/** How long responses under way may finish after SIGTERM (inside Kubernetes' default 30 s grace). */
const SHUTDOWN_GRACE_MS = 20_000;

const logLevels = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];

function hostOf(input: string): string {
  return input
    .replace(/^[a-z]+:\/\//i, "")
    .replace(/\/+$/, "")
    .toLowerCase();
}

async function readText(path: string, flag: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (err) {
    throw new UsageError(`cannot read --${flag} ${path}: ${(err as Error).message}`);
  }
}

export async function parseCacheArgs(
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ config: CacheConfig; logLevel: string } | "help"> {
  let values: Record<string, string | string[] | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: normaliseBooleanFlags(args, new Set(["ecr"])),
      options: cacheOptions,
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new UsageError(`${(err as Error).message.split("\n")[0]}; see stowage cache --help`);
  }
  if (values.help) return "help";
  const get = (flag: FlagName) => (values[flag] as string | undefined) ?? env[envName(flag)];
  const list = (flag: FlagName): string[] => {
    const given = (values[flag] as string[] | undefined) ?? env[envName(flag)]?.split(",") ?? [];
    return given
      .flatMap((value) => value.split(","))
      .map((value) => value.trim())
      .filter(Boolean);
  };
  const storage = get("storage-registry");
  if (!storage) throw new UsageError("--storage-registry (or STOWAGE_STORAGE_REGISTRY) is required");
  let storageUrl: URL;
  try {
    storageUrl = new URL(/^[a-z]+:\/\//i.test(storage) ? storage : `https://${storage}`);
  } catch {
    throw new UsageError(`--storage-registry must be a URL, got "${storage}"`);
  }
  if (storageUrl.protocol !== "http:" && storageUrl.protocol !== "https:") {
    throw new UsageError(`--storage-registry must use http:// or https://, got "${storage}"`);
  }
  const upstreamHosts = list("upstream-host").map(hostOf);
  if (upstreamHosts.length === 0) {
    throw new UsageError('--upstream-host is required (the hosts the front may fetch from, or "*")');
  }
  const username = get("storage-username");
  const password = get("storage-password");
  if ((username === undefined) !== (password === undefined)) {
    throw new UsageError("--storage-username and --storage-password must be given together");
  }
  const logLevel = get("log-level") ?? "info";
  if (!logLevels.includes(logLevel))
    throw new UsageError(`--log-level must be one of ${logLevels.join(", ")}`);
  const storageCaFile = get("storage-ca-file");
  const storageRoot = get("storage-root");
  const secretFile = get("node-token-secret-file");
  let nodeTokenSecret: Buffer | undefined;
  if (secretFile) {
    nodeTokenSecret = Buffer.from((await readText(secretFile, "node-token-secret-file")).trim());
    if (nodeTokenSecret.length < 32) {
      throw new UsageError(
        `--node-token-secret-file ${secretFile} holds fewer than 32 bytes; use a longer random secret`,
      );
    }
  }
  const caPem: string[] = [];
  for (const file of list("ca-file")) caPem.push(await readText(file, "ca-file"));
  return {
    logLevel,
    config: {
      storageUrl: storageUrl.origin,
      storageCaPem: storageCaFile ? [await readText(storageCaFile, "storage-ca-file")] : undefined,
      storageCredentials:
        username !== undefined && password !== undefined ? { username, password } : undefined,
      storageRoot,
      upstreamHosts,
      insecureRegistries: list("insecure-registry").map(hostOf),
      caPem,
      authFiles: list("auth-file"),
      ecr: booleanFlag(get("ecr"), "ecr", true),
      tagTtlMs: durationFlag(get("tag-ttl"), "tag-ttl", 30_000),
      accessTtlMs: durationFlag(get("access-ttl"), "access-ttl", 60_000),
      nodeTokenSecret,
      spoolDir: get("spool-dir") ?? tmpdir(),
      stallTimeoutMs: durationFlag(get("stall-timeout"), "stall-timeout", 60_000),
      pullRecordIntervalMs: durationFlag(get("pull-record-interval"), "pull-record-interval", 60_000),
      instance: get("instance") ?? env.POD_NAME ?? hostname(),
      port: integerFlag(get("port"), "port", 5000, 0, 65535),
      healthPort: integerFlag(get("health-port"), "health-port", 8082, 0, 65535),
    },
  };
}

export interface RunningCache {
  /** "127.0.0.1:PORT" of the registry API. */
  host: string;
  url: string;
  healthUrl?: string;
  metrics: CacheMetrics;
  /** Stops serving; responses under way get `graceMs` (default 0) to finish. */
  stop(graceMs?: number): Promise<void>;
}

function listenHealth(
  port: number,
  host: string,
  metrics: CacheMetrics,
  ready: () => Promise<boolean>,
): Promise<Server> {
  const server = nodeHttp.createServer(async (req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (path === "/healthz" || path === "/livez") {
      res.writeHead(200, { "content-type": "text/plain" }).end("ok");
    } else if (path === "/readyz") {
      const ok = await ready().catch(() => false);
      res
        .writeHead(ok ? 200 : 503, { "content-type": "text/plain" })
        .end(ok ? "ok" : "storage registry unreachable");
    } else if (path === "/metrics") {
      res
        .writeHead(200, { "content-type": metrics.registry.contentType })
        .end(await metrics.registry.metrics());
    } else {
      res.writeHead(404).end("not found");
    }
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve(server);
    });
  });
}

/** Starts the front (and its health server when `healthPort` is set). */
export async function startCache(
  config: CacheConfig,
  options: {
    logger?: Logger;
    clock?: Clock;
    metrics?: CacheMetrics;
    /** Full collections paced by fetched bytes (collect.ts); `stowage cache` paces V8's. */
    collection?: CollectionPacer;
  } = {},
): Promise<RunningCache> {
  if (config.storageRoot !== undefined) {
    // Checked when starting, not when parsing: the volume is mounted only in the pod.
    const root = await stat(config.storageRoot).catch(() => undefined);
    if (!root?.isDirectory())
      throw new StowageError(
        "InvalidArgument",
        `--storage-root ${config.storageRoot} is not a directory: give the storage registry's filesystem root (its storage.filesystem.rootdirectory), mounted read-only`,
      );
  }
  const logger = options.logger ?? silentLogger();
  const clock = options.clock ?? systemClock;
  const metrics = options.metrics ?? createCacheMetrics(createRegistry());
  const userAgent = `stowage-cache/${stowageVersion()}`;
  const storageCredentials = config.storageCredentials;
  const storage = new Storage({
    url: config.storageUrl,
    caPem: config.storageCaPem,
    credentials: storageCredentials
      ? () => [{ ...storageCredentials, label: "storage credentials" }]
      : undefined,
    clock,
    logger,
  });
  const credentials = await loadUpstreamCredentials(config.authFiles, { ecr: config.ecr, logger });
  const upstream = new RegistryClient({
    credentials: credentials.lookup,
    insecureHosts: config.insecureRegistries,
    caPem: config.caPem.length > 0 ? config.caPem : undefined,
    userAgent,
    clock,
    logger,
    // A node waits on these: a few quick tries, then the stale answer or an error.
    retry: { attempts: 3, baseDelayMs: 100, maxDelayMs: 2_000 },
    // Ranges arriving out of order are held in memory until their turn: the client's default
    // (8 x 8 MiB) put up to 64 MiB on the front's resident memory for each blob in flight.
    rangedDownload: { concurrency: 4, rangeBytes: 4 * 1024 * 1024 },
    // A miss's chunks go to every waiting node and to storage, so none is ever recycled, and a
    // bulk read's 256 KiB buffer per chunk would hold more of the front's memory than undici's.
    bulkMinBytes: Number.POSITIVE_INFINITY,
  });
  const probeTransport = new Transport({
    insecureHosts: config.insecureRegistries,
    caPem: config.caPem.length > 0 ? config.caPem : undefined,
    userAgent,
  });
  const promotion = new ManifestPromotion({ storage, logger });
  const manifests = new Manifests({ upstream, storage, metrics, logger, promotion });
  // Declared before the access control, which tells it the public repositories it finds.
  let pulls: PullLog | undefined;
  const access = new AccessControl({
    transport: probeTransport,
    clock,
    ttlMs: config.accessTtlMs,
    nodeTokenSecret: config.nodeTokenSecret,
    referencesOf: (target, digest) => manifests.referencesOf(target, digest),
    onAnonymousVerdict: (upstream, repository, served) => pulls?.notePublic(upstream, repository, served),
  });
  const tags = new TagResolver({
    upstream,
    storage,
    clock,
    ttlMs: config.tagTtlMs,
    logger,
    onStale: () => metrics.staleTags.inc(),
  });
  const flights = new BlobFlights({
    upstream,
    storage,
    spoolDir: config.spoolDir,
    metrics,
    logger,
    stallTimeoutMs: config.stallTimeoutMs,
    onCommitted: (target) => {
      promotion.blobCommitted(target.cacheRepository, target.reference).catch(() => {});
    },
    collection: options.collection,
  });
  pulls =
    config.pullRecordIntervalMs && config.pullRecordIntervalMs > 0
      ? new PullLog({
          client: storage.client,
          registry: storage.registry,
          instance: config.instance ?? hostname(),
          clock,
          logger,
        })
      : undefined;
  await pulls?.load();
  // What the upstream last served anonymously stands while it cannot answer, as before the restart.
  for (const known of pulls?.knownPublic() ?? [])
    access.rememberPublic(known.upstream, known.repository, known.at);
  const front = new Front({
    storage,
    upstream,
    manifests,
    flights,
    tags,
    access,
    metrics,
    logger,
    upstreamHosts: new Set(config.upstreamHosts),
    pulls,
    blobFiles: config.storageRoot ? new BlobFiles(config.storageRoot) : undefined,
  });
  const recordTimer = pulls
    ? setInterval(() => void pulls.flush(), Math.min(config.pullRecordIntervalMs ?? 60_000, 2 ** 31 - 1))
    : undefined;
  recordTimer?.unref();
  const bindHost = config.host ?? "0.0.0.0";
  const running = await listenFront(front, config.port, bindHost);
  let health: Server | undefined;
  try {
    if (config.healthPort !== undefined) {
      health = await listenHealth(config.healthPort, bindHost, metrics, async () => {
        await storage.ping();
        return true;
      });
    }
  } catch (err) {
    await running.close();
    throw err;
  }
  const shownHost = bindHost === "0.0.0.0" ? "127.0.0.1" : bindHost;
  const host = `${shownHost}:${running.address.port}`;
  const healthAddress = health?.address() as AddressInfo | undefined;
  return {
    host,
    url: `http://${host}`,
    healthUrl: healthAddress ? `http://${shownHost}:${healthAddress.port}` : undefined,
    metrics,
    async stop(graceMs = 0) {
      await running.close(graceMs);
      clearInterval(recordTimer);
      await pulls?.flush();
      if (health) {
        const server = health;
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        });
      }
      await Promise.all([storage.close(), upstream.close(), probeTransport.close(), credentials.close()]);
    },
  };
}

export async function runCache(args: string[]): Promise<number> {
  let parsed: Awaited<ReturnType<typeof parseCacheArgs>>;
  try {
    parsed = await parseCacheArgs(args);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`stowage cache: ${err.message}\n\n${cacheHelp}`);
    return 2;
  }
  if (parsed === "help") {
    process.stdout.write(cacheHelp);
    return 0;
  }
  const logger = createLogger({ level: parsed.logLevel, name: "stowage-cache" });
  const registry = createRegistry();
  promClient.collectDefaultMetrics({ register: registry });
  let cache: RunningCache;
  try {
    cache = await startCache(parsed.config, {
      logger,
      metrics: createCacheMetrics(registry),
      collection: new CollectionPacer(fullCollection()),
    });
  } catch (err) {
    const failure = asStowageError(err);
    logger.fatal({ reason: failure.reason }, `cache could not start: ${failure.message}`);
    return 1;
  }
  logger.info(
    {
      address: cache.host,
      health: cache.healthUrl,
      storage: parsed.config.storageUrl,
      upstreams: parsed.config.upstreamHosts,
      nodeTokens: parsed.config.nodeTokenSecret !== undefined,
    },
    "cache ready",
  );
  await new Promise<void>((resolve) => {
    process.once("SIGTERM", resolve);
    process.once("SIGINT", resolve);
  });
  logger.info({ graceSeconds: SHUTDOWN_GRACE_MS / 1000 }, "stopping: finishing responses under way");
  await cache.stop(SHUTDOWN_GRACE_MS);
  logger.info("cache stopped");
  return 0;
}
