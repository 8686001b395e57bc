/**
 * The copy engine: plan what an image needs in the target, then move only that, streaming
 * source → target with every byte verified by the client. Blobs go first (largest first,
 * bounded per target registry, each digest moved once per run, mounted across repositories
 * when the target already holds it elsewhere), then child manifests, then the index, so the
 * target never holds a manifest whose blobs are missing.
 */
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import PQueue from "p-queue";
import type { Clock } from "../util/clock.ts";
import { systemClock } from "../util/clock.ts";
import { StowageError } from "../util/errors.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import { type Settled, settle, unsettle } from "../util/settle.ts";
import { type BlobIndex, MemoryBlobIndex } from "./blobIndex.ts";
import { checkSinglePlatform, formatPlatform, selectManifests } from "./platforms.ts";
import { formatReference, type ImageReference } from "./reference.ts";
import type { RegistryClient, RepoRef } from "./registry.ts";
import {
  type Descriptor,
  type ImageIndex,
  type ImageManifest,
  isIndexMediaType,
  MediaType,
  type Platform,
  type RawManifest,
} from "./types.ts";

export interface CopyOptions {
  /** undefined = every platform (the index is then pushed byte-exact, upstream digest kept). */
  platforms?: Platform[];
  /** Keep the upstream index byte-exact (same digest), whatever `platforms` says. */
  allPlatforms?: boolean;
  referrers?: boolean;
  /** Blob transfers in flight per target registry (default 4). */
  concurrency?: number;
  signal?: AbortSignal;
  onProgress?: (event: ProgressEvent) => void;
}

export interface CopyResult {
  source: string;
  target: string;
  sourceDigest: string;
  targetDigest: string;
  mediaType: string;
  platforms: string[];
  bytes: { transferred: number; mounted: number; skipped: number };
  blobs: { transferred: number; mounted: number; skipped: number };
  manifests: { pushed: number; skipped: number };
  referrers?: { copied: number };
  durationMs: number;
}

export type BlobOutcome = "transferred" | "mounted" | "skipped";

export type ProgressEvent =
  | {
      type: "planned";
      image: string;
      totalBytes: number;
      bytesToCopy: number;
      blobs: number;
      upToDate: boolean;
    }
  | { type: "bytes"; image: string; bytes: number }
  | { type: "blob"; image: string; digest: string; size: number; outcome: BlobOutcome }
  | { type: "manifest"; image: string; digest: string; pushed: boolean }
  | { type: "done"; image: string; result: CopyResult };

export interface CopyJob {
  source: ImageReference;
  target: ImageReference;
}

/** One manifest to place in the target, with the blobs and child manifests it needs. */
export interface ManifestNode {
  raw: RawManifest;
  /** Config + layers (image manifests); empty for indexes. */
  blobs: Descriptor[];
  /** Child manifests of an index, pushed before it. */
  children: ManifestNode[];
}

export interface CopyPlan {
  source: ImageReference;
  target: ImageReference;
  sourceRepo: RepoRef;
  targetRepo: RepoRef;
  /** What the source reference resolved to. */
  sourceManifest: RawManifest;
  /** What will be pushed as the top manifest (a filtered index when platforms were dropped). */
  root: ManifestNode;
  /** Tag (or digest) the root is pushed under. */
  targetReference: string;
  platforms: string[];
  /** Unique blobs of every selected manifest, largest first. */
  blobs: Descriptor[];
  /** Digests the target repository already holds (everything, when upToDate). */
  present: Set<string>;
  /** The target already holds the root under its tag/digest: nothing to copy. */
  upToDate: boolean;
  /**
   * Small blobs read (and verified) from the source while planning, by digest: pushed from
   * memory so the source serves each blob once per copy.
   */
  fetched: ReadonlyMap<string, Buffer>;
}

interface TransferContext {
  run: RunState;
  signal: AbortSignal;
  image: string;
  emit: (e: ProgressEvent) => void;
  fetched?: ReadonlyMap<string, Buffer>;
}

const imageConfigTypes = new Set<string>([MediaType.OciConfig, MediaType.DockerConfig]);
const manifestTypes = new Set<string>([MediaType.OciManifest, MediaType.DockerManifest]);
const maxConfigBytes = 4 * 1024 * 1024;

function repoOf(ref: ImageReference): RepoRef {
  return { registry: ref.registry, repository: ref.repository };
}

function parseJson<T>(raw: RawManifest, what: string): T {
  try {
    return JSON.parse(raw.bytes.toString("utf8")) as T;
  } catch (err) {
    throw new StowageError("ManifestInvalid", `${what} (${raw.digest}) is not valid JSON`, { cause: err });
  }
}

/** The manifest's own media type: the body's field wins over a Content-Type that some registries get wrong. */
function mediaTypeOf(raw: RawManifest): string {
  try {
    const body = JSON.parse(raw.bytes.toString("utf8")) as { mediaType?: string; manifests?: unknown };
    if (body.mediaType) return body.mediaType;
    if (Array.isArray(body.manifests)) return MediaType.OciIndex;
  } catch {
    // fall through to the served type
  }
  return raw.mediaType;
}

/** State shared by every image of one run: queues per target registry, in-flight transfers, known blob locations. */
class RunState {
  readonly queues = new Map<string, PQueue>();
  /** `${registry}|${digest}` → transfer in progress, resolving to the repository the blob landed in. */
  readonly inflight = new Map<string, Promise<string>>();
  /** A repository of a target registry known to hold a blob (shared across runs, maybe across restarts). */
  readonly locations: BlobIndex;
  readonly concurrency: number;

  constructor(concurrency: number, locations: BlobIndex) {
    this.concurrency = concurrency;
    this.locations = locations;
  }

  queueFor(registry: string): PQueue {
    let queue = this.queues.get(registry);
    if (!queue) {
      queue = new PQueue({ concurrency: this.concurrency });
      this.queues.set(registry, queue);
    }
    return queue;
  }
}

interface Tally {
  bytes: { transferred: number; mounted: number; skipped: number };
  blobs: { transferred: number; mounted: number; skipped: number };
  manifests: { pushed: number; skipped: number };
}

function emptyTally(): Tally {
  return {
    bytes: { transferred: 0, mounted: 0, skipped: 0 },
    blobs: { transferred: 0, mounted: 0, skipped: 0 },
    manifests: { pushed: 0, skipped: 0 },
  };
}

export class Copier {
  readonly #client: RegistryClient;
  readonly #logger: Logger;
  readonly #clock: Clock;
  readonly #locations: BlobIndex;

  /** `blobIndex`: where blobs live in target registries; default in memory, for this Copier's life. */
  constructor(deps: { client: RegistryClient; logger?: Logger; clock?: Clock; blobIndex?: BlobIndex }) {
    this.#client = deps.client;
    this.#locations = deps.blobIndex ?? new MemoryBlobIndex();
    this.#logger = deps.logger ?? silentLogger();
    this.#clock = deps.clock ?? systemClock;
  }

  /** Copies one image (or index). */
  async copy(source: ImageReference, target: ImageReference, options: CopyOptions = {}): Promise<CopyResult> {
    const [result] = await this.copyMany([{ source, target }], options);
    return result;
  }

  /**
   * Copies several images in one run: they share the per-registry queues, so a blob several
   * images need is transferred once and mounted into the other repositories. Rejects with
   * the first failure once every job has settled; use copyManySettled for per-job outcomes.
   */
  async copyMany(jobs: CopyJob[], options: CopyOptions = {}): Promise<CopyResult[]> {
    const settled = await this.copyManySettled(jobs, options);
    const failure = settled.find((s) => s.status === "rejected");
    if (failure) throw (failure as PromiseRejectedResult).reason;
    return settled.map((s) => (s as PromiseFulfilledResult<CopyResult>).value);
  }

  async copyManySettled(
    jobs: CopyJob[],
    options: CopyOptions = {},
  ): Promise<PromiseSettledResult<CopyResult>[]> {
    const run = new RunState(Math.max(1, options.concurrency ?? 4), this.#locations);
    // Plans run one after another so a later image sees which blobs an earlier one already
    // holds or is moving (mount instead of upload); transfers then overlap freely.
    const executions: Promise<CopyResult>[] = [];
    for (const job of jobs) {
      const started = this.#clock.now();
      const planned = this.plan(job.source, job.target, options);
      // Attached before the await below, so this image registers its transfers as in flight
      // (synchronously, at the start of #execute) before the next image plans.
      executions.push(planned.then((plan) => this.#execute(plan, run, options, started)));
      await planned.then(
        () => undefined,
        () => undefined,
      );
    }
    return Promise.allSettled(executions);
  }

  /**
   * Carries out a plan from `plan()` as a run of its own: the CLI plans first so an unchanged
   * re-run is answered from that plan's requests alone.
   */
  execute(plan: CopyPlan, options: CopyOptions = {}, started = this.#clock.now()): Promise<CopyResult> {
    const run = new RunState(Math.max(1, options.concurrency ?? 4), this.#locations);
    return this.#execute(plan, run, options, started);
  }

  /** Resolves the source, selects platforms, and asks the target what it already has. No writes. */
  async plan(source: ImageReference, target: ImageReference, options: CopyOptions = {}): Promise<CopyPlan> {
    const client = this.#client;
    const sourceRepo = repoOf(source);
    const targetRepo = repoOf(target);
    const sourceName = formatReference(source);
    // The target's HEAD does not wait for the source's GET when the target names its reference
    // (a tag or a digest): each is a round trip, and on a cold copy's critical path. Its failure
    // is reported only after the source's, as when they ran one after the other.
    const named = target.tag ?? target.digest;
    const earlyHead = named !== undefined ? settle(client.headManifest(targetRepo, named)) : undefined;
    const sourceReference = source.digest ?? source.tag ?? "latest";
    const sourceManifest =
      (await this.#heldByTarget(
        sourceRepo,
        sourceReference,
        source.digest,
        targetRepo,
        earlyHead,
        options.signal,
      )) ?? (await client.getManifest(sourceRepo, sourceReference));
    const mediaType = mediaTypeOf(sourceManifest);
    const keepAll = options.allPlatforms === true || !options.platforms || options.platforms.length === 0;

    let rootRaw = sourceManifest;
    let selectedChildren: Descriptor[] = [];
    if (isIndexMediaType(mediaType)) {
      const index = parseJson<ImageIndex>(sourceManifest, `index ${sourceName}`);
      const selection = selectManifests(index, keepAll ? undefined : options.platforms);
      selectedChildren = selection.selected;
      if (!selection.keepsAll) {
        // Same document minus the dropped entries: annotations and media type kept, new digest.
        const filtered = { ...index, manifests: selection.selected };
        rootRaw = rawFromDocument(filtered, sourceManifest.mediaType);
      }
    } else if (!manifestTypes.has(mediaType)) {
      throw new StowageError(
        "UnsupportedMediaType",
        `${sourceName} is a ${mediaType}, which cannot be copied (only OCI and Docker schema2 manifests and indexes)`,
      );
    }

    const targetReference = target.tag ?? target.digest ?? rootRaw.digest;
    if (target.digest && !target.tag && target.digest !== rootRaw.digest) {
      throw new StowageError(
        "InvalidArgument",
        `target ${formatReference(target)} names digest ${target.digest}, but the copy would be ${rootRaw.digest}`,
      );
    }

    // The fast path of an unchanged re-sync: one HEAD of the source, the target's HEAD and GET.
    const existing = earlyHead
      ? unsettle(await earlyHead)
      : await client.headManifest(targetRepo, targetReference);
    const upToDate = existing?.digest === rootRaw.digest;
    const from = upToDate ? targetRepo : sourceRepo;

    const root: ManifestNode = { raw: rootRaw, blobs: [], children: [] };
    const fetched = new Map<string, Buffer>();
    const platforms: string[] = [];
    const present = new Set<string>();
    /** Which of `blobs` the target already holds (all of them when the image is up to date). */
    const findPresent = async (blobs: Descriptor[]) => {
      if (upToDate) {
        for (const blob of blobs) present.add(blob.digest);
        return;
      }
      const checks = new PQueue({ concurrency: 8 });
      await Promise.all(
        blobs.map((blob) =>
          checks.add(async () => {
            if ((await client.hasBlob(targetRepo, blob.digest)) !== undefined) present.add(blob.digest);
          }),
        ),
      );
    };
    if (isIndexMediaType(mediaType)) {
      root.children = await Promise.all(selectedChildren.map((d) => this.#loadNode(from, d)));
      for (const d of selectedChildren)
        if (d.platform && d.platform.os !== "unknown") platforms.push(formatPlatform(d.platform));
      await findPresent(uniqueBlobs(root));
    } else {
      const manifest = parseJson<ImageManifest>(sourceManifest, `manifest ${sourceName}`);
      root.blobs = blobsOf(manifest);
      // The config's GET and the target's blob HEADs do not depend on each other: one round trip.
      // A config or platform error still comes first, as when the HEADs waited for the config.
      const [config, checked] = await Promise.all([
        this.#readConfig(from, manifest),
        settle(findPresent(uniqueBlobs(root))),
      ]);
      if (config && !upToDate) fetched.set(manifest.config.digest, config.bytes);
      const platform = config?.platform;
      if (!keepAll) checkSinglePlatform(platform ?? {}, options.platforms, sourceName);
      if (platform?.os && platform.architecture) platforms.push(formatPlatform(platform as Platform));
      unsettle(checked);
    }
    const blobs = uniqueBlobs(root);
    return {
      source,
      target,
      sourceRepo,
      targetRepo,
      sourceManifest,
      root,
      targetReference,
      platforms,
      blobs,
      present,
      upToDate,
      fetched,
    };
  }

  /**
   * The source's manifest read from the target, when the target's reference already holds the
   * digest the source serves: an unchanged re-sync then asks the upstream one HEAD and no GET.
   * Registries such as Docker Hub count every manifest GET as a pull against the rate limit
   * (HEADs not), and `stowage mirror` is re-run from cron jobs and CI. Undefined whenever that is not
   * certain (no digest on either side, a difference, any failure): the source's GET then
   * answers as before, errors included. getManifest by digest checks the target's bytes.
   */
  async #heldByTarget(
    sourceRepo: RepoRef,
    sourceReference: string,
    sourceDigest: string | undefined,
    targetRepo: RepoRef,
    targetHead: Promise<Settled<{ digest: string } | undefined>> | undefined,
    signal: AbortSignal | undefined,
  ): Promise<RawManifest | undefined> {
    // Nothing is asked of the source until the target says it holds something: a cold copy
    // goes straight to the source's GET.
    const held = targetHead ? await targetHead : undefined;
    if (!held?.ok || held.value === undefined) return undefined;
    try {
      const digest =
        sourceDigest ?? (await this.#client.peekManifestDigest(sourceRepo, sourceReference, { signal }));
      if (digest === undefined || digest !== held.value.digest) return undefined;
      return await this.#client.getManifest(targetRepo, digest, { signal });
    } catch (err) {
      if (signal?.aborted) throw err;
      this.#logger.debug(
        { source: `${sourceRepo.registry}/${sourceRepo.repository}`, err: (err as Error).message },
        "could not read the unchanged manifest from the target; asking the source",
      );
      return undefined;
    }
  }

  async #loadNode(repo: RepoRef, descriptor: Descriptor): Promise<ManifestNode> {
    const raw = await this.#client.getManifest(repo, descriptor.digest);
    const mediaType = mediaTypeOf(raw);
    if (isIndexMediaType(mediaType)) {
      const index = parseJson<ImageIndex>(raw, `index ${descriptor.digest}`);
      return {
        raw,
        blobs: [],
        children: await Promise.all(index.manifests.map((d) => this.#loadNode(repo, d))),
      };
    }
    if (!manifestTypes.has(mediaType)) {
      throw new StowageError(
        "UnsupportedMediaType",
        `manifest ${descriptor.digest} is a ${mediaType}, which cannot be copied`,
      );
    }
    return {
      raw,
      blobs: blobsOf(parseJson<ImageManifest>(raw, `manifest ${descriptor.digest}`)),
      children: [],
    };
  }

  /** An image config's bytes and os/architecture/variant; undefined for artifacts (non-image config). */
  async #readConfig(
    repo: RepoRef,
    manifest: ImageManifest,
  ): Promise<{ bytes: Buffer; platform: Partial<Platform> } | undefined> {
    const config = manifest.config;
    if (!config || !imageConfigTypes.has(config.mediaType) || config.size > maxConfigBytes) return undefined;
    const chunks: Buffer[] = [];
    for await (const chunk of this.#client.getBlob(repo, config)) chunks.push(chunk as Buffer);
    const bytes = Buffer.concat(chunks);
    try {
      const body = JSON.parse(bytes.toString("utf8")) as Partial<Platform>;
      const platform = {
        os: body.os,
        architecture: body.architecture,
        ...(body.variant ? { variant: body.variant } : {}),
      };
      return { bytes, platform };
    } catch (err) {
      throw new StowageError("ManifestInvalid", `config ${config.digest} is not valid JSON`, { cause: err });
    }
  }

  async #execute(plan: CopyPlan, run: RunState, options: CopyOptions, started: number): Promise<CopyResult> {
    const image = formatReference(plan.target);
    const tally = emptyTally();
    const emit = options.onProgress ?? (() => {});
    const totalBytes = plan.blobs.reduce((sum, b) => sum + b.size, 0);
    const missing = plan.blobs.filter((b) => !plan.present.has(b.digest));
    emit({
      type: "planned",
      image,
      totalBytes,
      bytesToCopy: missing.reduce((sum, b) => sum + b.size, 0),
      blobs: plan.blobs.length,
      upToDate: plan.upToDate,
    });

    for (const blob of plan.blobs) {
      if (plan.present.has(blob.digest)) {
        // An unchanged image was recorded when it was pushed: its no-op run writes nothing.
        if (!plan.upToDate)
          run.locations.set(plan.targetRepo.registry, blob.digest, plan.targetRepo.repository);
        tally.blobs.skipped++;
        tally.bytes.skipped += blob.size;
        emit({ type: "blob", image, digest: blob.digest, size: blob.size, outcome: "skipped" });
      }
    }

    // One controller per image: the first failure stops this image's other transfers.
    const controller = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, controller.signal]) : controller.signal;
    const context: TransferContext = { run, signal, image, emit, fetched: plan.fetched };

    if (!plan.upToDate) {
      const outcomes = missing.map((blob) =>
        this.#placeBlob(plan.sourceRepo, plan.targetRepo, blob, context).then(
          (outcome) => {
            tally.blobs[outcome]++;
            tally.bytes[outcome] += blob.size;
            emit({ type: "blob", image, digest: blob.digest, size: blob.size, outcome });
          },
          (err: unknown) => {
            controller.abort(err);
            throw err;
          },
        ),
      );
      const settled = await Promise.allSettled(outcomes);
      const failure = settled.find((s) => s.status === "rejected");
      if (failure) throw (failure as PromiseRejectedResult).reason;
      await this.#pushManifests(plan.targetRepo, plan.root, plan.targetReference, tally, context, true);
    } else {
      tally.manifests.skipped += countManifests(plan.root);
    }

    let referrers: { copied: number } | undefined;
    if (options.referrers) {
      const subjects = new Set<string>();
      collectDigests(plan.root, subjects);
      if (plan.root.raw.digest !== plan.sourceManifest.digest) subjects.delete(plan.root.raw.digest);
      referrers = { copied: await this.#copyReferrers(plan, [...subjects], tally, context) };
    }

    const result: CopyResult = {
      source: formatReference(plan.source),
      target: image,
      sourceDigest: plan.sourceManifest.digest,
      targetDigest: plan.root.raw.digest,
      mediaType: mediaTypeOf(plan.root.raw),
      platforms: plan.platforms,
      bytes: tally.bytes,
      blobs: tally.blobs,
      manifests: tally.manifests,
      ...(referrers ? { referrers } : {}),
      durationMs: Math.max(0, this.#clock.now() - started),
    };
    this.#logger.info(
      {
        source: result.source,
        target: result.target,
        digest: result.targetDigest,
        transferred: result.bytes.transferred,
        mounted: result.bytes.mounted,
        skipped: result.bytes.skipped,
        durationMs: result.durationMs,
      },
      plan.upToDate ? "target already up to date" : "mirrored",
    );
    emit({ type: "done", image, result });
    return result;
  }

  /**
   * Puts one blob into the target repository: waits for (then mounts) a transfer of the same
   * digest already running for this target registry, mounts from a repository known to hold
   * it, or streams it from the source.
   */
  async #placeBlob(
    sourceRepo: RepoRef,
    targetRepo: RepoRef,
    blob: Descriptor,
    context: TransferContext,
  ): Promise<BlobOutcome> {
    const { run } = context;
    const key = `${targetRepo.registry}|${blob.digest}`;
    const running = run.inflight.get(key);
    if (running) {
      const landedIn = await running;
      if (landedIn === targetRepo.repository) return "skipped";
      return this.#mountOrTransfer(sourceRepo, targetRepo, blob, landedIn, context);
    }
    const known = run.locations.get(targetRepo.registry, blob.digest);
    const transfer = this.#mountOrTransfer(
      sourceRepo,
      targetRepo,
      blob,
      known !== targetRepo.repository ? known : undefined,
      context,
    );
    const landing = transfer.then(() => targetRepo.repository);
    run.inflight.set(key, landing);
    landing.then(
      () => run.locations.set(targetRepo.registry, blob.digest, targetRepo.repository),
      () => undefined,
    );
    landing.finally(() => run.inflight.delete(key)).catch(() => undefined);
    return transfer;
  }

  async #mountOrTransfer(
    sourceRepo: RepoRef,
    targetRepo: RepoRef,
    blob: Descriptor,
    mountFrom: string | undefined,
    context: TransferContext,
  ): Promise<BlobOutcome> {
    const { run, signal, image, emit } = context;
    const client = this.#client;
    const queue = run.queueFor(targetRepo.registry);
    return queue.add(
      async () => {
        if (signal.aborted) throw signal.reason;
        if (mountFrom) {
          try {
            if (await client.mountBlob(targetRepo, blob.digest, mountFrom)) return "mounted" as const;
          } catch (err) {
            // A mount is an optimisation (the source repository may be gone or unreadable): upload instead.
            if (signal.aborted) throw err;
            this.#logger.debug(
              { blob: blob.digest, from: mountFrom, err: (err as Error).message },
              "mount failed",
            );
          }
        }
        const onBytes = (bytes: number) => emit({ type: "bytes", image, bytes });
        const held = context.fetched?.get(blob.digest);
        const open = held ? () => Readable.from([held]) : () => client.getBlob(sourceRepo, blob, { signal });
        await client.pushBlob(targetRepo, blob, open, {
          signal,
          onBytes,
          // The download goes to this upload alone: its buffers are reused once sent.
          exclusiveChunks: true,
        });
        return "transferred" as const;
      },
      { priority: blob.size, signal },
    );
  }

  /** Children first (by digest, skipped when present), then the node itself under `reference`. */
  async #pushManifests(
    repo: RepoRef,
    node: ManifestNode,
    reference: string,
    tally: Tally,
    context: { image: string; emit: (e: ProgressEvent) => void },
    isRoot: boolean,
  ): Promise<void> {
    await Promise.all(
      node.children.map((child) => this.#pushManifests(repo, child, child.raw.digest, tally, context, false)),
    );
    if (!isRoot) {
      const existing = await this.#client.headManifest(repo, node.raw.digest);
      if (existing?.digest === node.raw.digest) {
        tally.manifests.skipped++;
        context.emit({ type: "manifest", image: context.image, digest: node.raw.digest, pushed: false });
        return;
      }
    }
    const pushed = await this.#client.putManifest(repo, reference, node.raw);
    if (pushed !== node.raw.digest) {
      throw new StowageError(
        "DigestMismatch",
        `target ${repo.registry}/${repo.repository} stored manifest ${node.raw.digest} as ${pushed}`,
      );
    }
    tally.manifests.pushed++;
    context.emit({ type: "manifest", image: context.image, digest: node.raw.digest, pushed: true });
  }

  /**
   * Copies the referrers (signatures, SBOMs) of each subject: their blobs, their manifests
   * by digest, and the `sha256-<hex>` fallback tag index for registries without the
   * referrers API (the target's own listing is checked first, so OCI 1.1 registries get no tag).
   */
  async #copyReferrers(
    plan: CopyPlan,
    subjects: string[],
    tally: Tally,
    context: { run: RunState; signal: AbortSignal; image: string; emit: (e: ProgressEvent) => void },
  ): Promise<number> {
    const client = this.#client;
    let copied = 0;
    for (const subject of subjects) {
      const found = await client.referrers(plan.sourceRepo, subject);
      if (found.length === 0) continue;
      for (const descriptor of found) {
        const node = await this.#loadNode(plan.sourceRepo, descriptor);
        const blobs = uniqueBlobs(node);
        await Promise.all(
          blobs.map(async (blob) => {
            if ((await client.hasBlob(plan.targetRepo, blob.digest)) !== undefined) {
              tally.blobs.skipped++;
              tally.bytes.skipped += blob.size;
              return;
            }
            const outcome = await this.#placeBlob(plan.sourceRepo, plan.targetRepo, blob, context);
            tally.blobs[outcome]++;
            tally.bytes[outcome] += blob.size;
          }),
        );
        const before = tally.manifests.pushed;
        await this.#pushManifests(plan.targetRepo, node, node.raw.digest, tally, context, false);
        if (tally.manifests.pushed > before) copied++;
      }
      const listed = new Set((await client.referrers(plan.targetRepo, subject)).map((d) => d.digest));
      const unlisted = found.filter((d) => !listed.has(d.digest));
      if (unlisted.length > 0) await this.#writeReferrersTag(plan.targetRepo, subject, unlisted);
    }
    return copied;
  }

  async #writeReferrersTag(repo: RepoRef, subject: string, add: Descriptor[]): Promise<void> {
    const tag = subject.replace(":", "-");
    let entries: Descriptor[] = [];
    const existing = await this.#client.headManifest(repo, tag);
    if (existing) {
      const raw = await this.#client.getManifest(repo, tag);
      entries = parseJson<ImageIndex>(raw, `referrers tag ${tag}`).manifests ?? [];
    }
    const have = new Set(entries.map((d) => d.digest));
    const merged = [...entries, ...add.filter((d) => !have.has(d.digest))];
    const index = { schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: merged };
    await this.#client.putManifest(repo, tag, rawFromDocument(index, MediaType.OciIndex));
  }
}

function blobsOf(manifest: ImageManifest): Descriptor[] {
  const blobs: Descriptor[] = [];
  if (manifest.config) blobs.push(manifest.config);
  for (const layer of manifest.layers ?? []) {
    // Foreign (non-distributable) layers live elsewhere; registries do not hold them.
    if (layer.urls && layer.urls.length > 0) continue;
    blobs.push(layer);
  }
  return blobs;
}

/** Every blob of a manifest tree once, largest first. */
function uniqueBlobs(root: ManifestNode): Descriptor[] {
  const byDigest = new Map<string, Descriptor>();
  const visit = (node: ManifestNode) => {
    for (const blob of node.blobs) if (!byDigest.has(blob.digest)) byDigest.set(blob.digest, blob);
    for (const child of node.children) visit(child);
  };
  visit(root);
  return [...byDigest.values()].sort((a, b) => b.size - a.size);
}

function countManifests(node: ManifestNode): number {
  return 1 + node.children.reduce((sum, child) => sum + countManifests(child), 0);
}

function collectDigests(node: ManifestNode, into: Set<string>): void {
  into.add(node.raw.digest);
  for (const child of node.children) collectDigests(child, into);
}

function rawFromDocument(document: object, mediaType: string): RawManifest {
  const bytes = Buffer.from(JSON.stringify(document));
  return { mediaType, bytes, digest: sha256(bytes) };
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}
