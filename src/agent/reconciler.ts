/**
 * The node agent's reconciler: make the container runtime hold what this node's NodeCache
 * spec lists, and report what it observes in the NodeCache status.
 *
 * Level-triggered: each pass asks the runtime (CRI ImageStatus) what is present, starts pulls
 * for what is missing (bounded by a queue, each with a stall detector instead of a deadline),
 * removes images dropped from spec that the agent pulled itself, writes containerd mirror
 * config, and writes a status computed from those observations. Pulls run outside the pass
 * and queue another pass when they start and end. Which images the agent owns survives
 * restarts through `status.images[].ownedByAgent`.
 */
import { readFile, statfs } from "node:fs/promises";
import PQueue from "p-queue";
import { UNINSTALL_ANNOTATION } from "../api/labels.ts";
import {
  countImages,
  diskUsedColumn,
  type ImageFsStatus,
  type NodeCache,
  NodeCacheConditionTypes,
  type NodeCacheImage,
  NodeCacheResource,
  type NodeCacheSpec,
  type NodeCacheStatus,
  type NodeImageStatus,
  type PeerFailure,
} from "../api/nodeCache.ts";
import { NODE_TOKEN_USER } from "../cache/nodeToken.ts";
import type { KubeClient } from "../kube/client.ts";
import { type Condition, type ConditionInput, setCondition } from "../kube/conditions.ts";
import { done, type Result, requeueAfter } from "../kube/controller.ts";
import type { EventRecorder } from "../kube/events.ts";
import { sameJson, writeStatus } from "../kube/status.ts";
import { formatTime, parseTime } from "../kube/time.ts";
import type { AgentMetrics } from "../metrics.ts";
import { parseReference } from "../oci/reference.ts";
import { type Clock, systemClock } from "../util/clock.ts";
import { asStowageError, StowageError } from "../util/errors.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import type { AgentConfig } from "./config.ts";
import type { CriAuth, ImageRuntime } from "./cri.ts";
import { applyMirrorConfig, checkConfigPath } from "./hostsToml.ts";
import type { MirrorStats } from "./peer/mirror.ts";
import {
  currentPeerFailures,
  imageTally,
  nextPeerFailureExpiry,
  PEER_FAILURE_EXPIRY_MS,
  peerFailures,
  type SourceTally,
  sourcesOf,
} from "./peer/report.ts";
import type { ImagePinner } from "./pin.ts";
import { type ProgressProbe, pulledBytes, runtimeProgressProbe } from "./progress.ts";

// The configuration lives in its own small module, which `stowage agent` reads its flags into
// before it loads the reconciler (command.ts).
export { type AgentConfig, defaultAgentConfig } from "./config.ts";

export interface AgentDeps {
  client: KubeClient;
  runtime: ImageRuntime;
  /** Read the NodeCache (from the informer cache). */
  getNodeCache: () => NodeCache | undefined;
  /** Ask for another reconcile pass (the controller's enqueue). */
  requeue: () => void;
  /** Events on the NodeCache for finished and failed pulls (optional). */
  events?: EventRecorder;
  /** How pull progress is measured (default: the runtime's image filesystem usage). */
  progress?: ProgressProbe;
  /** Pins images against the kubelet's GC (containerd's images API); none: nothing is pinned. */
  pinner?: ImagePinner;
  metrics?: AgentMetrics;
  /**
   * Fan-out planned mode (issue 15): what the node's mirror did, for status.images[].sources and
   * status.peerFailures. Omitted (off and external modes): neither field is written, and a
   * leftover of an earlier planned-mode agent is removed.
   */
  fanoutStats?: () => MirrorStats | undefined;
  clock?: Clock;
  log?: Logger;
}

/** One pull attempt series for one spec image (digest). */
interface PullTask {
  image: string;
  digest: string;
  state: "queued" | "pulling" | "done" | "failed";
  attempts: number;
  startedAt?: number;
  finishedAt?: number;
  retryAt?: number;
  error?: StowageError;
  /** The image was absent when the pull started, so the agent may remove it later. */
  ownsImage: boolean;
  abort: AbortController;
  /** Bytes of the image's config and layers in the runtime so far, while pulling. */
  bytes?: number;
  /** When `bytes` last asked for a status write. */
  bytesReportedAt?: number;
  /** Set when the image was Present and vanished without the agent removing it (kubelet GC). */
  evictedAt?: number;
  /**
   * The mirror's bytes by source for this image's blobs when the first attempt started: the mirror
   * counts since the agent started, and an image pulled again (evicted) reports only its new pull.
   */
  sourcesBaseline?: SourceTally;
}

const NAME = "node-agent";
/** gRPC UNIMPLEMENTED: the runtime does not serve the method (containerd's images API on CRI-O). */
const UNIMPLEMENTED = 12;

export class NodeAgentReconciler {
  readonly #config: AgentConfig;
  readonly #deps: AgentDeps;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #queue: PQueue;
  readonly #progress: ProgressProbe;
  readonly #tasks = new Map<string, PullTask>();
  #reported = new Map<string, NodeImageStatus>();
  #stopped = false;
  #uninstalled = false;
  /** Digests whose names this process has labelled pinned (labels survive restarts; the set does not). */
  readonly #pinned = new Map<string, number>();
  #pinUnsupported = false;

  constructor(config: AgentConfig, deps: AgentDeps) {
    this.#config = config;
    this.#deps = deps;
    this.#clock = deps.clock ?? systemClock;
    this.#log = (deps.log ?? silentLogger()).child({ component: NAME, node: config.nodeName });
    this.#queue = new PQueue({ concurrency: Math.max(1, config.maxConcurrentPulls) });
    this.#progress = deps.progress ?? runtimeProgressProbe(deps.runtime);
  }

  /** Cancel running pulls (the runtime keeps what it already has; the next agent resumes). */
  stop(): void {
    this.#stopped = true;
    this.#queue.clear();
    for (const task of this.#tasks.values()) task.abort.abort(new Error("agent stopping"));
  }

  async reconcile(): Promise<Result> {
    const nc = this.#deps.getNodeCache();
    if (!nc || this.#stopped) return done(); // the planner creates it; its watch brings us back
    if (nc.metadata?.annotations?.[UNINSTALL_ANNOTATION]) return this.#uninstall(nc);
    const now = this.#clock.now();
    const spec = nc.spec ?? { nodeName: this.#config.nodeName };
    const wanted = dedupe(spec.images ?? []);
    // What this agent last reported wins over the informer's copy, which may not show our
    // latest write yet (ownership and timestamps must not be lost to a stale read).
    const previous = new Map((nc.status?.images ?? []).map((s) => [s.digest, s]));
    for (const [digest, reported] of this.#reported) previous.set(digest, reported);

    const mirror = await this.#configureMirror(spec.mirrorHosts ?? [], spec.cacheEndpoint);

    let runtimeError: StowageError | undefined;
    const images: NodeImageStatus[] = [];
    try {
      for (const entry of wanted) images.push(await this.#observe(entry, previous.get(entry.digest), now));
      await this.#removeDropped(wanted, previous);
      this.#reported = new Map(images.map((i) => [i.digest, i]));
      const present = images.filter((i) => i.state === "Present");
      this.#deps.metrics?.imagesPinned.set({ pinned: "true" }, present.filter((i) => i.pinned).length);
      this.#deps.metrics?.imagesPinned.set({ pinned: "false" }, present.filter((i) => !i.pinned).length);
    } catch (err) {
      runtimeError = asStowageError(err);
      if (runtimeError.reason !== "RuntimeUnavailable") throw err;
      this.#log.warn({ error: runtimeError.message }, "container runtime unavailable; keeping last status");
    }
    const imageFs = runtimeError ? nc.status?.imageFs : await this.#imageFs().catch(() => nc.status?.imageFs);
    const fanout = this.#deps.fanoutStats?.();
    const failureExpiryMs = this.#config.peerFailureExpiryMs ?? PEER_FAILURE_EXPIRY_MS;
    let failures: PeerFailure[] = [];

    const written = await writeStatus<NodeCacheStatus, NodeCache>(
      this.#deps.client.resource<NodeCache>(NodeCacheResource),
      nc,
      (current) => {
        const status: NodeCacheStatus = { ...(current ?? {}) };
        status.agentVersion = this.#config.agentVersion;
        status.containerdConfigPath = mirror.configPath;
        if (!runtimeError) status.images = images;
        const list = status.images ?? [];
        status.counts = countImages(list);
        const beat = parseTime(current?.heartbeatTime) ?? 0;
        const heartbeatDue = now - beat >= this.#config.heartbeatIntervalMs;
        // Free space moves with everything else on the disk: refresh it when the runtime's own
        // usage changes or with the heartbeat, not on every pass.
        if (imageFs && (heartbeatDue || current?.imageFs?.usedBytes !== imageFs.usedBytes)) {
          status.imageFs = imageFs;
          status.diskUsed = diskUsedColumn(imageFs);
        }
        let conditions: Condition[] = current?.conditions ?? [];
        conditions = setCondition(conditions, mirror.condition, now);
        conditions = setCondition(conditions, readyCondition(list, wanted.length, runtimeError), now);
        status.conditions = conditions;
        // Read on this pass, like every other field: the mirror's counts reach status at the
        // writes the agent makes anyway, never at a cadence of their own.
        failures = fanout
          ? currentPeerFailures(current?.peerFailures ?? [], peerFailures(fanout), now, failureExpiryMs)
          : [];
        if (failures.length > 0) status.peerFailures = failures;
        else delete status.peerFailures;
        const changed = !sameJson(
          { ...status, heartbeatTime: undefined },
          { ...current, heartbeatTime: undefined },
        );
        if (changed || heartbeatDue) status.heartbeatTime = formatTime(now);
        return status;
      },
      { clock: this.#clock },
    );
    const beat = Date.parse(written.object.status?.heartbeatTime ?? "") || now;
    const untilHeartbeat = Math.max(1000, beat + this.#config.heartbeatIntervalMs - now);
    const retries = [...this.#tasks.values()]
      .filter((t) => t.state === "failed" && t.retryAt !== undefined)
      .map((t) => Math.max(0, (t.retryAt as number) - now));
    const runtimeRetry = runtimeError ? [Math.min(this.#config.retryInitialMs, 5000)] : [];
    // A pass when the first peer failure expires, so the controller may plan that peer again then.
    const expiresAt = nextPeerFailureExpiry(failures, failureExpiryMs);
    const expiry = expiresAt !== undefined ? [Math.max(0, expiresAt - now)] : [];
    return requeueAfter(
      Math.min(untilHeartbeat, this.#config.resyncIntervalMs, ...retries, ...runtimeRetry, ...expiry),
    );
  }

  /**
   * Stowage is being uninstalled (the chart's pre-delete hook annotated this NodeCache): stop
   * pulling, remove every hosts.toml this agent wrote (restoring what it had merged with), and say
   * so in status, which the hook waits for. Images stay; the kubelet's GC owns them from now on.
   */
  async #uninstall(nc: NodeCache): Promise<Result> {
    // Once reported, stay idle: writing again would wake this watch with our own write, forever.
    if (this.#uninstalled) return done();
    this.#queue.clear();
    for (const task of this.#tasks.values()) task.abort.abort(new Error("uninstalling"));
    this.#tasks.clear();
    const type = NodeCacheConditionTypes.MirrorConfigured;
    let condition: ConditionInput;
    try {
      // The images stay, unpinned: from now on they are the kubelet's to collect.
      for (const image of nc.status?.images ?? []) await this.#unpin(image.image, image.digest);
      const result = this.#config.mirrorConfig
        ? await applyMirrorConfig(this.#config.containerdConfigPath, [], { cacheEndpoint: "" })
        : { hosts: {} };
      const hosts = Object.entries(result.hosts);
      if (hosts.length > 0)
        this.#log.info({ hosts: result.hosts }, "containerd mirror config removed for uninstall");
      const restored = hosts.filter(([, outcome]) => outcome === "restored").map(([host]) => host);
      condition = {
        type,
        status: "False",
        reason: "Uninstalled",
        message: `Stowage is being uninstalled: removed the hosts.toml of ${hosts.length} host(s) under ${this.#config.containerdConfigPath}${restored.length ? `, restored the earlier one of ${restored.join(", ")}` : ""}; pulls stopped`,
      };
    } catch (err) {
      condition = {
        type,
        status: "False",
        reason: "WriteFailed",
        message: `removing hosts.toml under ${this.#config.containerdConfigPath} for uninstall: ${(err as Error).message}`,
      };
    }
    const now = this.#clock.now();
    await writeStatus<NodeCacheStatus, NodeCache>(
      this.#deps.client.resource<NodeCache>(NodeCacheResource),
      nc,
      (current) => ({
        ...(current ?? {}),
        containerdConfigPath: "",
        conditions: setCondition(current?.conditions ?? [], condition, now),
        heartbeatTime: formatTime(now),
      }),
      { clock: this.#clock },
    );
    // A failed removal is retried; once done, the annotation keeps every later pass here, idle.
    if (condition.reason !== "Uninstalled") return requeueAfter(this.#config.retryInitialMs);
    this.#uninstalled = true;
    return done();
  }

  /** The cache CA file's PEM; undefined without --cache-ca-file or when the file does not exist. */
  async #cacheCa(): Promise<string | undefined> {
    const file = this.#config.cacheCaFile;
    if (!file) return undefined;
    try {
      const pem = await readFile(file, "utf8");
      if (!pem.includes("-----BEGIN CERTIFICATE-----")) throw new Error("no PEM certificate in it");
      return pem;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  }

  async #configureMirror(
    hosts: string[],
    cacheEndpoint: string | undefined,
  ): Promise<{ configPath: string; condition: ConditionInput }> {
    const type = NodeCacheConditionTypes.MirrorConfigured;
    // Without a config file, ask the runtime; a runtime that cannot say (or fails to) leaves only the directory check.
    const reported = this.#config.containerdConfigFile
      ? undefined
      : await this.#deps.runtime.runtimeConfig?.().catch(() => undefined);
    const check = await checkConfigPath(
      this.#config.containerdConfigPath,
      this.#config.containerdConfigFile,
      reported,
    );
    const configPath = check.configPath;
    if (!this.#config.mirrorConfig)
      return {
        configPath,
        condition: {
          type,
          status: "False",
          reason: "Disabled",
          message: "mirror configuration is disabled on this agent (--mirror-config=false)",
        },
      };
    if (!check.ok)
      return {
        configPath,
        condition: { type, status: "False", reason: "ConfigPathNotSet", message: check.message },
      };
    if (!cacheEndpoint)
      return {
        configPath,
        condition: {
          type,
          status: "False",
          reason: "NoCacheEndpoint",
          message: "spec.cacheEndpoint is empty; nothing to point containerd at",
        },
      };
    let caPem: string | undefined;
    try {
      caPem = await this.#cacheCa();
    } catch (err) {
      return {
        configPath,
        condition: {
          type,
          status: "False",
          reason: "CacheCaUnreadable",
          message: `reading the cache CA ${this.#config.cacheCaFile}: ${(err as Error).message}`,
        },
      };
    }
    try {
      const result = await applyMirrorConfig(configPath, hosts, {
        cacheEndpoint,
        skipVerify: this.#config.cacheSkipVerify,
        caPem,
        ...this.#config.fanoutMirror,
      });
      const changed = Object.entries(result.hosts).filter(([, outcome]) => outcome !== "unchanged");
      if (changed.length > 0)
        this.#log.info({ hosts: Object.fromEntries(changed) }, "containerd mirror config updated");
      return {
        configPath,
        condition: {
          type,
          status: "True",
          reason: "Configured",
          message: hosts.length
            ? `containerd pulls ${[...hosts].sort().join(", ")} through ${cacheEndpoint} first${caPem ? ` (its CA from ${this.#config.cacheCaFile})` : ""}`
            : "no mirror hosts in spec",
        },
      };
    } catch (err) {
      return {
        configPath,
        condition: {
          type,
          status: "False",
          reason: "WriteFailed",
          message: `writing hosts.toml under ${configPath}: ${(err as Error).message}`,
        },
      };
    }
  }

  /** Observe one spec image in the runtime; start (or keep) a pull when it is missing. */
  async #observe(
    entry: NodeCacheImage,
    previous: NodeImageStatus | undefined,
    now: number,
  ): Promise<NodeImageStatus> {
    const refs = pullReferences(entry);
    const base = { image: entry.image, digest: entry.digest };
    let task = this.#tasks.get(entry.digest);
    if (task?.state === "queued" || task?.state === "pulling") return taskStatus(base, task, now);
    let present = await this.#deps.runtime.imageStatus(refs.byDigest);
    // Content here but not the tag the kubelet will ask for: resolving the tag is cheap.
    const tagRetryDue = task?.state !== "failed" || (task.retryAt ?? 0) <= now;
    const tagMissing =
      present !== undefined &&
      refs.byTag !== undefined &&
      tagRetryDue &&
      !(await this.#deps.runtime.imageStatus(refs.byTag));
    // The kubelet's image GC removes by id, every name at once, and may do so between the two
    // questions: the tag is only missing if the digest is still here; otherwise the image is.
    if (tagMissing) present = await this.#deps.runtime.imageStatus(refs.byDigest);
    if (present) {
      const owned = previous?.ownedByAgent === true || (task?.state === "done" && task.ownsImage);
      const startedAt = task?.startedAt ?? parseTime(previous?.startedAt);
      const finishedAt = task?.finishedAt ?? parseTime(previous?.finishedAt);
      if (task?.state === "done") this.#tasks.delete(entry.digest);
      if (tagMissing) this.#startPull(entry, task, owned);
      // Pinned once no pull of it is running: a CRI pull rewrites the labels of the names it
      // creates (containerd 1.6 drops ours). Just labelled: ask again, so status says what the
      // runtime does with the label.
      if (!tagMissing && (await this.#pin(entry, refs, present.id, now)))
        present = (await this.#deps.runtime.imageStatus(refs.byDigest)) ?? present;
      const sources = this.#sources(entry, task, previous);
      return {
        ...base,
        state: "Present",
        bytes: present.sizeBytes,
        pinned: present.pinned === true,
        ...(startedAt ? { startedAt: formatTime(startedAt) } : {}),
        ...(finishedAt ? { finishedAt: formatTime(finishedAt) } : {}),
        ownedByAgent: owned,
        ...(sources ? { sources } : {}),
      };
    }
    if (task?.state === "done") {
      this.#tasks.delete(entry.digest); // removed behind our back: pull again
      task = undefined;
    }
    // Present before, absent now, and not removed by us (it is still in spec): evicted, most
    // likely by the kubelet's image GC. Counted once: the status no longer says Present after.
    const evicted = previous?.state === "Present" && !task;
    if (evicted) {
      this.#pinned.delete(entry.digest);
      this.#deps.metrics?.imagesEvicted.inc();
      this.#log.warn(
        { image: entry.image, digest: entry.digest },
        "pre-warmed image evicted from the node; pulling it again",
      );
      this.#event(
        "Warning",
        "Evicted",
        `${entry.image} (${entry.digest}) was present and is gone without the agent removing it (the kubelet's image garbage collection?); pulling it again`,
      );
    }
    if (!task || (task.retryAt ?? 0) <= now) {
      const evictedAt = evicted ? now : task?.evictedAt;
      task = this.#startPull(entry, task, true);
      if (evictedAt !== undefined) task.evictedAt = evictedAt;
    }
    return taskStatus(base, task, now);
  }

  /**
   * A present image's bytes by source (fan-out planned mode). Reported once the image is Present
   * and not while it is pulled: the counts grow with every chunk, so each pass would write, and the
   * watch event of each write would bring the next pass, a write loop for the whole pull. Present,
   * the tally is final; the next passes keep what status says (which also survives a restart, when
   * the mirror's counts start from zero).
   */
  #sources(
    entry: NodeCacheImage,
    task: PullTask | undefined,
    previous: NodeImageStatus | undefined,
  ): NodeImageStatus["sources"] {
    const stats = this.#deps.fanoutStats?.();
    if (!stats) return undefined;
    if (task?.sourcesBaseline) return sourcesOf(imageTally(entry, stats), task.sourcesBaseline);
    // Reported Present before: what was said then stands (the fanout entries may be gone from spec by now).
    if (previous?.state === "Present") return previous.sources;
    // Not pulled by this agent: the kubelet's pull through the mirror, say.
    return sourcesOf(imageTally(entry, stats));
  }

  /**
   * Label a present image pinned (checked again each heartbeat interval; the label lives in
   * containerd). True when it was checked now. A failure is logged and retried next pass:
   * pinning protects, it never blocks pre-warming.
   */
  async #pin(
    entry: NodeCacheImage,
    refs: { byDigest: string; byTag?: string },
    id: string,
    now: number,
  ): Promise<boolean> {
    const pinner = this.#deps.pinner;
    if (!pinner || this.#config.pinImages === false || this.#pinUnsupported) return false;
    // Checked again every heartbeat interval: anyone's pull of the image (the kubelet's
    // imagePullPolicy Always too) may rewrite its labels.
    const checkedAt = this.#pinned.get(entry.digest);
    if (checkedAt !== undefined && now - checkedAt < this.#config.heartbeatIntervalMs) return false;
    try {
      await pinner.setPinned([refs.byDigest, ...(refs.byTag ? [refs.byTag] : []), ...(id ? [id] : [])], true);
      this.#pinned.set(entry.digest, now);
      return true;
    } catch (err) {
      if ((err as StowageError).status === UNIMPLEMENTED) {
        // Not containerd (CRI-O answers no containerd API): nothing to pin with, say it once.
        this.#log.info(
          { error: (err as Error).message },
          "the runtime has no containerd images API; images are not pinned",
        );
        this.#pinUnsupported = true;
        return false;
      }
      this.#log.warn(
        { image: entry.image, error: (err as Error).message },
        "pinning the image failed; will retry",
      );
      return false;
    }
  }

  /** Clear the pin label of an image leaving the spec (or the node, on uninstall). */
  async #unpin(image: string, digest: string): Promise<void> {
    const pinner = this.#deps.pinner;
    this.#pinned.delete(digest);
    if (!pinner || this.#config.pinImages === false || this.#pinUnsupported) return;
    const refs = pullReferences({ image, digest });
    try {
      const present = await this.#deps.runtime.imageStatus(refs.byDigest);
      await pinner.setPinned(
        [refs.byDigest, ...(refs.byTag ? [refs.byTag] : []), ...(present?.id ? [present.id] : [])],
        false,
      );
    } catch (err) {
      if (asStowageError(err).reason === "RuntimeUnavailable") throw err;
      this.#log.warn({ image, error: (err as Error).message }, "unpinning the image failed");
    }
  }

  #startPull(entry: NodeCacheImage, previous: PullTask | undefined, ownsImage: boolean): PullTask {
    const task: PullTask = {
      image: entry.image,
      digest: entry.digest,
      state: "queued",
      attempts: previous?.attempts ?? 0,
      ownsImage,
      abort: new AbortController(),
    };
    const stats = this.#deps.fanoutStats?.();
    // A retry or a tag pull continues the same pull: its bytes so far count.
    const baseline = previous?.sourcesBaseline ?? (stats ? imageTally(entry, stats) : undefined);
    if (baseline) task.sourcesBaseline = baseline;
    this.#tasks.set(entry.digest, task);
    void this.#queue.add(() => this.#pull(entry, task));
    return task;
  }

  async #pull(entry: NodeCacheImage, task: PullTask): Promise<void> {
    if (task.abort.signal.aborted || this.#stopped) return;
    const refs = pullReferences(entry);
    task.state = "pulling";
    task.attempts++;
    task.startedAt = this.#clock.now();
    this.#deps.requeue();
    const log = this.#log.child({ image: entry.image, digest: entry.digest, attempt: task.attempts });
    log.info("pull started");
    try {
      await this.#pullWatched(refs.byDigest, task);
      // The kubelet asks for image:tag; a tag pull after the digest pull only resolves the tag
      // (the content is already here), so its later pull is a local hit.
      if (refs.byTag) await this.#pullWatched(refs.byTag, task);
      task.state = "done";
      task.finishedAt = this.#clock.now();
      log.info({ seconds: (task.finishedAt - task.startedAt) / 1000 }, "pull finished");
      this.#event("Normal", "Pulled", `pulled ${refs.byTag ?? refs.byDigest} (${entry.digest})`);
    } catch (err) {
      const error = asStowageError(err, "PullFailed");
      const delay = Math.min(this.#config.retryInitialMs * 2 ** (task.attempts - 1), this.#config.retryMaxMs);
      task.state = "failed";
      task.error = error;
      task.retryAt = this.#clock.now() + delay;
      if (task.abort.signal.aborted && this.#tasks.get(entry.digest) !== task) return; // dropped from spec
      log.warn({ reason: error.reason, error: error.message, retryInMs: delay }, "pull failed");
      this.#event(
        "Warning",
        error.reason === "RuntimeUnavailable" ? "RuntimeUnavailable" : "PullFailed",
        `pulling ${entry.image} (${entry.digest}): ${error.message}`,
      );
    } finally {
      if (!this.#stopped) this.#deps.requeue();
    }
  }

  #event(type: "Normal" | "Warning", reason: string, note: string): void {
    const nc = this.#deps.getNodeCache();
    if (!nc || !this.#deps.events) return;
    void this.#deps.events.event(nc, { type, reason, action: "Pull", note: note.slice(0, 1000) });
  }

  /** One CRI pull, cancelled when the probe sees no progress for the stall timeout. */
  async #pullWatched(ref: string, task: PullTask): Promise<void> {
    const attempt = new AbortController();
    const onTaskAbort = () => attempt.abort(task.abort.signal.reason);
    task.abort.signal.addEventListener("abort", onTaskAbort, { once: true });
    let stalled = false;
    const watcher = (async () => {
      let last = await this.#progress.sample().catch(() => undefined);
      let lastChange = this.#clock.now();
      const every = Math.max(50, Math.min(5000, Math.floor(this.#config.stallTimeoutMs / 5)));
      while (!attempt.signal.aborted) {
        try {
          await this.#clock.sleep(every, attempt.signal);
        } catch {
          return;
        }
        const sample = await this.#progress.sample().catch(() => undefined);
        await this.#measureBytes(task);
        if (sample !== undefined && sample !== last) {
          last = sample;
          lastChange = this.#clock.now();
        } else if (this.#clock.now() - lastChange >= this.#config.stallTimeoutMs) {
          stalled = true;
          attempt.abort(new Error("stalled"));
          return;
        }
      }
    })();
    try {
      const auth = pullAuthOf(this.#deps.getNodeCache()?.spec);
      await this.#deps.runtime.pullImage(ref, { signal: attempt.signal, ...(auth ? { auth } : {}) });
    } catch (err) {
      if (stalled)
        throw new StowageError(
          "Timeout",
          `pull of ${ref} made no progress for ${Math.round(this.#config.stallTimeoutMs / 1000)} s; cancelled`,
          { retryable: true, cause: err },
        );
      throw err;
    } finally {
      attempt.abort(new Error("pull ended"));
      task.abort.signal.removeEventListener("abort", onTaskAbort);
      await watcher;
    }
  }

  /**
   * Bytes so far of the pulling image, from containerd's content store; a status pass is asked
   * for at most every progressIntervalMs when they changed (status writes are the API server's
   * load: one per pulling node per interval).
   */
  async #measureBytes(task: PullTask): Promise<void> {
    const every = this.#config.progressIntervalMs ?? 0;
    const root = this.#config.containerdRoot;
    if (every <= 0 || !root) return;
    const now = this.#clock.now();
    if (task.bytesReportedAt !== undefined && now - task.bytesReportedAt < every) return;
    const progress = await pulledBytes(root, task.digest).catch(() => undefined);
    if (!progress || progress.bytes === task.bytes) return;
    task.bytes = progress.bytes;
    task.bytesReportedAt = now;
    this.#deps.requeue();
  }

  /** Images the previous status lists but spec no longer does: remove the ones we pulled. */
  async #removeDropped(wanted: NodeCacheImage[], previous: Map<string, NodeImageStatus>): Promise<void> {
    const keep = new Set(wanted.map((e) => e.digest));
    for (const [digest, task] of this.#tasks) {
      if (keep.has(digest)) continue;
      task.abort.abort(new Error("dropped from spec"));
      this.#tasks.delete(digest);
    }
    for (const [digest, status] of previous) {
      if (keep.has(digest)) continue;
      // Unpinned first, owned or not: an image that stays (not ours) is the kubelet's to collect again.
      await this.#unpin(status.image, digest);
      if (!status.ownedByAgent) continue;
      const refs = pullReferences({ image: status.image, digest });
      for (const ref of [refs.byDigest, refs.byTag]) {
        if (!ref) continue;
        try {
          if (await this.#deps.runtime.imageStatus(ref)) await this.#deps.runtime.removeImage(ref);
        } catch (err) {
          if (asStowageError(err).reason === "RuntimeUnavailable") throw err;
          this.#log.warn({ image: ref, error: (err as Error).message }, "removing image failed; will retry");
          throw err;
        }
      }
      this.#log.info({ image: status.image, digest }, "removed image dropped from spec");
    }
  }

  async #imageFs(): Promise<ImageFsStatus | undefined> {
    const filesystems = await this.#deps.runtime.imageFsInfo();
    if (filesystems.length === 0) return undefined;
    const usedBytes = filesystems.reduce((sum, fs) => sum + fs.usedBytes, 0);
    const fs: ImageFsStatus = { usedBytes };
    // The runtime reports usage only; capacity comes from the filesystem itself, which the agent
    // sees when the runtime's directory is mounted into its pod at the same path.
    const candidates = [filesystems[0].mountpoint, this.#config.containerdRoot].filter(Boolean) as string[];
    for (const path of candidates) {
      try {
        const stats = await statfs(path);
        fs.capacityBytes = stats.blocks * stats.bsize;
        fs.availableBytes = stats.bavail * stats.bsize;
        break;
      } catch {}
    }
    return fs;
  }
}

/** The reference to pull by digest (original name @ mirrored digest) and, if the spec names a tag, by tag. */
export function pullReferences(entry: Pick<NodeCacheImage, "image" | "digest">): {
  byDigest: string;
  byTag?: string;
} {
  const ref = parseReference(entry.image);
  const name = `${ref.registry}/${ref.repository}`;
  return { byDigest: `${name}@${entry.digest}`, ...(ref.tag ? { byTag: `${name}:${ref.tag}` } : {}) };
}

/** One entry per digest, highest priority first (the pull queue starts them in this order). */
function dedupe(images: NodeCacheImage[]): NodeCacheImage[] {
  const byDigest = new Map<string, NodeCacheImage>();
  for (const image of images) if (!byDigest.has(image.digest)) byDigest.set(image.digest, image);
  return [...byDigest.values()].sort((a, b) => (b.priority ?? 0) - (a.priority ?? 0));
}

function taskStatus(base: { image: string; digest: string }, task: PullTask, now: number): NodeImageStatus {
  const startedAt = task.startedAt ? { startedAt: formatTime(task.startedAt) } : {};
  const owned = { ownedByAgent: task.ownsImage };
  if (task.state === "failed")
    return {
      ...base,
      state: "Failed",
      reason: task.error?.reason === "RuntimeUnavailable" ? "RuntimeUnavailable" : "PullFailed",
      message: `${task.error?.message ?? "pull failed"} (attempt ${task.attempts}; next try at ${formatTime(task.retryAt ?? now)})`,
      ...startedAt,
      ...owned,
    };
  const evicted =
    task.evictedAt !== undefined
      ? {
          reason: "Evicted",
          message: `was present, then removed from the node at ${formatTime(task.evictedAt)} without the agent removing it (the kubelet's image garbage collection?); pulling it again`,
        }
      : {};
  if (task.state === "pulling")
    return {
      ...base,
      state: "Pulling",
      ...evicted,
      ...(task.bytes !== undefined ? { bytes: task.bytes } : {}),
      ...startedAt,
      ...owned,
    };
  return { ...base, state: "Pending", ...evicted, ...owned };
}

function readyCondition(
  images: NodeImageStatus[],
  wanted: number,
  runtimeError?: StowageError,
): ConditionInput {
  const type = NodeCacheConditionTypes.Ready;
  if (runtimeError)
    return { type, status: "False", reason: "RuntimeUnavailable", message: runtimeError.message };
  const failed = images.filter((i) => i.state === "Failed");
  const present = images.filter((i) => i.state === "Present").length;
  if (failed.length > 0)
    return {
      type,
      status: "False",
      reason: "PullFailed",
      message: `${failed.length} of ${wanted} images failed to pull: ${failed.map((f) => f.image).join(", ")}`,
    };
  if (present < wanted)
    return { type, status: "False", reason: "Pulling", message: `${present} of ${wanted} images present` };
  return { type, status: "True", reason: "AllPresent", message: `all ${wanted} images present` };
}

/**
 * The node token as CRI pull credentials for the cache front: Basic `stowage-node:<token>`,
 * which containerd (1.6) sends to a mirror that answers 401 only when the server address is
 * empty or the mirror's own `http(s)://host`. It is the cache's: so that containerd never hands
 * it to the upstream it falls back to, the address names the cache endpoint, never empty.
 */
export function pullAuthOf(spec: NodeCacheSpec | undefined): CriAuth | undefined {
  const token = spec?.pullToken?.token;
  if (!token || !spec?.cacheEndpoint) return undefined;
  let origin: string;
  try {
    origin = new URL(spec.cacheEndpoint).origin;
  } catch {
    return undefined; // an endpoint the mirror config refuses too, and says so in its condition
  }
  return { username: NODE_TOKEN_USER, password: token, serverAddress: origin };
}
