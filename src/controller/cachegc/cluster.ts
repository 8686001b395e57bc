/**
 * The registry's garbage collection done in the cluster, where the controller can neither run
 * `registry garbage-collect` itself nor reach the registry's volume:
 *
 * 1. pause: the cache StatefulSet's registry container gets READ_ONLY_REGISTRY_ENV (a strategic
 *    merge patch, marked by an annotation) and the controller waits until every replica runs that
 *    revision and no pod of an older one is left: from then on no upload or manifest PUT is taken.
 * 2. collect: a Job runs `garbage-collect` with the registry container's own image, config,
 *    environment (S3 credentials) and volumes; a volume claim of the StatefulSet is mounted by
 *    name and the pod is pinned to the node of the replica using it (ReadWriteOnce).
 * 3. resume: the Job and its pods are deleted and gone first (a collection still running must
 *    never see writes), then the env is removed; the rollout restarts every replica, so none keeps
 *    an in-memory blob descriptor of a blob the collection removed.
 *
 * A run the controller did not finish (crash, lost lease) is found by its annotation and undone by
 * the next leader the same way (`recover`). A step that fails gives a StowageError with the reason;
 * the loop (loop.ts) counts it, logs it, records a Warning Event on the StatefulSet and retries.
 */
import type { KubeClient, KubeObject, ObjectMeta } from "../../kube/client.ts";
import { isNotFound } from "../../kube/client.ts";
import type { Clock } from "../../util/clock.ts";
import { StowageError } from "../../util/errors.ts";
import type { Logger } from "../../util/log.ts";
import { READ_ONLY_REGISTRY_ENV, type WritePause } from "./collect.ts";

/** The StatefulSet annotation saying a collection holds the registry read-only (value: since when). */
export const PAUSED_ANNOTATION = "stowage.dev/registry-gc-paused-since";
/** The label on the collection Job's pods (value: the StatefulSet's name). */
export const GC_POD_LABEL = "stowage.dev/registry-gc";

const STATEFULSETS = "/apis/apps/v1/namespaces";
const STRATEGIC = "application/strategic-merge-patch+json";
const [READ_ONLY_NAME, READ_ONLY_VALUE] = Object.entries(READ_ONLY_REGISTRY_ENV)[0];

// biome-ignore lint/suspicious/noExplicitAny: pod templates are free-form JSON here, copied field by field
type Json = any;

export interface StatefulSet extends KubeObject {
  metadata: ObjectMeta;
  spec: {
    replicas?: number;
    selector: { matchLabels?: Record<string, string> };
    template: { metadata?: ObjectMeta; spec: Json };
    volumeClaimTemplates?: { metadata: { name: string } }[];
  };
  status?: {
    observedGeneration?: number;
    replicas?: number;
    readyReplicas?: number;
    updatedReplicas?: number;
    currentRevision?: string;
    updateRevision?: string;
  };
}

interface Pod extends KubeObject {
  metadata: ObjectMeta;
  spec?: { nodeName?: string };
  status?: { phase?: string; conditions?: { type: string; status: string }[] };
}

interface Job extends KubeObject {
  metadata: ObjectMeta;
  status?: {
    succeeded?: number;
    failed?: number;
    conditions?: { type: string; status: string; reason?: string; message?: string }[];
  };
}

export interface ClusterRegistryGcOptions {
  client: KubeClient;
  namespace: string;
  /** The cache StatefulSet (chart: <fullname>-cache). */
  statefulSet: string;
  /** Its registry container (default "registry"). */
  container?: string;
  /** The registry config inside that container (default the image's /etc/docker/registry/config.yml). */
  configPath?: string;
  /** How long a rollout (read-only, or back) may take (default 10 min). */
  rolloutTimeoutMs?: number;
  /** How long the collection Job may run (default 1 h). */
  jobTimeoutMs?: number;
  /** Poll period while waiting (default 2 s). */
  pollMs?: number;
  clock: Clock;
  logger: Logger;
}

export class ClusterRegistryGc implements WritePause {
  readonly #o: Required<Omit<ClusterRegistryGcOptions, "client" | "clock" | "logger">> &
    Pick<ClusterRegistryGcOptions, "client" | "clock" | "logger">;

  constructor(options: ClusterRegistryGcOptions) {
    this.#o = {
      container: "registry",
      configPath: "/etc/docker/registry/config.yml",
      rolloutTimeoutMs: 10 * 60_000,
      jobTimeoutMs: 60 * 60_000,
      pollMs: 2_000,
      ...options,
    };
  }

  get jobName(): string {
    return `${this.#o.statefulSet}-gc`.slice(0, 63);
  }

  /** The StatefulSet, or a CacheUnavailable error naming it. */
  async statefulSet(): Promise<StatefulSet> {
    try {
      return await this.#o.client.request<StatefulSet>("GET", this.#stsPath());
    } catch (err) {
      if (isNotFound(err))
        throw new StowageError(
          "CacheUnavailable",
          `the cache StatefulSet ${this.#o.namespace}/${this.#o.statefulSet} does not exist: the registry's garbage collection cannot run (check --cache-registry-statefulset)`,
          { cause: err, retryable: true },
        );
      throw err;
    }
  }

  /** Is the registry held read-only for a collection (by this process or one that did not finish)? */
  async paused(): Promise<boolean> {
    const sts = await this.statefulSet();
    return (
      sts.metadata.annotations?.[PAUSED_ANNOTATION] !== undefined || this.#readOnlyEnv(sts) !== undefined
    );
  }

  async pause(): Promise<void> {
    const sts = await this.statefulSet();
    this.#registryContainer(sts);
    if ((sts.spec.replicas ?? 1) === 0)
      throw new StowageError(
        "CacheUnavailable",
        `the cache StatefulSet ${this.#o.namespace}/${this.#o.statefulSet} is scaled to 0: nothing to collect for`,
        { retryable: true },
      );
    await this.#patch({
      metadata: { annotations: { [PAUSED_ANNOTATION]: new Date(this.#o.clock.now()).toISOString() } },
      spec: {
        template: {
          spec: {
            containers: [
              { name: this.#o.container, env: [{ name: READ_ONLY_NAME, value: READ_ONLY_VALUE }] },
            ],
          },
        },
      },
    });
    await this.#rolledOut("read-only");
  }

  async resume(): Promise<void> {
    // Never writable while a collection may still run: its Job and pods go first.
    await this.removeJob();
    const sts = await this.statefulSet();
    if (sts.metadata.annotations?.[PAUSED_ANNOTATION] === undefined && this.#readOnlyEnv(sts) === undefined)
      return;
    await this.#patch({
      metadata: { annotations: { [PAUSED_ANNOTATION]: null } },
      spec: {
        template: {
          spec: {
            containers: [{ name: this.#o.container, env: [{ name: READ_ONLY_NAME, $patch: "delete" }] }],
          },
        },
      },
    });
    await this.#rolledOut("writable");
  }

  /** Runs `garbage-collect` in a Job against the registry's storage; resolves when it succeeded. */
  async collect(): Promise<{ job: string; node?: string }> {
    const sts = await this.statefulSet();
    await this.removeJob();
    const { job, node } = await this.#jobFor(sts);
    await this.#o.client.request("POST", `/apis/batch/v1/namespaces/${this.#o.namespace}/jobs`, {
      body: job,
    });
    this.#o.logger.info({ job: this.jobName, node }, "registry garbage collection started");
    const deadline = this.#o.clock.now() + this.#o.jobTimeoutMs + 60_000;
    for (;;) {
      const got = await this.#o.client.request<Job>("GET", this.#jobPath());
      const failed = got.status?.conditions?.find((c) => c.type === "Failed" && c.status === "True");
      if (failed || (got.status?.failed ?? 0) > 0)
        throw new StowageError(
          "CacheUnavailable",
          `registry garbage-collect Job ${this.#o.namespace}/${this.jobName} failed${failed ? ` (${failed.reason}: ${failed.message})` : ""}; its pod's log says why (kubectl logs -n ${this.#o.namespace} job/${this.jobName} while it exists)`,
          { retryable: true },
        );
      const complete = got.status?.conditions?.find((c) => c.type === "Complete" && c.status === "True");
      if (complete || (got.status?.succeeded ?? 0) > 0) return { job: this.jobName, node };
      if (this.#o.clock.now() > deadline)
        throw new StowageError(
          "Timeout",
          `registry garbage-collect Job ${this.#o.namespace}/${this.jobName} did not finish within ${Math.round(this.#o.jobTimeoutMs / 1000)}s`,
          { retryable: true },
        );
      await this.#o.clock.sleep(this.#o.pollMs);
    }
  }

  /** Deletes the collection Job and waits until none of its pods is left. */
  async removeJob(): Promise<void> {
    try {
      await this.#o.client.request("DELETE", this.#jobPath(), { query: { propagationPolicy: "Background" } });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const deadline = this.#o.clock.now() + this.#o.rolloutTimeoutMs;
    for (;;) {
      const job = await this.#o.client.request<Job>("GET", this.#jobPath()).catch((err) => {
        if (isNotFound(err)) return undefined;
        throw err;
      });
      const pods = await this.#pods(`${GC_POD_LABEL}=${this.#o.statefulSet}`);
      if (!job && pods.length === 0) return;
      if (this.#o.clock.now() > deadline)
        throw new StowageError(
          "Timeout",
          `the registry garbage-collect Job ${this.#o.namespace}/${this.jobName} or its pods (${pods.map((p) => p.metadata.name).join(", ")}) are still there ${Math.round(this.#o.rolloutTimeoutMs / 1000)}s after their deletion: the registry stays read-only until they are gone`,
          { retryable: true },
        );
      await this.#o.clock.sleep(this.#o.pollMs);
    }
  }

  #stsPath(): string {
    return `${STATEFULSETS}/${this.#o.namespace}/statefulsets/${this.#o.statefulSet}`;
  }

  #jobPath(): string {
    return `/apis/batch/v1/namespaces/${this.#o.namespace}/jobs/${this.jobName}`;
  }

  async #patch(patch: Json): Promise<void> {
    await this.#o.client.request("PATCH", this.#stsPath(), { body: patch, contentType: STRATEGIC });
  }

  async #pods(labelSelector: string): Promise<Pod[]> {
    const list = await this.#o.client.request<{ items: Pod[] }>(
      "GET",
      `/api/v1/namespaces/${this.#o.namespace}/pods`,
      {
        query: { labelSelector },
      },
    );
    return list.items ?? [];
  }

  #registryContainer(sts: StatefulSet): Json {
    const container = (sts.spec.template.spec.containers ?? []).find(
      (c: Json) => c.name === this.#o.container,
    );
    if (!container)
      throw new StowageError(
        "CacheUnavailable",
        `the cache StatefulSet ${this.#o.namespace}/${this.#o.statefulSet} has no container named "${this.#o.container}"`,
      );
    return container;
  }

  #readOnlyEnv(sts: StatefulSet): Json | undefined {
    return (this.#registryContainer(sts).env ?? []).find((e: Json) => e.name === READ_ONLY_NAME);
  }

  /** Waits until every replica runs the StatefulSet's current template and no older pod is left. */
  async #rolledOut(state: "read-only" | "writable"): Promise<void> {
    const deadline = this.#o.clock.now() + this.#o.rolloutTimeoutMs;
    let seen = "";
    for (;;) {
      const sts = await this.statefulSet();
      const want = sts.spec.replicas ?? 1;
      const status = sts.status ?? {};
      const selector = Object.entries(sts.spec.selector.matchLabels ?? {})
        .map(([k, v]) => `${k}=${v}`)
        .join(",");
      const pods = await this.#pods(selector);
      const current = pods.filter(
        (p) =>
          p.metadata.labels?.["controller-revision-hash"] === status.updateRevision &&
          !p.metadata.deletionTimestamp &&
          p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"),
      );
      seen = `${current.length} of ${want} replicas ${state} and ready, ${pods.length} pods`;
      if (
        (status.observedGeneration ?? 0) >= (sts.metadata.generation ?? 0) &&
        status.updateRevision !== undefined &&
        status.updatedReplicas === want &&
        current.length === want &&
        pods.length === want
      )
        return;
      if (this.#o.clock.now() > deadline)
        throw new StowageError(
          "Timeout",
          `the cache StatefulSet ${this.#o.namespace}/${this.#o.statefulSet} did not roll out ${state} within ${Math.round(this.#o.rolloutTimeoutMs / 1000)}s (${seen})`,
          { retryable: true },
        );
      await this.#o.clock.sleep(this.#o.pollMs);
    }
  }

  /** The Job: the registry container's image, config, env and mounts; `garbage-collect` as args. */
  async #jobFor(sts: StatefulSet): Promise<{ job: Json; node?: string }> {
    this.#registryContainer(sts);
    const claims = (sts.spec.volumeClaimTemplates ?? []).map((t) => t.metadata.name);
    let node: string | undefined;
    if (claims.length > 0) {
      if ((sts.spec.replicas ?? 1) > 1)
        throw new StowageError(
          "CacheUnavailable",
          `the cache StatefulSet ${this.#o.namespace}/${this.#o.statefulSet} has ${sts.spec.replicas} replicas each with its own volume: garbage collection needs one shared storage (S3) or one replica`,
        );
      // ReadWriteOnce: the claim is usable only on the node of the replica mounting it.
      const pod = await this.#o.client
        .request<Pod>("GET", `/api/v1/namespaces/${this.#o.namespace}/pods/${this.#o.statefulSet}-0`)
        .catch((err) => {
          if (isNotFound(err)) return undefined;
          throw err;
        });
      node = pod?.spec?.nodeName;
      if (!node)
        throw new StowageError(
          "CacheUnavailable",
          `pod ${this.#o.namespace}/${this.#o.statefulSet}-0 is not on a node: the garbage collection must run where its volume is attached`,
          { retryable: true },
        );
    }
    const job = collectionJob(sts, {
      namespace: this.#o.namespace,
      container: this.#o.container,
      configPath: this.#o.configPath,
      jobTimeoutMs: this.#o.jobTimeoutMs,
      node,
    });
    return { job, node };
  }
}

/**
 * The garbage-collect Job for a cache StatefulSet: the registry container's image, env (without
 * the read-only setting), mounts and security context, `garbage-collect CONFIG` as args, each
 * volume claim template mounted by the name of replica 0's claim, pinned to `node` when given.
 */
export function collectionJob(
  sts: StatefulSet,
  options: {
    namespace: string;
    container?: string;
    configPath?: string;
    jobTimeoutMs: number;
    node?: string;
  },
): Json {
  const statefulSet = sts.metadata.name ?? "";
  const template = sts.spec.template.spec;
  const registry = (template.containers ?? []).find(
    (c: Json) => c.name === (options.container ?? "registry"),
  );
  if (!registry)
    throw new StowageError(
      "CacheUnavailable",
      `the cache StatefulSet ${statefulSet} has no registry container`,
    );
  const claims = (sts.spec.volumeClaimTemplates ?? []).map((t) => t.metadata.name);
  const node = options.node;
  const mounted = new Set((registry.volumeMounts ?? []).map((m: Json) => m.name));
  const volumes = [
    ...(template.volumes ?? []).filter((v: Json) => mounted.has(v.name) && !claims.includes(v.name)),
    ...claims
      .filter((name) => mounted.has(name))
      .map((name) => ({ name, persistentVolumeClaim: { claimName: `${name}-${statefulSet}-0` } })),
  ];
  const labels = {
    ...Object.fromEntries(
      Object.entries(sts.metadata.labels ?? {}).filter(([k]) =>
        ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/part-of"].includes(k),
      ),
    ),
    // not the cache's component label: the cache Service must never send pulls to this pod
    "app.kubernetes.io/component": "cache-gc",
    [GC_POD_LABEL]: statefulSet,
  };
  const job = {
    apiVersion: "batch/v1",
    kind: "Job",
    metadata: {
      name: `${statefulSet}-gc`.slice(0, 63),
      namespace: options.namespace,
      labels,
      ownerReferences: [
        { apiVersion: "apps/v1", kind: "StatefulSet", name: statefulSet, uid: sts.metadata.uid },
      ],
    },
    spec: {
      backoffLimit: 0,
      activeDeadlineSeconds: Math.max(1, Math.round(options.jobTimeoutMs / 1000)),
      template: {
        metadata: { labels },
        spec: {
          restartPolicy: "Never",
          automountServiceAccountToken: false,
          ...(node ? { nodeName: node } : {}),
          ...pick(template, [
            "hostNetwork",
            "dnsPolicy",
            "securityContext",
            "imagePullSecrets",
            "tolerations",
            "nodeSelector",
            "priorityClassName",
          ]),
          containers: [
            {
              name: "garbage-collect",
              image: registry.image,
              imagePullPolicy: registry.imagePullPolicy,
              ...(registry.command ? { command: registry.command } : {}),
              args: ["garbage-collect", options.configPath ?? "/etc/docker/registry/config.yml"],
              env: (registry.env ?? []).filter((e: Json) => e.name !== READ_ONLY_NAME),
              volumeMounts: registry.volumeMounts ?? [],
              ...pick(registry, ["securityContext", "resources", "envFrom"]),
            },
          ],
          volumes,
        },
      },
    },
  };
  return job;
}

function pick(from: Json, keys: string[]): Json {
  return Object.fromEntries(keys.filter((k) => from[k] !== undefined).map((k) => [k, from[k]]));
}
