/**
 * `stowage uninstall`: what the chart's pre-delete hook Job runs before `helm uninstall` deletes
 * anything, so that nodes are left as they were found:
 *
 *  1. the controller is scaled to zero (and gone), so no planner pass re-adds what follows;
 *  2. every NodeCache gets the `stowage.dev/uninstall` annotation: each node's agent removes the
 *     containerd hosts.toml files it wrote (restoring any it merged with) and reports
 *     MirrorConfigured=False `Uninstalled`;
 *  3. the `warm.stowage.dev/*` labels and the `stowage.dev/warming` taint are removed from every
 *     node (a node left with the taint would stay unschedulable for good);
 *  4. it waits, bounded, for every agent that is alive (a recent heartbeat) to report.
 *
 * Why a pre-delete hook and not the agent noticing its DaemonSet's deletion on SIGTERM: helm
 * deletes the agent's ServiceAccount and RBAC in the same breath as the DaemonSet, so an agent
 * that is told to stop can no longer reach the API server to learn why, let alone report; a
 * hook runs while everything still exists, and helm waits for it. Only the node's agent can
 * reach the node's disk, hence the annotation rather than the Job removing files itself.
 *
 * Exit codes: 0 done (agents that did not answer in time are named in the log: their nodes keep
 * hosts.toml files, which fall back to the upstream once the cache is gone), 1 the API server
 * refused or could not be reached, 2 bad usage.
 */
import { parseArgs } from "node:util";
import { UNINSTALL_ANNOTATION, WARM_LABEL_PREFIX, WARMING_TAINT_KEY } from "../api/labels.ts";
import { type NodeCache, NodeCacheConditionTypes, NodeCacheResource } from "../api/nodeCache.ts";
import { KubeClient, type KubeObject, Resources } from "../kube/client.ts";
import { parseTime } from "../kube/time.ts";
import { type Clock, systemClock } from "../util/clock.ts";
import { asStowageError, StowageError } from "../util/errors.ts";
import { durationFlag, UsageError } from "../util/flags.ts";
import { createLogger, type Logger, silentLogger } from "../util/log.ts";
import { stowageVersion } from "../util/version.ts";

export const uninstallHelp = `Usage: stowage uninstall [flags]

Undo on the nodes what Stowage did, before its chart is deleted (the chart's pre-delete hook):
stop the controller, have every agent remove the containerd hosts.toml files it wrote, and remove
the warm.stowage.dev/* node labels and the stowage.dev/warming taint.

Flags:
  --namespace NS                 the release namespace (default: POD_NAMESPACE)
  --controller-deployment NAME   the controller Deployment to scale to zero first (optional)
  --timeout DURATION             how long to wait for the controller and the agents (default 2m)
  --heartbeat-window DURATION    agents with a heartbeat older than this are not waited for (default 5m)
  --kubeconfig FILE              kubeconfig (default: KUBECONFIG, in-cluster, ~/.kube/config)
  --log-level LEVEL              trace, debug, info, warn, error (default info)
  -h, --help                     show this help

Exit codes: 0 done, 1 the API server failed, 2 bad usage.
`;

const options = {
  namespace: { type: "string" },
  "controller-deployment": { type: "string" },
  timeout: { type: "string" },
  "heartbeat-window": { type: "string" },
  kubeconfig: { type: "string" },
  "log-level": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

export interface UninstallOptions {
  client: KubeClient;
  namespace?: string;
  controllerDeployment?: string;
  timeoutMs: number;
  heartbeatWindowMs: number;
  clock?: Clock;
  log?: Logger;
  /** Poll interval while waiting (default 1 s). */
  pollMs?: number;
}

export interface UninstallReport {
  nodeCaches: string[];
  /** Nodes whose labels or taint were removed. */
  nodesCleaned: string[];
  /** NodeCaches whose agent reported Uninstalled. */
  agentsDone: string[];
  /** Live agents that did not report in time. */
  agentsTimedOut: string[];
  /** NodeCaches without a recent heartbeat: no agent to wait for. */
  agentsAbsent: string[];
}

const Deployment = {
  group: "apps",
  version: "v1",
  plural: "deployments",
  kind: "Deployment",
  namespaced: true,
} as const;

interface DeploymentObject extends KubeObject {
  spec?: { replicas?: number };
  status?: { replicas?: number };
}

interface NodeObject extends KubeObject {
  spec?: { taints?: { key: string; value?: string; effect: string }[] };
}

export async function uninstall(opts: UninstallOptions): Promise<UninstallReport> {
  const clock = opts.clock ?? systemClock;
  const log = opts.log ?? silentLogger();
  const deadline = clock.now() + opts.timeoutMs;
  const pollMs = opts.pollMs ?? 1000;

  if (opts.controllerDeployment) {
    if (!opts.namespace)
      throw new StowageError("InvalidArgument", "--namespace is needed to scale the controller Deployment");
    const deployments = opts.client.resource<DeploymentObject>(Deployment);
    const name = opts.controllerDeployment;
    if (await deployments.find(name, opts.namespace)) {
      await deployments.patch(name, { spec: { replicas: 0 } }, { namespace: opts.namespace });
      log.info({ deployment: name }, "controller scaled to zero");
      while ((await deployments.get(name, opts.namespace)).status?.replicas) {
        if (clock.now() >= deadline) {
          log.warn({ deployment: name }, "controller pods still running at the deadline; going on");
          break;
        }
        await clock.sleep(pollMs);
      }
    }
  }

  const nodeCaches = opts.client.resource<NodeCache>(NodeCacheResource);
  const requestedAt = clock.now();
  const all = (await nodeCaches.list()).items;
  for (const nc of all) {
    const name = nc.metadata?.name ?? "";
    await nodeCaches.patch(name, {
      metadata: { annotations: { [UNINSTALL_ANNOTATION]: new Date(requestedAt).toISOString() } },
    });
  }
  log.info({ nodeCaches: all.length }, "agents asked to remove their containerd mirror config");

  const nodes = opts.client.resource<NodeObject>(Resources.Node);
  const nodesCleaned: string[] = [];
  for (const node of (await nodes.list()).items) {
    const name = node.metadata?.name ?? "";
    const labels = Object.keys(node.metadata?.labels ?? {}).filter((k) => k.startsWith(WARM_LABEL_PREFIX));
    const taints = node.spec?.taints ?? [];
    const keptTaints = taints.filter((t) => t.key !== WARMING_TAINT_KEY);
    if (labels.length === 0 && keptTaints.length === taints.length) continue;
    // resourceVersion: a taint someone adds meanwhile is not dropped (409, and the next run retries).
    await nodes.patch(name, {
      metadata: {
        resourceVersion: node.metadata?.resourceVersion,
        labels: Object.fromEntries(labels.map((k) => [k, null])),
      },
      ...(keptTaints.length !== taints.length ? { spec: { taints: keptTaints } } : {}),
    });
    nodesCleaned.push(name);
  }
  log.info({ nodes: nodesCleaned }, "warm labels and warming taint removed");

  const alive = (nc: NodeCache) => {
    const beat = parseTime(nc.status?.heartbeatTime);
    return beat !== undefined && requestedAt - beat <= opts.heartbeatWindowMs;
  };
  const agentsAbsent = all.filter((nc) => !alive(nc)).map((nc) => nc.metadata?.name ?? "");
  let waiting = all.filter(alive).map((nc) => nc.metadata?.name ?? "");
  const agentsDone: string[] = [];
  while (waiting.length > 0) {
    const still: string[] = [];
    for (const name of waiting) {
      const nc = await nodeCaches.find(name);
      const condition = nc?.status?.conditions?.find(
        (c) => c.type === NodeCacheConditionTypes.MirrorConfigured,
      );
      if (!nc || condition?.reason === "Uninstalled") agentsDone.push(name);
      else still.push(name);
    }
    waiting = still;
    if (waiting.length === 0 || clock.now() >= deadline) break;
    await clock.sleep(pollMs);
  }
  if (waiting.length > 0)
    log.warn(
      { nodes: waiting },
      "agents did not report their hosts.toml removed in time; those nodes keep them (containerd falls back to the upstream)",
    );
  return {
    nodeCaches: all.map((nc) => nc.metadata?.name ?? ""),
    nodesCleaned,
    agentsDone: agentsDone.sort(),
    agentsTimedOut: waiting.sort(),
    agentsAbsent: agentsAbsent.sort(),
  };
}

export async function runUninstall(args: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args, options, strict: true, allowPositionals: false }));
  } catch (err) {
    process.stderr.write(`stowage uninstall: ${(err as Error).message}\n\n${uninstallHelp}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(uninstallHelp);
    return 0;
  }
  const get = (flag: keyof typeof options) => values[flag] as string | undefined;
  let timeoutMs: number;
  let heartbeatWindowMs: number;
  try {
    timeoutMs = durationFlag(get("timeout"), "timeout", 120_000);
    heartbeatWindowMs = durationFlag(get("heartbeat-window"), "heartbeat-window", 300_000);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`stowage uninstall: ${err.message}\n\n${uninstallHelp}`);
    return 2;
  }
  const log = createLogger({ level: get("log-level") ?? "info", name: "stowage-uninstall" });
  let client: KubeClient | undefined;
  try {
    client = KubeClient.load({ path: get("kubeconfig"), userAgent: `stowage-uninstall/${stowageVersion()}` });
    const report = await uninstall({
      client,
      namespace: get("namespace") ?? process.env.POD_NAMESPACE,
      controllerDeployment: get("controller-deployment"),
      timeoutMs,
      heartbeatWindowMs,
      log,
    });
    log.info(report, "uninstall cleanup done");
    return 0;
  } catch (err) {
    const failure = asStowageError(err);
    log.error({ reason: failure.reason }, `uninstall cleanup failed: ${failure.message}`);
    return 1;
  } finally {
    client?.close();
  }
}
