/**
 * `stowage agent`: the node agent (one per node, a DaemonSet). Watches only its own NodeCache
 * (`metadata.name=<node>`), pulls the listed images through the CRI socket, writes containerd
 * mirror config and reports in the NodeCache status. Exit codes: 0 after SIGTERM/SIGINT,
 * 1 on a fatal startup error, 2 on bad usage.
 */

import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
// Only types, flag parsing and errors are imported here: what the running agent needs is loaded
// by startAgent and runAgent, after runAgent has tuned V8 for it (runtimeEnv.ts).
import type { NodeCache } from "../api/nodeCache.ts";
import type { KubeClient } from "../kube/client.ts";
import type { Manager } from "../kube/manager.ts";
import type { Clock } from "../util/clock.ts";
import { asStowageError } from "../util/errors.ts";
import {
  bindAddressFlag,
  booleanFlag,
  durationFlag,
  integerFlag,
  normaliseBooleanFlags,
  UsageError,
} from "../util/flags.ts";
import type { Logger } from "../util/log.ts";
import { stowageVersion } from "../util/version.ts";
import { type AgentConfig, defaultAgentConfig, PEER_FAILURE_EXPIRY_MS } from "./config.ts";
import type { CriClient, ImageRuntime } from "./cri.ts";
import type { MirrorStats } from "./peer/mirror.ts";
import type { FanoutNode } from "./peer/node.ts";
import type { ContainerdPinner, ImagePinner } from "./pin.ts";
import type { ProgressProbe } from "./progress.ts";
import type { NodeAgentReconciler } from "./reconciler.ts";
import { interpretOnly } from "./runtimeEnv.ts";

export const agentHelp = `Usage: stowage agent [flags]

Run the node agent: pull the images this node's NodeCache lists through the container runtime
(CRI), point containerd at the cache registry, and report progress in the NodeCache status.

Flags:
  --node-name NAME               this node (default: NODE_NAME environment variable; required)
  --cri-socket PATH              CRI runtime socket (default /run/containerd/containerd.sock;
                                 CRI-O: /var/run/crio/crio.sock)
  --containerd-config-path DIR   containerd registry config_path (default /etc/containerd/certs.d)
  --containerd-config FILE       containerd config.toml, read to check config_path is set (optional;
                                 without it the agent asks containerd through CRI Status)
  --containerd-root DIR          containerd root, to see download progress (default /var/lib/containerd
                                 when it exists)
  --kubeconfig FILE              kubeconfig (default: KUBECONFIG, in-cluster, ~/.kube/config)
  --mirror-config=BOOL           write containerd hosts.toml for the cache (default true)
  --cache-skip-verify=BOOL       skip_verify for the cache host in hosts.toml (default false)
  --pin-images=BOOL              label present images io.cri-containerd.pinned=pinned so containerd 1.7+
                                 keeps them from the kubelet's image GC; unlabel them when they leave
                                 the spec (default true; containerd 1.6 keeps the label but pins nothing)
  --cache-ca-file FILE           CA certificate of an HTTPS cache registry: copied beside each
                                 hosts.toml and named by the cache's \`ca\` key; re-read on every
                                 pass, and a missing file means none (the node's own CAs)
  --max-concurrent-pulls N       pulls in flight (default 2)
  --stall-timeout DURATION       cancel and retry a pull without progress for this long (default 5m)
  --heartbeat-interval DURATION  how often status.heartbeatTime is refreshed (default 60s)
  --progress-interval DURATION   how often a running pull's bytes reach status (\`pulling 42%\`), read from
                                 containerd's content store under --containerd-root (default 10s; 0: only
                                 at Present)
  --retry-initial DURATION       first delay before retrying a failed pull (default 10s; doubles)
  --retry-max DURATION           longest delay between pull retries (default 5m)
  --health-port N                serve /healthz, /readyz, /metrics (default 8081; 0 picks one)
  --health-bind-address IP       address the health server listens on (default 0.0.0.0)
  --fanout-mode MODE             planned: serve peers and be the node's mirror (docs/fanout.md); external:
                                 put --fanout-external-mirror before the cache in hosts.toml; off (default)
  --fanout-external-mirror URL   the node mirror of an external peer layer (Spegel, dfdaemon), external mode
  --fanout-secret-file FILE      the fan-out secret peer tokens are signed with (planned mode; 16+ bytes)
  --fanout-bind-address IP       address the peer endpoint listens on (default 0.0.0.0)
  --fanout-peer-port N           peer endpoint port (default 5007)
  --fanout-mirror-port N         the node mirror's port on 127.0.0.1 (default 5008)
  --fanout-serving-rate BYTES    bytes/s served to peers over all requests (default 0: unlimited)
  --fanout-serving-concurrency N peer requests served at once (default 3)
  --fanout-stall-timeout DURATION a peer with no byte for this long is dropped for the cache (default 2s)
  --fanout-spool-dir DIR         where the node mirror spools blobs it fetches piece by piece, several
                                 pieces at once (planned mode; default <tmpdir>/stowage-fanout); needs
                                 room for the largest layers being pulled at once
  --fanout-failure-expiry DURATION how long a failed peer stays in status.peerFailures, so the controller
                                 plans no piece from it, before it may be planned again (default 10m)
  --log-level LEVEL              trace, debug, info, warn, error (default info)
  -h, --help                     show this help

Exit codes: 0 stopped gracefully, 1 fatal startup error, 2 bad usage.
`;

/** The flags `stowage agent` accepts (node:util parseArgs options). */
export const agentOptions = {
  "node-name": { type: "string" },
  "cri-socket": { type: "string" },
  "containerd-config-path": { type: "string" },
  "containerd-config": { type: "string" },
  "containerd-root": { type: "string" },
  kubeconfig: { type: "string" },
  "mirror-config": { type: "string" },
  "cache-skip-verify": { type: "string" },
  "pin-images": { type: "string" },
  "cache-ca-file": { type: "string" },
  "max-concurrent-pulls": { type: "string" },
  "stall-timeout": { type: "string" },
  "heartbeat-interval": { type: "string" },
  "progress-interval": { type: "string" },
  "retry-initial": { type: "string" },
  "retry-max": { type: "string" },
  "health-port": { type: "string" },
  "health-bind-address": { type: "string" },
  "fanout-mode": { type: "string" },
  "fanout-external-mirror": { type: "string" },
  "fanout-secret-file": { type: "string" },
  "fanout-bind-address": { type: "string" },
  "fanout-peer-port": { type: "string" },
  "fanout-mirror-port": { type: "string" },
  "fanout-serving-rate": { type: "string" },
  "fanout-serving-concurrency": { type: "string" },
  "fanout-stall-timeout": { type: "string" },
  "fanout-spool-dir": { type: "string" },
  "fanout-failure-expiry": { type: "string" },
  "log-level": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

const booleanFlags = new Set(["mirror-config", "cache-skip-verify", "pin-images"]);

export interface AgentInvocation {
  config: AgentConfig;
  criSocket: string;
  containerdRoot?: string;
  kubeconfig?: string;
  healthPort: number;
  healthBindAddress: string;
  logLevel: string;
  fanout: FanoutFlags;
}

/** Issue 15's node side; src/agent/peer/ is loaded only when the mode is not off. */
export interface FanoutFlags {
  mode: "planned" | "external" | "off";
  secretFile?: string;
  bindAddress: string;
  peerPort: number;
  mirrorPort: number;
  servingBytesPerSecond: number;
  servingConcurrency: number;
  stallTimeoutMs: number;
  spoolDir: string;
}

function fanoutFlags(get: (flag: keyof typeof agentOptions) => string | undefined): {
  flags: FanoutFlags;
  mirror: AgentConfig["fanoutMirror"];
  failureExpiryMs: number;
} {
  const mode = get("fanout-mode") ?? "off";
  if (mode !== "planned" && mode !== "external" && mode !== "off")
    throw new UsageError(`--fanout-mode must be planned, external or off, got "${mode}"`);
  const external = get("fanout-external-mirror");
  if (mode === "external" && !external)
    throw new UsageError(
      "--fanout-mode external needs --fanout-external-mirror (the Spegel or dfdaemon URL)",
    );
  if (external !== undefined && !/^https?:\/\/[^/?#]+\/?$/.test(external))
    throw new UsageError(
      `--fanout-external-mirror must be an http(s):// URL with no path, got "${external}"`,
    );
  if (mode === "planned" && !get("fanout-secret-file"))
    throw new UsageError("--fanout-mode planned needs --fanout-secret-file");
  const flags: FanoutFlags = {
    mode,
    secretFile: get("fanout-secret-file"),
    bindAddress: bindAddressFlag(get("fanout-bind-address"), "fanout-bind-address", "0.0.0.0"),
    peerPort: integerFlag(get("fanout-peer-port"), "fanout-peer-port", 5007, 0, 65535),
    mirrorPort: integerFlag(get("fanout-mirror-port"), "fanout-mirror-port", 5008, 1, 65535),
    servingBytesPerSecond: integerFlag(
      get("fanout-serving-rate"),
      "fanout-serving-rate",
      0,
      0,
      Number.MAX_SAFE_INTEGER,
    ),
    servingConcurrency: integerFlag(
      get("fanout-serving-concurrency"),
      "fanout-serving-concurrency",
      3,
      1,
      1024,
    ),
    stallTimeoutMs: durationFlag(get("fanout-stall-timeout"), "fanout-stall-timeout", 2000),
    spoolDir: get("fanout-spool-dir") ?? join(tmpdir(), "stowage-fanout"),
  };
  const mirror =
    mode === "planned"
      ? { localMirror: { port: flags.mirrorPort } }
      : mode === "external"
        ? { externalMirror: external }
        : undefined;
  const failureExpiryMs = durationFlag(
    get("fanout-failure-expiry"),
    "fanout-failure-expiry",
    PEER_FAILURE_EXPIRY_MS,
  );
  return { flags, mirror, failureExpiryMs };
}

/** Flags (and NODE_NAME) to an invocation; throws UsageError on bad input. */
export function parseAgentArgs(
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): AgentInvocation | "help" {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: normaliseBooleanFlags(args, booleanFlags),
      options: agentOptions,
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.help) return "help";
  const get = (flag: keyof typeof agentOptions) => values[flag] as string | undefined;
  const nodeName = get("node-name") ?? env.NODE_NAME;
  if (!nodeName) throw new UsageError("--node-name (or the NODE_NAME environment variable) is required");
  const logLevel = get("log-level") ?? "info";
  if (!["trace", "debug", "info", "warn", "error", "fatal", "silent"].includes(logLevel))
    throw new UsageError(`--log-level must be one of trace, debug, info, warn, error, got "${logLevel}"`);
  const fanout = fanoutFlags(get);
  return {
    config: {
      nodeName,
      agentVersion: "",
      mirrorConfig: booleanFlag(get("mirror-config"), "mirror-config", defaultAgentConfig.mirrorConfig),
      containerdConfigPath: get("containerd-config-path") ?? defaultAgentConfig.containerdConfigPath,
      containerdConfigFile: get("containerd-config"),
      cacheSkipVerify: booleanFlag(get("cache-skip-verify"), "cache-skip-verify", false),
      pinImages: booleanFlag(get("pin-images"), "pin-images", true),
      cacheCaFile: get("cache-ca-file"),
      maxConcurrentPulls: integerFlag(get("max-concurrent-pulls"), "max-concurrent-pulls", 2, 1, 64),
      stallTimeoutMs: durationFlag(get("stall-timeout"), "stall-timeout", defaultAgentConfig.stallTimeoutMs),
      heartbeatIntervalMs: durationFlag(
        get("heartbeat-interval"),
        "heartbeat-interval",
        defaultAgentConfig.heartbeatIntervalMs,
      ),
      resyncIntervalMs: defaultAgentConfig.resyncIntervalMs,
      progressIntervalMs:
        get("progress-interval") === "0"
          ? 0
          : durationFlag(
              get("progress-interval"),
              "progress-interval",
              defaultAgentConfig.progressIntervalMs ?? 10_000,
            ),
      retryInitialMs: durationFlag(get("retry-initial"), "retry-initial", defaultAgentConfig.retryInitialMs),
      retryMaxMs: durationFlag(get("retry-max"), "retry-max", defaultAgentConfig.retryMaxMs),
      ...(fanout.mirror ? { fanoutMirror: fanout.mirror } : {}),
      ...(fanout.flags.mode === "planned" ? { peerFailureExpiryMs: fanout.failureExpiryMs } : {}),
    },
    criSocket: get("cri-socket") ?? "/run/containerd/containerd.sock",
    containerdRoot: get("containerd-root"),
    kubeconfig: get("kubeconfig"),
    healthPort: integerFlag(get("health-port"), "health-port", 8081, 0, 65535),
    healthBindAddress: bindAddressFlag(get("health-bind-address"), "health-bind-address", "0.0.0.0"),
    logLevel,
    fanout: fanout.flags,
  };
}

export interface RunningAgent {
  manager: Manager;
  reconciler: NodeAgentReconciler;
  /** This node's NodeCache as the informer holds it. */
  nodeCache(): NodeCache | undefined;
  stop(): Promise<void>;
}

export interface StartAgentOptions {
  config: AgentConfig;
  client: KubeClient;
  runtime: ImageRuntime;
  progress?: ProgressProbe;
  /** Pins present images against the kubelet's image GC (containerd); omit for none. */
  pinner?: ImagePinner;
  /** Omit for no health server. */
  healthPort?: number;
  /** Address the health server listens on (default 0.0.0.0). */
  healthHost?: string;
  clock?: Clock;
  log?: Logger;
  handleSignals?: boolean;
  /** Fan-out planned mode: the node mirror's counts, for status (omit in off and external modes). */
  fanoutStats?: () => MirrorStats | undefined;
}

/** Wire the agent: an informer on this node's NodeCache only, one reconcile worker, health server. */
export async function startAgent(options: StartAgentOptions): Promise<RunningAgent> {
  const { config, client } = options;
  const [{ NodeCacheResource }, { EventRecorder }, { Manager }, metrics, { NodeAgentReconciler }] =
    await Promise.all([
      import("../api/nodeCache.ts"),
      import("../kube/events.ts"),
      import("../kube/manager.ts"),
      import("../metrics.ts"),
      import("./reconciler.ts"),
    ]);
  const { createAgentMetrics, createRegistry, createRuntimeMetrics } = metrics;
  const registry = createRegistry();
  const manager = new Manager({
    client,
    clock: options.clock,
    log: options.log,
    metrics: createRuntimeMetrics(registry),
    healthPort: options.healthPort,
    healthHost: options.healthHost,
  });
  const informer = manager.addInformer<NodeCache>({
    type: NodeCacheResource,
    fieldSelector: `metadata.name=${config.nodeName}`,
    backoff: { initialMs: 200, maxMs: 10_000 },
  });
  let controller: ReturnType<Manager["addController"]> | undefined;
  const events = new EventRecorder({
    client,
    reportingController: "stowage.dev/agent",
    reportingInstance: config.nodeName,
    clock: options.clock,
    log: options.log,
  });
  const reconciler = new NodeAgentReconciler(config, {
    client,
    events,
    runtime: options.runtime,
    progress: options.progress,
    pinner: options.pinner,
    metrics: createAgentMetrics(registry),
    ...(options.fanoutStats ? { fanoutStats: options.fanoutStats } : {}),
    clock: options.clock,
    log: options.log,
    getNodeCache: () => informer.get(config.nodeName),
    requeue: () => controller?.enqueue(config.nodeName),
  });
  controller = manager.addController({
    name: "node-agent",
    workers: 1,
    reconcile: () => reconciler.reconcile(),
    backoff: { baseMs: 500, maxMs: 30_000 },
  });
  controller.watches(informer, () => [config.nodeName]);
  await manager.start({ handleSignals: options.handleSignals });
  return {
    manager,
    reconciler,
    nodeCache: () => informer.get(config.nodeName),
    stop: async () => {
      reconciler.stop();
      await manager.stop();
    },
  };
}

async function existingDir(path: string): Promise<string | undefined> {
  const { stat } = await import("node:fs/promises");
  try {
    return (await stat(path)).isDirectory() ? path : undefined;
  } catch {
    return undefined;
  }
}

export async function runAgent(args: string[]): Promise<number> {
  let invocation: AgentInvocation | "help";
  try {
    invocation = parseAgentArgs(args);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`stowage agent: ${err.message}\n\n${agentHelp}`);
    return 2;
  }
  if (invocation === "help") {
    process.stdout.write(agentHelp);
    return 0;
  }
  // Before anything of the running agent is loaded: V8 compiles it for the interpreter only.
  if (invocation.fanout.mode !== "planned") interpretOnly();
  const [{ createLogger }, { KubeClient }, { CriClient }, { ContainerdPinner }, { containerdProgressProbe }] =
    await Promise.all([
      import("../util/log.ts"),
      import("../kube/client.ts"),
      import("./cri.ts"),
      import("./pin.ts"),
      import("./progress.ts"),
    ]);
  const log = createLogger({ level: invocation.logLevel, name: "stowage-agent" });
  let runtime: CriClient | undefined;
  let pinner: ContainerdPinner | undefined;
  let fanout: FanoutNode | undefined;
  try {
    const config: AgentConfig = { ...invocation.config, agentVersion: stowageVersion() };
    const client = KubeClient.load({
      path: invocation.kubeconfig,
      userAgent: `stowage-agent/${stowageVersion()}`,
    });
    runtime = new CriClient(invocation.criSocket);
    if (config.pinImages !== false) pinner = new ContainerdPinner(invocation.criSocket);
    const root = invocation.containerdRoot ?? (await existingDir("/var/lib/containerd"));
    config.containerdRoot = root;
    let agent: RunningAgent | undefined;
    // The fan-out node first, so that the reconciler's first pass already sees the mirror's counts
    // (otherwise it would read planned mode as off and drop the peer failures status carries); it
    // reads the NodeCache through the agent's informer once that has started.
    if (invocation.fanout.mode === "planned") {
      const { readFile } = await import("node:fs/promises");
      const { startFanoutNode } = await import("./peer/node.ts");
      const flags = invocation.fanout;
      fanout = await startFanoutNode({
        ...flags,
        criSocket: invocation.criSocket,
        containerdRoot: root,
        secret: await readFile(flags.secretFile as string),
        cacheEndpoint: () => agent?.nodeCache()?.spec.cacheEndpoint,
        getNodeCache: () => agent?.nodeCache(),
        log: (message) => log.info(message),
      });
    }
    const mirror = fanout?.mirror;
    agent = await startAgent({
      config,
      client,
      runtime,
      progress: root ? containerdProgressProbe(runtime, root) : undefined,
      pinner,
      healthPort: invocation.healthPort,
      healthHost: invocation.healthBindAddress,
      log,
      handleSignals: true,
      ...(mirror ? { fanoutStats: () => mirror.stats } : {}),
    });
    const address = agent.manager.healthAddress;
    log.info(
      { node: config.nodeName, criSocket: invocation.criSocket, healthPort: address?.port },
      "agent ready",
    );
    await agent.manager.stopped;
    agent.reconciler.stop();
    log.info("agent stopped");
    return 0;
  } catch (err) {
    const failure = asStowageError(err);
    log.fatal({ reason: failure.reason }, `agent could not start: ${failure.message}`);
    return 1;
  } finally {
    await fanout?.stop();
    runtime?.close();
    pinner?.close();
  }
}
