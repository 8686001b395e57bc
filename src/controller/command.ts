/**
 * `stowage controller`: the long-running ModelImage controller. Reads its configuration from
 * flags and `STOWAGE_*` environment variables (a flag wins), connects to the API server, checks
 * that the ModelImage CRD is installed, and runs the Manager (leader election, informers, the
 * health server) until SIGTERM/SIGINT. Exit codes: 0 after a graceful stop, 1 on a fatal
 * startup error, 2 on bad usage.
 */

import { readFile } from "node:fs/promises";
import { isIP } from "node:net";
import { hostname } from "node:os";
import { parseArgs } from "node:util";
import type { Registry } from "prom-client";
import { ModelImageResource } from "../api/modelImage.ts";
import { isNotFound, KubeClient, Resources } from "../kube/client.ts";
import { EventRecorder } from "../kube/events.ts";
import type { Lease } from "../kube/leaderElection.ts";
import { Manager } from "../kube/manager.ts";
import {
  createGateMetrics,
  createPrewarmMetrics,
  createRegistry,
  createRuntimeMetrics,
  createStowageMetrics,
  nodeCacheHeartbeatCollector,
  promClient,
} from "../metrics.ts";
import { systemClock } from "../util/clock.ts";
import { asStowageError, StowageError } from "../util/errors.ts";
import {
  bindAddressFlag,
  booleanFlag,
  durationFlag,
  envName,
  integerFlag,
  normaliseBooleanFlags,
  UsageError,
} from "../util/flags.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { clampTimerMs } from "../util/timer.ts";
import { stowageVersion } from "../util/version.ts";
import { parseByteSize } from "./cachegc/budget.ts";
import { controllerConfig } from "./config.ts";
import { DEFAULT_FANOUT } from "./prewarm/config.ts";
import { tuneHeapForMemory } from "./runtimeEnv.ts";

export const controllerHelp = `Usage: stowage controller [flags]

Run the ModelImage controller: mirror the images ModelImages declare into the cache registry
and keep them in sync. Every flag can also be set as an environment variable STOWAGE_<FLAG>
(upper case, dashes as underscores, e.g. STOWAGE_CACHE_REGISTRY; repeatable flags take a
comma list); a flag wins over the environment.

Flags:
  --kubeconfig FILE              kubeconfig (default: KUBECONFIG, in-cluster, ~/.kube/config)
  --cache-registry URL           the cache registry, e.g. http://stowage-cache:5000 (required;
                                 an http:// URL means plain HTTP to that host)
  --cache-ca-file FILE           CA certificate(s) the cache registry's TLS certificate chains to;
                                 a file that does not exist is skipped with a warning (a TLS
                                 Secret without ca.crt: the system CAs must then trust the cache)
  --cache-username USER          cache registry user (env STOWAGE_CACHE_USERNAME)
  --cache-password PASS          cache registry password (prefer env STOWAGE_CACHE_PASSWORD)
  --insecure-registry HOST       talk plain HTTP to this upstream host[:port] (repeatable)
  --ca-file FILE                 extra CA certificate(s) for upstream registries (repeatable)
  --namespace NS                 watch only this namespace (repeatable; default all)
  --workers N                    reconcile workers (default 4)
  --max-concurrent-syncs N       mirror operations in flight across all ModelImages (default 4)
  --max-syncs-per-upstream-host N  workers one upstream host may hold at once (default half of
                                 --workers, at least 1): a host that never answers cannot take them all
  --sync-timeout DURATION        abort a ModelImage sync (checks and copy) still running after this
                                 long: Synced=False UpstreamTimeout, retried with backoff (default 30m)
  --request-timeout DURATION     deadline for a registry to start answering a request (default 30s)
  --stall-timeout DURATION       a transfer that moves no byte for this long is abandoned and
                                 resumed (default 60s)
  --max-retry-after DURATION     longest Retry-After honoured; a wait past 30s is reported in status
                                 ("retrying in Ns") and the ModelImage requeued after it (default 5m)
  --verify-interval DURATION     how often each synced image is read back from the cache and every
                                 blob hashed, re-copying what is corrupt (default 24h; 0: never)
  --shutdown-timeout DURATION    on SIGTERM, finish within this long: reconciles get all but 5 s of it,
                                 then transfers are aborted, the Lease is released and the process
                                 exits (default 25s, inside a pod's default 30 s grace period)
  --retain-on-delete=BOOL        keep cache tags when a ModelImage is deleted (default true)
  --health-port N                serve /healthz, /readyz, /metrics on this port (default 8080;
                                 0 picks a free port, reported in the "controller ready" log line)
  --health-bind-address IP       address the health server listens on (default 0.0.0.0)
  --leader-elect=BOOL            run only while holding the leader Lease (default true)
  --leader-election-namespace NS namespace of the Lease (default POD_NAMESPACE or stowage-system)
  --leader-election-id NAME      name of the Lease (default stowage-controller)
  --lease-duration DURATION      how long a Lease is valid without renewal (default 15s)
  --renew-deadline DURATION      the leader gives up if it cannot renew for this long (default 10s)
  --retry-period DURATION        how often candidates try to acquire and the leader renews (default 2s)
  --identity NAME                this replica's identity in the Lease (default hostname_pid)
  --webhook-port N               serve the pod admission webhook (HTTPS, /mutate-pods) on this port
                                 and release held pods; off when unset (0 picks a free port)
  --webhook-namespace NS         the webhook's Secret and Service namespace, whose pods are never
                                 held (default POD_NAMESPACE or stowage-system)
  --webhook-service NAME         the webhook Service, named in the certificate (default stowage-webhook)
  --webhook-configuration NAME   MutatingWebhookConfiguration whose caBundle is kept (default stowage)
  --webhook-cert-secret NAME     Secret with the webhook certificate (default stowage-webhook-tls)
  --webhook-cert-management MODE self: create, rotate and publish the CA; external: read the Secret
                                 cert-manager issues (default self)
  --webhook-cert-host HOST       also name this DNS name or IP address in the self-managed serving
                                 certificate, for a webhook the API server reaches by URL (repeatable)
  --prewarm=BOOL                 plan image pre-pulls onto nodes through NodeCache objects (default
                                 true; off, with a warning, when the NodeCache CRD is not installed)
  --cache-endpoint-for-nodes URL where nodes reach the cache registry, written to every NodeCache
                                 (default: the --cache-registry URL)
  --disk-budget-fraction F       share of a node's image filesystem the planned images may take
                                 (default 0.7: under the kubelet's image GC thresholds, 80% low and
                                 85% high, so pre-warmed images do not trigger the GC that evicts them)
  --warming-taint=BOOL           remove the stowage.dev/warming taint from nodes once every image
                                 planned for them is present (default true)
  --node-token-secret-file FILE  HMAC secret shared with \`stowage cache\` (>= 32 bytes): every
                                 NodeCache then carries a node token for the digests planned there
  --pull-through-host HOST       an upstream host the cache front pulls through for any image,
                                 written into every NodeCache's mirrorHosts (repeatable)
  --prewarm-through-cache URL    the cache front (\`stowage cache\`) as the controller reaches it:
                                 plan pre-pulls before the mirror is Synced, resolved there
  --fanout-mode MODE             planned: each NodeCache names a source per blob piece, the cache
                                 or a peer node's agent (docs/fanout.md); external or off (default):
                                 every node pulls from the cache (external: a peer layer such as
                                 Spegel runs beside the agents, which the controller does not plan)
  --fanout-secret-file FILE      the fan-out secret peer tokens are signed with, the same file the
                                 agents verify with (planned mode; 16+ bytes)
  --fanout-peer-port N           the agents' peer port: peers are reached at http://<InternalIP>:N
                                 (default 5007)
  --fanout-peer-slots K          nodes each node feeds per blob (default 3; 0: only the cache serves)
  --fanout-cache-slots C         nodes the cache feeds per blob, i.e. its copies (default 1)
  --fanout-piece-size SIZE       bytes per planned piece, e.g. 64Mi (default 64Mi)
  --cache-size-budget SIZE       bytes the images nobody declared (cached on first pull through
                                 \`stowage cache\`) may take, e.g. 200Gi; beyond it the least recently
                                 pulled are evicted (default: no eviction)
  --cache-gc-interval DURATION   how often eviction runs (default 10m)
  --cache-gc-statefulset NAME    the cache registry's StatefulSet (in POD_NAMESPACE): the leader runs
                                 the registry's garbage collection there (read-only rollout, a Job
                                 on its storage, writable again) after evictions and on an interval
  --cache-gc-collect-interval DURATION
                                 how often that collection runs without evictions (default 24h;
                                 0: only after an eviction pass freed something)
  --cache-gc-collect-timeout DURATION
                                 how long the collection Job may run (default 1h)
  --log-level LEVEL              trace, debug, info, warn, error (default info)
  -h, --help                     show this help

Exit codes: 0 stopped gracefully, 1 fatal startup error, 2 bad usage.
`;

/** The flags `stowage controller` accepts (node:util parseArgs options); each also as STOWAGE_<FLAG>. */
export const controllerOptions = {
  kubeconfig: { type: "string" },
  "cache-registry": { type: "string" },
  "cache-ca-file": { type: "string" },
  "cache-username": { type: "string" },
  "cache-password": { type: "string" },
  "insecure-registry": { type: "string", multiple: true },
  "ca-file": { type: "string", multiple: true },
  namespace: { type: "string", multiple: true },
  workers: { type: "string" },
  "max-concurrent-syncs": { type: "string" },
  "max-syncs-per-upstream-host": { type: "string" },
  "sync-timeout": { type: "string" },
  "request-timeout": { type: "string" },
  "stall-timeout": { type: "string" },
  "max-retry-after": { type: "string" },
  "verify-interval": { type: "string" },
  "shutdown-timeout": { type: "string" },
  "retain-on-delete": { type: "string" },
  "health-port": { type: "string" },
  "health-bind-address": { type: "string" },
  "leader-elect": { type: "string" },
  "leader-election-namespace": { type: "string" },
  "leader-election-id": { type: "string" },
  "lease-duration": { type: "string" },
  "renew-deadline": { type: "string" },
  "retry-period": { type: "string" },
  identity: { type: "string" },
  "webhook-port": { type: "string" },
  "webhook-namespace": { type: "string" },
  "webhook-service": { type: "string" },
  "webhook-configuration": { type: "string" },
  "webhook-cert-secret": { type: "string" },
  "webhook-cert-management": { type: "string" },
  "webhook-cert-host": { type: "string", multiple: true },
  prewarm: { type: "string" },
  "cache-endpoint-for-nodes": { type: "string" },
  "disk-budget-fraction": { type: "string" },
  "warming-taint": { type: "string" },
  "node-token-secret-file": { type: "string" },
  "pull-through-host": { type: "string", multiple: true },
  "prewarm-through-cache": { type: "string" },
  "fanout-mode": { type: "string" },
  "fanout-secret-file": { type: "string" },
  "fanout-peer-port": { type: "string" },
  "fanout-peer-slots": { type: "string" },
  "fanout-cache-slots": { type: "string" },
  "fanout-piece-size": { type: "string" },
  "cache-size-budget": { type: "string" },
  "cache-gc-interval": { type: "string" },
  "cache-gc-statefulset": { type: "string" },
  "cache-gc-collect-interval": { type: "string" },
  "cache-gc-collect-timeout": { type: "string" },
  "log-level": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

type FlagName = keyof typeof controllerOptions;
const booleanFlags = new Set<string>(["leader-elect", "retain-on-delete", "prewarm", "warming-taint"]);
const logLevels = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];

export interface ControllerInvocation {
  kubeconfig?: string;
  cache: {
    registry: string;
    insecure: boolean;
    caPem?: string[];
    /** --cache-ca-file when it named a file that does not exist (skipped, with a warning at start). */
    missingCaFile?: string;
    credentials?: { username: string; password: string };
  };
  insecureRegistries: string[];
  caPem: string[];
  namespaces?: string[];
  workers: number;
  maxConcurrentSyncs: number;
  maxSyncsPerUpstreamHost?: number;
  syncTimeoutMs: number;
  /** Registry deadlines and the Retry-After cap (src/oci/deadlines.ts, retry.ts). */
  requestTimeoutMs: number;
  stallTimeoutMs: number;
  maxRetryAfterMs: number;
  /** Cached images read back and hashed this often; 0: never (--verify-interval). */
  verifyIntervalMs: number;
  /** From SIGTERM to exit (--shutdown-timeout). */
  shutdownTimeoutMs: number;
  retainOnDelete: boolean;
  healthPort: number;
  healthBindAddress: string;
  leaderElection?: {
    namespace: string;
    name: string;
    leaseDurationMs: number;
    renewDeadlineMs: number;
    retryPeriodMs: number;
  };
  identity: string;
  /** The pod admission webhook and the gate controller; off when undefined. */
  webhook?: {
    port: number;
    namespace: string;
    service: string;
    configuration: string;
    certSecret: string;
    certManagement: "self" | "external";
    /** Extra names in the self-managed serving certificate (`--webhook-cert-host`). */
    certHosts: { dnsNames: string[]; ipAddresses: string[] };
  };
  logLevel: string;
  /** The pre-warm planner's settings; undefined with --prewarm=false. */
  prewarm?: {
    cacheEndpointForNodes?: string;
    diskBudgetFraction: number;
    warmingTaint: boolean;
    /** Read when the planner starts (readNodeTokenSecret): the chart mounts it from a Secret. */
    nodeTokenSecretFile?: string;
    pullThroughHosts?: string[];
    throughCache?: string;
    /** `--fanout-mode planned`; the secret file is read when the planner starts. */
    fanout?: FanoutFlags;
  };
  /** Eviction of undeclared images (src/controller/cachegc); undefined without --cache-size-budget. */
  cacheGc?: { budgetBytes: number; intervalMs: number };
  /** The registry's garbage collection in the cluster (src/controller/cachegc/cluster.ts); undefined without --cache-gc-statefulset. */
  registryGc?: { namespace: string; statefulSet: string; intervalMs: number; timeoutMs: number };
}

/** A flag's value, else its STOWAGE_* variable (comma list for repeatable flags). */
function setting(
  values: Record<string, string | string[] | boolean | undefined>,
  env: NodeJS.ProcessEnv,
  flag: FlagName,
): string | undefined {
  const value = values[flag];
  if (typeof value === "string") return value;
  const fromEnv = env[envName(flag)];
  return fromEnv === undefined || fromEnv === "" ? undefined : fromEnv;
}

function listSetting(
  values: Record<string, string | string[] | boolean | undefined>,
  env: NodeJS.ProcessEnv,
  flag: FlagName,
): string[] {
  const value = values[flag];
  if (Array.isArray(value) && value.length > 0) return value;
  const fromEnv = env[envName(flag)];
  return fromEnv
    ? fromEnv
        .split(",")
        .map((item) => item.trim())
        .filter(Boolean)
    : [];
}

function hostOf(input: string): string {
  return input
    .replace(/^[a-z]+:\/\//i, "")
    .replace(/\/+$/, "")
    .toLowerCase();
}

function parseCacheRegistry(value: string | undefined): { registry: string; insecure: boolean } {
  if (!value) {
    throw new UsageError(
      "--cache-registry (or STOWAGE_CACHE_REGISTRY) is required, e.g. http://127.0.0.1:5000",
    );
  }
  const withScheme = /^[a-z]+:\/\//i.test(value) ? value : `https://${value}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new UsageError(`--cache-registry must be a URL or host[:port], got "${value}"`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new UsageError(`--cache-registry must use http:// or https://, got "${value}"`);
  }
  if (url.pathname !== "/" || url.search || url.username) {
    throw new UsageError(`--cache-registry must name only a scheme and host[:port], got "${value}"`);
  }
  return { registry: url.host, insecure: url.protocol === "http:" };
}

async function readPem(path: string, flag: string): Promise<string>;
async function readPem(path: string, flag: string, options: { optional: true }): Promise<string | undefined>;
/**
 * A CA file's text. `optional`: a file that does not exist is undefined rather than an error. Only
 * the cache's CA may be absent, since the chart mounts ca.crt from a TLS Secret that may lack it;
 * trusting fewer CAs can only make the TLS handshake fail, never accept more.
 */
async function readPem(
  path: string,
  flag: string,
  options?: { optional: true },
): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (err) {
    if (options?.optional && (err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new UsageError(`cannot read --${flag} ${path}: ${(err as Error).message}`);
  }
}

/** Flags + environment → a validated invocation (throws UsageError with a one-line message). */
export async function parseControllerArgs(
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<ControllerInvocation | "help"> {
  let values: Record<string, string | string[] | boolean | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: normaliseBooleanFlags(args, booleanFlags),
      options: controllerOptions,
      strict: true,
      allowPositionals: true,
    }));
  } catch (err) {
    throw new UsageError(`${(err as Error).message.split("\n")[0]}; see stowage controller --help`);
  }
  if (values.help) return "help";
  if (positionals.length > 0) {
    throw new UsageError(`unexpected argument "${positionals[0]}"; see stowage controller --help`);
  }
  const get = (flag: FlagName) => setting(values, env, flag);
  const list = (flag: FlagName) => listSetting(values, env, flag);

  const cache = parseCacheRegistry(get("cache-registry"));
  const username = get("cache-username");
  const password = get("cache-password");
  if ((username === undefined) !== (password === undefined)) {
    throw new UsageError("--cache-username and --cache-password must be given together");
  }
  const cacheCaFile = get("cache-ca-file");
  const logLevel = get("log-level") ?? "info";
  if (!logLevels.includes(logLevel)) {
    throw new UsageError(`--log-level must be one of ${logLevels.join(", ")}, got "${logLevel}"`);
  }
  const leaseDurationMs = durationFlag(get("lease-duration"), "lease-duration", 15_000);
  const renewDeadlineMs = durationFlag(get("renew-deadline"), "renew-deadline", 10_000);
  const retryPeriodMs = durationFlag(get("retry-period"), "retry-period", 2_000);
  if (renewDeadlineMs >= leaseDurationMs) {
    throw new UsageError("--renew-deadline must be shorter than --lease-duration");
  }
  if (retryPeriodMs >= renewDeadlineMs) {
    throw new UsageError("--retry-period must be shorter than --renew-deadline");
  }
  const workers = integerFlag(get("workers"), "workers", 4, 1, 256);
  const perHost = get("max-syncs-per-upstream-host");
  const namespaces = list("namespace");
  const caPem: string[] = [];
  for (const path of list("ca-file")) caPem.push(await readPem(path, "ca-file"));
  const cacheCa = cacheCaFile ? await readPem(cacheCaFile, "cache-ca-file", { optional: true }) : undefined;
  return {
    kubeconfig: get("kubeconfig"),
    cache: {
      ...cache,
      caPem: cacheCa ? [cacheCa] : undefined,
      missingCaFile: cacheCaFile && cacheCa === undefined ? cacheCaFile : undefined,
      credentials: username !== undefined && password !== undefined ? { username, password } : undefined,
    },
    insecureRegistries: list("insecure-registry").map(hostOf),
    caPem,
    namespaces: namespaces.length > 0 ? namespaces : undefined,
    workers,
    maxConcurrentSyncs: integerFlag(get("max-concurrent-syncs"), "max-concurrent-syncs", 4, 1, 256),
    // At most the workers: more would not bound anything.
    maxSyncsPerUpstreamHost:
      perHost === undefined ? undefined : integerFlag(perHost, "max-syncs-per-upstream-host", 1, 1, workers),
    syncTimeoutMs: durationFlag(get("sync-timeout"), "sync-timeout", 30 * 60_000),
    requestTimeoutMs: timerFlag(get("request-timeout"), "request-timeout", 30_000),
    stallTimeoutMs: timerFlag(get("stall-timeout"), "stall-timeout", 60_000),
    maxRetryAfterMs: timerFlag(get("max-retry-after"), "max-retry-after", 5 * 60_000),
    verifyIntervalMs:
      get("verify-interval")?.trim() === "0"
        ? 0
        : timerFlag(get("verify-interval"), "verify-interval", 24 * 60 * 60_000),
    shutdownTimeoutMs: durationFlag(get("shutdown-timeout"), "shutdown-timeout", 25_000),
    retainOnDelete: booleanFlag(get("retain-on-delete"), "retain-on-delete", true),
    healthPort: integerFlag(get("health-port"), "health-port", 8080, 0, 65535),
    healthBindAddress: bindAddressFlag(get("health-bind-address"), "health-bind-address", "0.0.0.0"),
    leaderElection: booleanFlag(get("leader-elect"), "leader-elect", true)
      ? {
          namespace: get("leader-election-namespace") ?? env.POD_NAMESPACE ?? "stowage-system",
          name: get("leader-election-id") ?? "stowage-controller",
          leaseDurationMs,
          renewDeadlineMs,
          retryPeriodMs,
        }
      : undefined,
    identity: get("identity") ?? `${hostname()}_${process.pid}`,
    webhook: webhookSettings(get, list, env),
    logLevel,
    prewarm: booleanFlag(get("prewarm"), "prewarm", true)
      ? {
          cacheEndpointForNodes: cacheEndpointForNodes(get("cache-endpoint-for-nodes")),
          diskBudgetFraction: fraction(get("disk-budget-fraction"), "disk-budget-fraction", 0.7),
          warmingTaint: booleanFlag(get("warming-taint"), "warming-taint", true),
          nodeTokenSecretFile: get("node-token-secret-file"),
          pullThroughHosts: list("pull-through-host").map(hostOf),
          throughCache: cacheEndpointForNodes(get("prewarm-through-cache"), "prewarm-through-cache"),
          fanout: fanoutFlags(get),
        }
      : undefined,
    cacheGc: cacheGcSettings(get("cache-size-budget"), get("cache-gc-interval")),
    registryGc: registryGcSettings(get, env),
  };
}

function registryGcSettings(
  get: (flag: FlagName) => string | undefined,
  env: NodeJS.ProcessEnv,
): ControllerInvocation["registryGc"] {
  const statefulSet = get("cache-gc-statefulset");
  if (statefulSet === undefined) return undefined;
  const interval = get("cache-gc-collect-interval");
  return {
    namespace: env.POD_NAMESPACE ?? "stowage-system",
    statefulSet,
    intervalMs:
      interval?.trim() === "0" ? 0 : durationFlag(interval, "cache-gc-collect-interval", 24 * 60 * 60_000),
    timeoutMs: durationFlag(get("cache-gc-collect-timeout"), "cache-gc-collect-timeout", 60 * 60_000),
  };
}

/** A duration a timer can honour (at most 2^31-1 ms, about 596h): refused past it, not clamped. */
function timerFlag(value: string | undefined, flag: string, fallbackMs: number): number {
  const ms = durationFlag(value, flag, fallbackMs);
  if (ms > 2 ** 31 - 1) throw new UsageError(`--${flag} must be at most 596h, got "${value}"`);
  return ms;
}

function cacheGcSettings(budget: string | undefined, interval: string | undefined) {
  const budgetBytes = parseByteSize(budget, "cache-size-budget");
  if (budgetBytes === undefined) return undefined;
  return { budgetBytes, intervalMs: durationFlag(interval, "cache-gc-interval", 10 * 60_000) };
}

function fraction(value: string | undefined, flag: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^\d*\.?\d+$/.test(value.trim()) || !(n > 0 && n <= 1)) {
    throw new UsageError(`--${flag} must be a number above 0 and at most 1, got "${value}"`);
  }
  return n;
}

/** The fan-out planner's flags (planned mode only; external and off plan nothing). */
export interface FanoutFlags {
  secretFile: string;
  peerPort: number;
  peerSlots: number;
  cacheSlots: number;
  pieceBytes: number;
}

function fanoutFlags(get: (flag: FlagName) => string | undefined): FanoutFlags | undefined {
  const mode = get("fanout-mode") ?? "off";
  if (mode !== "planned" && mode !== "external" && mode !== "off")
    throw new UsageError(`--fanout-mode must be planned, external or off, got "${mode}"`);
  if (mode !== "planned") return undefined;
  const secretFile = get("fanout-secret-file");
  if (!secretFile) throw new UsageError("--fanout-mode planned needs --fanout-secret-file");
  const pieceBytes =
    parseByteSize(get("fanout-piece-size"), "fanout-piece-size") ?? DEFAULT_FANOUT.pieceBytes;
  if (pieceBytes < 1024 * 1024)
    throw new UsageError(
      `--fanout-piece-size must be at least 1Mi (each piece is a request), got "${get("fanout-piece-size")}"`,
    );
  return {
    secretFile,
    peerPort: integerFlag(get("fanout-peer-port"), "fanout-peer-port", DEFAULT_FANOUT.peerPort, 1, 65535),
    peerSlots: integerFlag(get("fanout-peer-slots"), "fanout-peer-slots", DEFAULT_FANOUT.peerSlots, 0, 1000),
    cacheSlots: integerFlag(
      get("fanout-cache-slots"),
      "fanout-cache-slots",
      DEFAULT_FANOUT.cacheSlots,
      1,
      1000,
    ),
    pieceBytes,
  };
}

/**
 * The fan-out secret, byte for byte as the file holds it: the agents read the same file the same
 * way (src/agent/command.ts), so trimming here would make every peer token fail to verify.
 */
export async function readFanoutSecret(file: string): Promise<Buffer> {
  let secret: Buffer;
  try {
    secret = await readFile(file);
  } catch (err) {
    throw new UsageError(`--fanout-secret-file ${file}: ${(err as Error).message}`);
  }
  if (secret.length < 16)
    throw new UsageError(
      `--fanout-secret-file ${file} holds fewer than 16 bytes; use a longer random secret`,
    );
  return secret;
}

/** The node-token HMAC key from --node-token-secret-file (at least 32 bytes, surrounding whitespace trimmed). */
export async function readNodeTokenSecret(file: string | undefined): Promise<Buffer | undefined> {
  if (file === undefined) return undefined;
  const secret = Buffer.from((await readPem(file, "node-token-secret-file")).trim());
  if (secret.length < 32) {
    throw new UsageError(
      `--node-token-secret-file ${file} holds fewer than 32 bytes; use a longer random secret`,
    );
  }
  return secret;
}

function cacheEndpointForNodes(
  value: string | undefined,
  flag = "cache-endpoint-for-nodes",
): string | undefined {
  if (value === undefined) return undefined;
  if (!/^https?:\/\/[^/\s]+\/?$/i.test(value)) {
    throw new UsageError(`--${flag} must be http(s)://host[:port], got "${value}"`);
  }
  return value.replace(/\/+$/, "");
}

function webhookSettings(
  get: (flag: FlagName) => string | undefined,
  list: (flag: FlagName) => string[],
  env: NodeJS.ProcessEnv,
): ControllerInvocation["webhook"] {
  const port = get("webhook-port");
  if (port === undefined) return undefined;
  const certManagement = get("webhook-cert-management") ?? "self";
  if (certManagement !== "self" && certManagement !== "external") {
    throw new UsageError(`--webhook-cert-management must be self or external, got "${certManagement}"`);
  }
  return {
    port: integerFlag(port, "webhook-port", 9443, 0, 65535),
    namespace: get("webhook-namespace") ?? env.POD_NAMESPACE ?? "stowage-system",
    service: get("webhook-service") ?? "stowage-webhook",
    configuration: get("webhook-configuration") ?? "stowage",
    certSecret: get("webhook-cert-secret") ?? "stowage-webhook-tls",
    certManagement,
    certHosts: certHosts(list("webhook-cert-host")),
  };
}

/** `--webhook-cert-host` values split into IP and DNS SANs; anything else is refused by name. */
function certHosts(hosts: string[]): { dnsNames: string[]; ipAddresses: string[] } {
  const dnsNames: string[] = [];
  const ipAddresses: string[] = [];
  for (const host of hosts) {
    const bare = host.replace(/^\[(.*)\]$/, "$1");
    if (isIP(bare)) ipAddresses.push(bare);
    else if (
      /^(?=.{1,253}$)(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$/i.test(
        host,
      )
    )
      dnsNames.push(host.toLowerCase());
    else throw new UsageError(`--webhook-cert-host must be a DNS name or an IP address, got "${host}"`);
  }
  return { dnsNames, ipAddresses };
}

export async function runController(args: string[]): Promise<number> {
  let invocation: ControllerInvocation | "help";
  try {
    invocation = await parseControllerArgs(args);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`stowage controller: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  if (invocation === "help") {
    process.stdout.write(controllerHelp);
    return 0;
  }
  const log = createLogger({ level: invocation.logLevel, name: "stowage-controller" });
  tuneHeapForMemory();
  let running: RunningController;
  try {
    running = await startController(invocation, log);
  } catch (err) {
    const failure = asStowageError(err);
    log.fatal({ reason: failure.reason }, `controller could not start: ${failure.message}`);
    return 1;
  }
  // The backstop: whatever hangs past the budget, the process leaves before the kubelet's SIGKILL.
  const backstop = () => {
    setTimeout(() => {
      log.error(
        { shutdownTimeoutMs: invocation.shutdownTimeoutMs },
        "shutdown did not finish within --shutdown-timeout; exiting anyway",
      );
      process.exit(1);
    }, clampTimerMs(invocation.shutdownTimeoutMs)).unref();
  };
  process.once("SIGTERM", backstop);
  process.once("SIGINT", backstop);
  await running.manager.stopped;
  await running.close();
  process.removeListener("SIGTERM", backstop);
  process.removeListener("SIGINT", backstop);
  const fatal = running.manager.fatalError;
  if (fatal) {
    log.fatal({ reason: asStowageError(fatal).reason }, `controller stopped: ${fatal.message}`);
    return 1;
  }
  log.info("controller stopped");
  return 0;
}

/** In-flight reconciles get the shutdown budget less 5 s (at least half of it) before they are aborted. */
export function shutdownDeadline(shutdownTimeoutMs: number): number {
  return Math.max(shutdownTimeoutMs / 2, shutdownTimeoutMs - 5_000);
}

export interface RunningController {
  manager: Manager;
  /** Release what outlives the manager (registry connections). */
  close(): Promise<void>;
  healthAddress?: { host: string; port: number };
  /** The admission webhook's port, when `--webhook-port` is set. */
  webhookPort?: number;
}

/**
 * Fail fast with a message a person can act on: the API server unreachable (after a few tries,
 * since a pod may start before its network is ready) or the ModelImage CRD not installed.
 */
/**
 * Is the NodeCache CRD served (and may we list NodeCaches)? Pre-warming needs it; without it the
 * controller still mirrors, and says why pre-warming is off.
 */
async function nodeCachesServed(client: KubeClient, log: Logger): Promise<boolean> {
  const { NodeCacheResource } = await import("../api/nodeCache.ts");
  try {
    await client.resource(NodeCacheResource).list({ limit: 1 });
    return true;
  } catch (err) {
    const status = (err as { status?: number }).status;
    log.warn(
      { status, error: (err as Error).message },
      status === 404
        ? "the NodeCache CRD (nodecaches.stowage.dev) is not installed: pre-warming is off; apply crds/stowage.dev_nodecaches.yaml and restart"
        : "cannot list NodeCaches: pre-warming is off; check the controller's RBAC for nodecaches.stowage.dev and nodes",
    );
    return false;
  }
}

async function checkApi(client: KubeClient, namespaces: string[] | undefined, log: Logger): Promise<void> {
  const attempts = 5;
  let delayMs = 500;
  for (let attempt = 1; ; attempt++) {
    try {
      await client.resource(ModelImageResource).list({ namespace: namespaces?.[0], limit: 1 });
      return;
    } catch (err) {
      if (isNotFound(err)) {
        throw new StowageError(
          "NotFound",
          `the ModelImage CRD (modelimages.stowage.dev, version v1alpha1) is not installed in the cluster at ${client.server}: apply crds/stowage.dev_modelimages.yaml first`,
        );
      }
      const status = (err as { status?: number }).status;
      if (status === 401 || status === 403) {
        throw new StowageError(
          "Denied",
          `the API server at ${client.server} refused to list ModelImages (HTTP ${status}): check the controller's credentials and RBAC`,
        );
      }
      if (attempt >= attempts) {
        throw new StowageError(
          "Timeout",
          `the API server at ${client.server} is unreachable after ${attempts} attempts: ${(err as Error).message}`,
        );
      }
      log.warn({ attempt, error: (err as Error).message, delayMs }, "API server not reachable yet; retrying");
      await new Promise((resolve) => setTimeout(resolve, clampTimerMs(delayMs)));
      delayMs *= 2;
    }
  }
}

/**
 * Say once whenever this replica is a standby (another identity holds an unexpired Lease), so
 * `kubectl logs` of each replica tells which one works. Reads the Lease at most every retry period.
 */
function reportStandby(
  manager: Manager,
  client: KubeClient,
  election: NonNullable<ControllerInvocation["leaderElection"]>,
  identity: string,
  log: Logger,
): void {
  let reportedHolder: string | undefined;
  let checking = false;
  const timer = setInterval(async () => {
    if (manager.isLeader() || !manager.alive()) {
      reportedHolder = undefined;
      return;
    }
    if (checking) return;
    checking = true;
    try {
      const lease = await client
        .resource<Lease>(Resources.Lease)
        .find(election.name, election.namespace)
        .catch(() => undefined);
      const holder = lease?.spec?.holderIdentity;
      if (!holder || holder === identity || holder === reportedHolder || manager.isLeader()) return;
      reportedHolder = holder;
      log.info(
        { lease: `${election.namespace}/${election.name}`, holder },
        "standby: another replica holds the leader lease",
      );
    } finally {
      checking = false;
    }
  }, election.retryPeriodMs);
  timer.unref();
  void manager.stopped.then(() => clearInterval(timer));
}

export async function startController(
  invocation: ControllerInvocation,
  log: Logger,
): Promise<RunningController> {
  let client: KubeClient;
  try {
    client = KubeClient.load({
      path: invocation.kubeconfig,
      userAgent: `stowage-controller/${stowageVersion()}`,
    });
  } catch (err) {
    throw asStowageError(err, "InvalidArgument");
  }
  if (invocation.cache.missingCaFile)
    log.warn(
      { cacheCaFile: invocation.cache.missingCaFile },
      "--cache-ca-file does not exist: the cache registry's certificate must chain to a system CA",
    );
  await checkApi(client, invocation.namespaces, log);
  // Loaded here, not at the top, so `--help` and usage errors answer without loading the reconciler.
  const [{ createCredentialProvider }, { setupModelImageController }, { setupPrewarmController }] =
    await Promise.all([
      import("../auth/index.ts"),
      import("./modelimage/index.ts"),
      import("./prewarm/index.ts"),
    ]);
  const prewarmOn = invocation.prewarm !== undefined && (await nodeCachesServed(client, log));

  const registry = createRegistry();
  promClient.collectDefaultMetrics({ register: registry });
  const runtimeMetrics = createRuntimeMetrics(registry);
  const stowageMetrics = createStowageMetrics(registry);
  const manager = new Manager({
    client,
    log,
    metrics: runtimeMetrics,
    healthPort: invocation.healthPort,
    healthHost: invocation.healthBindAddress,
    // The rest of the budget releases the Lease, stops informers and closes connections.
    shutdownDeadlineMs: shutdownDeadline(invocation.shutdownTimeoutMs),
    leaderElection: invocation.leaderElection
      ? { ...invocation.leaderElection, identity: invocation.identity }
      : undefined,
  });
  const events = new EventRecorder({
    client,
    reportingController: "stowage.dev/controller",
    reportingInstance: invocation.identity,
    log,
  });
  const credentials = createCredentialProvider({
    kube: client,
    cacheRegistry: invocation.cache.registry,
    cacheCredentials: invocation.cache.credentials,
    logger: log,
  });
  const config = controllerConfig(invocation.cache, {
    insecureRegistries: invocation.insecureRegistries,
    caPem: invocation.caPem.length > 0 ? invocation.caPem : undefined,
    namespaces: invocation.namespaces,
    workers: invocation.workers,
    maxConcurrentSyncs: invocation.maxConcurrentSyncs,
    maxSyncsPerUpstreamHost: invocation.maxSyncsPerUpstreamHost,
    syncTimeoutMs: invocation.syncTimeoutMs,
    verifyIntervalMs: invocation.verifyIntervalMs,
    retainOnDelete: invocation.retainOnDelete,
    cacheAliases: [invocation.prewarm?.cacheEndpointForNodes, invocation.prewarm?.throughCache]
      .filter((endpoint): endpoint is string => endpoint !== undefined)
      .map((endpoint) => new URL(endpoint).host),
  });
  const prewarm = prewarmOn
    ? setupPrewarmController(manager, {
        client,
        config,
        prewarm: {
          ...invocation.prewarm,
          nodeTokenSecret: await readNodeTokenSecret(invocation.prewarm?.nodeTokenSecretFile),
          fanout: invocation.prewarm?.fanout && {
            secret: await readFanoutSecret(invocation.prewarm.fanout.secretFile),
            peerPort: invocation.prewarm.fanout.peerPort,
            peerSlots: invocation.prewarm.fanout.peerSlots,
            cacheSlots: invocation.prewarm.fanout.cacheSlots,
            pieceBytes: invocation.prewarm.fanout.pieceBytes,
          },
        },
        events,
        metrics: createPrewarmMetrics(registry),
        cacheCredentials: credentials.forCache(),
        log,
      })
    : undefined;
  // Without the NodeCache CRD there are no node agents to watch: the series are simply absent.
  if (prewarm) nodeCacheHeartbeatCollector(prewarm.nodeCacheInformer, systemClock, registry);
  const modelImageController = setupModelImageController(manager, {
    client,
    config,
    registryOptions: {
      requestTimeoutMs: invocation.requestTimeoutMs,
      stallTimeoutMs: invocation.stallTimeoutMs,
      retry: { maxRetryAfterMs: invocation.maxRetryAfterMs },
    },
    credentials,
    metrics: stowageMetrics,
    events,
    log,
    prewarm,
  });
  const admission = invocation.webhook
    ? await setupAdmission(
        manager,
        invocation.webhook,
        invocation.namespaces,
        events,
        registry,
        log,
        prewarmOn,
      )
    : undefined;
  let webhookPort: number | undefined;
  try {
    await manager.start({ handleSignals: true });
    webhookPort = (await admission?.start())?.port;
  } catch (err) {
    await admission?.stop().catch(() => {});
    await manager.stop().catch(() => {});
    await Promise.all([
      credentials.close(),
      modelImageController.registries.client.close(),
      prewarm?.close(),
    ]).catch(() => {});
    if ((err as NodeJS.ErrnoException).code === "EADDRINUSE") {
      throw new StowageError(
        "InvalidArgument",
        `--health-port ${invocation.healthPort} is already in use; pick another port or 0 for a free one`,
      );
    }
    throw err;
  }
  const registryGc = invocation.registryGc
    ? await import("./cachegc/index.ts").then(({ setupRegistryGc }) =>
        setupRegistryGc({
          client,
          ...(invocation.registryGc as NonNullable<ControllerInvocation["registryGc"]>),
          settings: invocation.registryGc as NonNullable<ControllerInvocation["registryGc"]>,
          isLeader: () => manager.isLeader(),
          events,
          metricsRegistry: registry,
          log,
        }),
      )
    : undefined;
  const eviction = invocation.cacheGc
    ? await import("./cachegc/index.ts").then(({ setupCacheEviction, declaredImages }) =>
        setupCacheEviction({
          collectGarbage: registryGc,
          cache: config.cache,
          settings: invocation.cacheGc as NonNullable<ControllerInvocation["cacheGc"]>,
          isLeader: () => manager.isLeader(),
          declared: () =>
            declaredImages(modelImageController.informers.flatMap((informer) => informer.list())),
          metricsRegistry: registry,
          log,
        }),
      )
    : undefined;
  const health = manager.healthAddress;
  log.info(
    {
      identity: invocation.identity,
      healthAddress: health ? `${health.host}:${health.port}` : undefined,
      healthPort: health?.port,
      webhookPort,
      cacheRegistry: invocation.cache.registry,
      namespaces: invocation.namespaces ?? "all",
      prewarm: prewarmOn,
      cacheSizeBudget: invocation.cacheGc?.budgetBytes,
      leaderElection: invocation.leaderElection
        ? `${invocation.leaderElection.namespace}/${invocation.leaderElection.name}`
        : "off",
    },
    "controller ready",
  );
  if (invocation.leaderElection)
    reportStandby(manager, client, invocation.leaderElection, invocation.identity, log);
  return {
    manager,
    healthAddress: health,
    webhookPort,
    close: async () => {
      await admission?.stop();
      await Promise.all([
        credentials.close(),
        modelImageController.registries.client.close(),
        prewarm?.close(),
        eviction?.stop().then(() => registryGc?.stop()),
      ]);
    },
  };
}

/** The pod admission webhook (every replica serves it) and the gate controller (leader only). */
async function setupAdmission(
  manager: Manager,
  settings: NonNullable<ControllerInvocation["webhook"]>,
  namespaces: string[] | undefined,
  events: EventRecorder,
  registry: Registry,
  log: Logger,
  nodeCaches: boolean,
) {
  const [{ setupWebhook }, { setupGateController }] = await Promise.all([
    import("../webhook/index.ts"),
    import("./gates/index.ts"),
  ]);
  const webhook = setupWebhook(manager, {
    namespace: settings.namespace,
    namespaces,
    port: settings.port,
    serviceName: settings.service,
    webhookConfigurationName: settings.configuration,
    secretName: settings.certSecret,
    certManagement: settings.certManagement,
    certificates: {
      extraDnsNames: settings.certHosts.dnsNames,
      // 127.0.0.1 stays for port-forwards and local tests
      ipAddresses: ["127.0.0.1", ...settings.certHosts.ipAddresses.filter((ip) => ip !== "127.0.0.1")],
    },
    // pods pinned to a per-platform child digest are matched through the planner's NodeCaches
    nodeCaches,
    log,
  });
  setupGateController(manager, {
    events,
    metrics: createGateMetrics(registry),
    namespaces,
    modelImages: webhook.modelImages,
  });
  return webhook;
}
