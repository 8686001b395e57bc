/**
 * The ModelImage API (`stowage.dev/v1alpha1`): types, the CRD's defaults, and the checks the CRD
 * makes at apply time, for code that reads objects not written through the API server. The CRD in
 * `crds/stowage.dev_modelimages.yaml` is the truth; `test/api/types.test.ts` keeps this file in step.
 */
import type { KubeObject, ObjectMeta, ResourceType } from "../kube/client.ts";
import type { Condition } from "../kube/conditions.ts";
import { formatReference, parseReference } from "../oci/reference.ts";
import type { Reason } from "../util/errors.ts";
import { DURATION_PATTERN, parseDuration } from "./duration.ts";

export const GROUP = "stowage.dev";
export const VERSION = "v1alpha1";
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = "ModelImage";
export const PLURAL = "modelimages";
export const SINGULAR = "modelimage";
export const SHORT_NAME = "mi";
export const CRD_NAME = `${PLURAL}.${GROUP}`;

/** For `KubeClient.resource(...)`, informers and the work queue. */
export const ModelImageResource = {
  group: GROUP,
  version: VERSION,
  plural: PLURAL,
  kind: KIND,
  namespaced: true,
} as const satisfies ResourceType;

export const ConditionTypes = {
  /** Every variant is in the cache at the upstream's current digest and pre-warmed as asked. */
  Ready: "Ready",
  /** The cache holds what upstream serves now. */
  Synced: "Synced",
  /** Matching nodes hold the cached images (minReadyNodes reached). */
  Prewarmed: "Prewarmed",
  /** kstatus: work is in progress (copying, pulling onto nodes). */
  Reconciling: "Reconciling",
  /** kstatus: progress is impossible without a change (bad spec, missing secret, denied). */
  Stalled: "Stalled",
} as const;
export type ConditionType = (typeof ConditionTypes)[keyof typeof ConditionTypes];

/**
 * Reasons ModelImage conditions use besides the error reasons of `src/util/errors.ts`
 * (`UpstreamUnavailable`, `AuthFailed`, `ImageNotFound`, `NoMatchingNodes`, ...), which a failing
 * condition carries unchanged. Stable: alerts and Argo CD health read them.
 */
export const ConditionReasons = {
  /** Ready/True. */
  Ready: "Ready",
  /** Synced/True: cache digest equals upstream digest. */
  UpToDate: "UpToDate",
  /** Synced/False while a copy runs, Reconciling/True. */
  Syncing: "Syncing",
  /** Synced/False: upstream moved to a digest the cache does not have yet. */
  UpstreamChanged: "UpstreamChanged",
  /** Prewarmed/True. */
  NodesWarm: "NodesWarm",
  /** Prewarmed/False, Reconciling/True: nodes are pulling. */
  NodesPulling: "NodesPulling",
  /** Prewarmed/True: nothing to wait for. */
  PrewarmDisabled: "PrewarmDisabled",
  /** Stalled/True: the spec cannot work (a check the CRD could not make, or an object that skipped it). */
  InvalidSpec: "InvalidSpec",
  /** Ready/False, Reconciling/False: spec.suspend is true. */
  Suspended: "Suspended",
  /** Reconciling/False once nothing is in progress. */
  Idle: "Idle",
} as const;
export type ConditionReason = (typeof ConditionReasons)[keyof typeof ConditionReasons] | Reason;

export const DEFAULT_VARIANT_NAME = "default";
export const MAX_VARIANTS = 16;
export const MAX_PULL_SECRETS = 16;
export const MAX_PLATFORMS = 16;
export const MAX_NODE_SELECTOR_LABELS = 32;
export const MAX_IMAGE_LENGTH = 512;
export const DEFAULT_SYNC_INTERVAL = "10m";
export const MIN_SYNC_INTERVAL = "30s";
export const AUTO_PLATFORMS = "auto";
export const DEFAULT_MAX_CONCURRENT_NODES = 4;
export const MAX_CONCURRENT_NODES = 1000;
export const DEFAULT_HOLD_TIMEOUT = "15m";
/** Longest sync.interval and prewarm.holdTimeout the CRD accepts: one year. */
export const MAX_DURATION = "8760h";
/** Bound on spec.prewarm.minReadyNodes (more nodes than a Kubernetes cluster supports). */
export const MAX_MIN_READY_NODES = 100000;
/** spec.prewarm.priority is an int32. */
export const MIN_PRIORITY = -2147483648;
export const MAX_PRIORITY = 2147483647;

// The regular expressions below are written into the CRD verbatim (a test checks it). They use
// only syntax JavaScript and Go's RE2 read alike, because the real server evaluates them with RE2.

/** The distribution reference grammar: `[host[:port]/]path[:tag][@digest]`, digests sha256/sha512. */
export const IMAGE_REFERENCE_PATTERN =
  "^(?:(?:\\[[a-fA-F0-9:]+\\]|(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:[.](?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*)(?::[0-9]+)?/)?" +
  "[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*" +
  "(?::[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(?:@(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}))?$";
/** RFC 1123 label (variant names). */
export const DNS_LABEL_PATTERN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/** RFC 1123 subdomain (Secret names). */
export const DNS_SUBDOMAIN_PATTERN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/** Qualified label key `[prefix/]name`: the name part is at most 63 characters; the prefix at most 253 (checked apart). */
export const LABEL_KEY_PATTERN =
  "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$";
/** Label value (at most 63 characters, checked apart). */
export const LABEL_VALUE_PATTERN = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/** `os/arch[/variant]` as OCI image indexes spell them: `linux/amd64`, `linux/arm64/v8`. */
export const PLATFORM_PATTERN = "^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$";
/** `sync.platforms` items: a platform, or `auto` alone. */
export const SYNC_PLATFORM_PATTERN = "^(auto|[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?)$";
export { DURATION_PATTERN };
/**
 * A duration the real server's CEL `duration()` can always evaluate: at most four numbers of at
 * most five digits (99999h × 4 stays under Go's 2562047h limit), so the CRD's upper bound is
 * checked with a clear message instead of failing with a CEL evaluation error.
 */
export const BOUNDED_DURATION_PATTERN =
  "^(([0-9]{1,5}(\\.[0-9]{0,9})?|\\.[0-9]{1,9})(ns|us|µs|μs|ms|s|m|h)){1,4}$";
/** An image reference whose first component is `host:port/`. */
export const REGISTRY_WITH_PORT_PATTERN = "^(\\[[0-9a-fA-F:]+\\]|[^:/]+):[0-9]+/";
/** ... with a port between 1 and 65535 (leading zeros allowed, as Number() reads them). */
export const REGISTRY_PORT_IN_RANGE_PATTERN =
  "^(\\[[0-9a-fA-F:]+\\]|[^:/]+):0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])/";

export interface LocalObjectReference {
  name: string;
}

export interface ModelImageVariant {
  /** DNS label, unique among the variants; `default` for the `spec.image` shorthand. */
  name: string;
  /** Upstream reference: tag, digest or tag@digest. */
  image: string;
  /** Nodes that should hold this variant; empty or absent means every node. */
  nodeSelector?: Record<string, string>;
  /** Platforms to mirror for this variant (`os/arch[/variant]`), overriding `sync.platforms`. */
  platforms?: string[];
}

export interface SyncSpec {
  /** Go duration between upstream checks; default `10m`, at least `30s`. */
  interval?: string;
  /** `["auto"]` (default): the platforms of the nodes each variant selects; or `os/arch[/variant]` items. */
  platforms?: string[];
  /** Mirror every platform of an index and keep its digest (default false). */
  allPlatforms?: boolean;
  /** Mirror referrers (signatures, SBOMs) too (default false). */
  referrers?: boolean;
}

export interface PrewarmSpec {
  enabled?: boolean;
  /** Nodes that must hold the image for Prewarmed=True; unset means every matching node. */
  minReadyNodes?: number;
  maxConcurrentNodes?: number;
  /** Hold pods that use the image (scheduling gate) until their node is warm. */
  holdPods?: boolean;
  /** Go duration after which held pods are released anyway; default `15m`. */
  holdTimeout?: string;
  /** Order among ModelImages competing for the same node's pulls: higher first. */
  priority?: number;
}

export interface ModelImageSpec {
  /** Shorthand for one variant named `default` without a node selector; exclusive with `variants`. */
  image?: string;
  variants?: ModelImageVariant[];
  /** `kubernetes.io/dockerconfigjson` Secrets in the ModelImage's namespace. */
  pullSecrets?: LocalObjectReference[];
  sync?: SyncSpec;
  /** Stop checking upstream and pre-warming; what is cached stays. */
  suspend?: boolean;
  prewarm?: PrewarmSpec;
}

export interface NodeCounts {
  desired: number;
  ready: number;
  pulling: number;
  failed: number;
  /** Matching nodes that cannot take the image (platform not mirrored, disk pressure). */
  skipped: number;
}

export interface VariantStatus {
  name: string;
  /** The normalised source reference (`docker.io/library/x:1`). */
  image?: string;
  /** Where kubelet can pull it from the cache registry. */
  cacheImage?: string;
  sourceDigest?: string;
  cacheDigest?: string;
  platforms?: string[];
  sizeBytes?: number;
  syncedAt?: string;
  lastCheckedAt?: string;
  /** When upstream was first seen at a digest the cache does not have yet; unset when in sync. */
  upstreamChangedAt?: string;
  nodes?: NodeCounts;
}

export interface ModelImageStatus {
  observedGeneration?: number;
  conditions?: Condition[];
  variants?: VariantStatus[];
  /** DIGEST column: `sha256:0f973b6045` for one variant, `N digests` for several. */
  digest?: string;
  /** NODES column: `ready/desired` summed over the variants. */
  nodes?: string;
  /** LAG column: since when the cache lags upstream; unset when in sync. */
  lagSince?: string;
}

export interface ModelImage extends KubeObject {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: ObjectMeta;
  spec: ModelImageSpec;
  status?: ModelImageStatus;
}

export type DefaultedSyncSpec = Required<SyncSpec>;
export type DefaultedPrewarmSpec = Required<Omit<PrewarmSpec, "minReadyNodes">> &
  Pick<PrewarmSpec, "minReadyNodes">;
export interface DefaultedModelImageSpec extends ModelImageSpec {
  pullSecrets: LocalObjectReference[];
  sync: DefaultedSyncSpec;
  suspend: boolean;
  prewarm: DefaultedPrewarmSpec;
}

/** The variants a spec declares; the `image` shorthand is one variant named `default`. */
export function variantsOf(spec: ModelImageSpec): ModelImageVariant[] {
  if (spec.variants && spec.variants.length > 0) return spec.variants;
  if (spec.image !== undefined) return [{ name: DEFAULT_VARIANT_NAME, image: spec.image }];
  return [];
}

/** The CRD's defaults, for objects that did not pass through the API server. Does not mutate. */
export function withDefaults(spec: ModelImageSpec): DefaultedModelImageSpec {
  const sync = spec.sync ?? {};
  const prewarm = spec.prewarm ?? {};
  return {
    ...spec,
    pullSecrets: spec.pullSecrets ?? [],
    sync: {
      interval: sync.interval ?? DEFAULT_SYNC_INTERVAL,
      platforms: sync.platforms ?? [AUTO_PLATFORMS],
      allPlatforms: sync.allPlatforms ?? false,
      referrers: sync.referrers ?? false,
    },
    suspend: spec.suspend ?? false,
    prewarm: {
      enabled: prewarm.enabled ?? true,
      ...(prewarm.minReadyNodes !== undefined ? { minReadyNodes: prewarm.minReadyNodes } : {}),
      maxConcurrentNodes: prewarm.maxConcurrentNodes ?? DEFAULT_MAX_CONCURRENT_NODES,
      holdPods: prewarm.holdPods ?? false,
      holdTimeout: prewarm.holdTimeout ?? DEFAULT_HOLD_TIMEOUT,
      priority: prewarm.priority ?? 0,
    },
  };
}

/** Milliseconds between upstream checks; the default when unset, never less than the 30 s minimum. */
export function syncIntervalMs(spec: ModelImageSpec): number {
  const interval = parseDuration(spec.sync?.interval ?? DEFAULT_SYNC_INTERVAL);
  return Math.max(interval, parseDuration(MIN_SYNC_INTERVAL));
}

/**
 * Milliseconds a held pod waits for its node to be warm. A value past Go's limit (which the
 * ModelImage reports as Stalled/InvalidSpec) gives the default: a pod is never held without bound.
 */
export function holdTimeoutMs(spec: ModelImageSpec): number {
  const holdTimeout = spec.prewarm?.holdTimeout ?? DEFAULT_HOLD_TIMEOUT;
  return parseDuration(parsesAsDuration(holdTimeout) ? holdTimeout : DEFAULT_HOLD_TIMEOUT);
}

/** `sync.platforms` (or a variant's own list) resolved: undefined means "auto". */
export function explicitPlatforms(spec: ModelImageSpec, variant: ModelImageVariant): string[] | undefined {
  if (variant.platforms && variant.platforms.length > 0) return variant.platforms;
  const platforms = spec.sync?.platforms ?? [AUTO_PLATFORMS];
  return platforms.length === 1 && platforms[0] === AUTO_PLATFORMS ? undefined : platforms;
}

/** The form status reports: `alpine` → `docker.io/library/alpine:latest`. Throws InvalidReference. */
export function normaliseImage(image: string): string {
  return formatReference(parseReference(image));
}

/** `sha256:0f973b6045…` → `sha256:0f973b6045` (algorithm and 10 hex digits, like the DIGEST column). */
export function shortDigest(digest: string): string {
  const colon = digest.indexOf(":");
  return colon < 0 ? digest : digest.slice(0, colon + 11);
}

/** The DIGEST and NODES column values for a set of variant statuses. */
export function statusColumns(variants: readonly VariantStatus[]): { digest?: string; nodes?: string } {
  const digests = new Set(variants.map((v) => v.cacheDigest).filter((d): d is string => !!d));
  const columns: { digest?: string; nodes?: string } = {};
  if (digests.size === 1) columns.digest = shortDigest([...digests][0]);
  else if (digests.size > 1) columns.digest = `${digests.size} digests`;
  const counted = variants.filter((v) => v.nodes);
  if (counted.length > 0) {
    const ready = counted.reduce((sum, v) => sum + (v.nodes?.ready ?? 0), 0);
    const desired = counted.reduce((sum, v) => sum + (v.nodes?.desired ?? 0), 0);
    columns.nodes = `${ready}/${desired}`;
  }
  return columns;
}

function parsesAsDuration(input: string): boolean {
  try {
    parseDuration(input);
    return true;
  } catch {
    return false;
  }
}

/**
 * The durations the controller must turn into timers, checked: a value the pattern accepts can
 * still be past Go's limit (`99999999999h`), and the reconciler would fail on it every pass.
 * The problems name the field; the reconciler reports them as Stalled/InvalidSpec.
 */
export function durationProblems(spec: ModelImageSpec): FieldProblem[] {
  const fields: [string, string | undefined][] = [
    ["spec.sync.interval", spec.sync?.interval],
    ["spec.prewarm.holdTimeout", spec.prewarm?.holdTimeout],
  ];
  const problems: FieldProblem[] = [];
  for (const [field, value] of fields) {
    if (value === undefined) continue;
    try {
      parseDuration(value);
    } catch (err) {
      problems.push({ field, message: (err as Error).message });
    }
  }
  return problems;
}

/**
 * Image references whose registry port no TCP connection can use (`host:99999`): the reference
 * syntax allows any digits, and a dial would fail the same way forever, so it is a spec error,
 * not an unavailable upstream.
 */
export function portProblems(spec: ModelImageSpec): FieldProblem[] {
  const problems: FieldProblem[] = [];
  for (const [field, image] of imagesOf(spec)) {
    const host = image.split("/")[0];
    if (!image.includes("/")) continue;
    const port = /^(?:\[[0-9a-fA-F:]+\]|[^:]+):([0-9]+)$/.exec(host)?.[1];
    if (port === undefined) continue;
    const value = Number(port);
    if (value < 1 || value > 65535) {
      problems.push({ field, message: `registry port ${port} in "${image}" is not between 1 and 65535` });
    }
  }
  return problems;
}

function imagesOf(spec: ModelImageSpec): [string, string][] {
  const images: [string, string][] = [];
  if (spec.image !== undefined) images.push(["spec.image", spec.image]);
  (spec.variants ?? []).forEach((variant, i) => {
    images.push([`spec.variants[${i}].image`, variant.image]);
  });
  return images;
}

/**
 * Images that name the Stowage cache itself (`cacheHosts`: its registry host and the other names
 * nodes or the front reach it by). The controller reads the cache with its own credentials, so a
 * ModelImage naming `CACHE/<host>_<port>/private/model:v1` would copy another tenant's private
 * image without that tenant's pull secret: refused, whatever the namespace.
 */
export function cacheReferenceProblems(spec: ModelImageSpec, cacheHosts: string[]): FieldProblem[] {
  const refused = new Set(cacheHosts.map((host) => host.toLowerCase()));
  const problems: FieldProblem[] = [];
  for (const [field, image] of imagesOf(spec)) {
    if (!image.includes("/")) continue;
    const host = image.split("/")[0].toLowerCase();
    if (refused.has(host)) {
      problems.push({
        field,
        message: `"${image}" names the Stowage cache itself; name the upstream image instead`,
      });
    }
  }
  return problems;
}

/** What the reconciler cannot honour although the API server accepted it (reported as InvalidSpec). */
export function unhonourableSpecProblems(spec: ModelImageSpec): FieldProblem[] {
  return [...portProblems(spec), ...durationProblems(spec)];
}

/** A problem with one field, named by its path as the API server would name it. */
export interface FieldProblem {
  field: string;
  message: string;
}

/**
 * The CRD's checks, for specs that did not pass through the API server (or to explain a Stalled
 * condition). Returns nothing for a spec the CRD accepts; unknown fields are not looked for.
 */
export function validateModelImageSpec(spec: ModelImageSpec): FieldProblem[] {
  const problems: FieldProblem[] = [];
  const problem = (field: string, message: string) => problems.push({ field, message });
  if ((spec.image !== undefined) === (spec.variants !== undefined)) {
    problem("spec", "exactly one of spec.image or spec.variants must be set");
  }
  if (spec.image !== undefined) checkImage(spec.image, "spec.image", problem);
  for (const p of portProblems(spec)) problem(p.field, p.message);
  if (spec.variants !== undefined) {
    if (spec.variants.length < 1) problem("spec.variants", "must have at least 1 item");
    if (spec.variants.length > MAX_VARIANTS)
      problem("spec.variants", `must have at most ${MAX_VARIANTS} items`);
    const seen = new Set<string>();
    spec.variants.forEach((variant, i) => {
      const at = `spec.variants[${i}]`;
      if (seen.has(variant.name)) problem(at, `duplicate variant name "${variant.name}"`);
      seen.add(variant.name);
      if (!matches(DNS_LABEL_PATTERN, variant.name) || variant.name.length > 63) {
        problem(`${at}.name`, "must be a DNS label: lowercase a-z, 0-9 and '-', at most 63 characters");
      }
      checkImage(variant.image, `${at}.image`, problem);
      for (const [key, value] of Object.entries(variant.nodeSelector ?? {})) {
        if (!validLabelKey(key)) problem(`${at}.nodeSelector`, `label key "${key}" is not a qualified name`);
        if (value.length > 63 || !matches(LABEL_VALUE_PATTERN, value)) {
          // named as kube-apiserver names a map entry that fails its schema: a field, not [key]
          problem(`${at}.nodeSelector.${key}`, `"${value}" is not a valid label value`);
        }
      }
      (variant.platforms ?? []).forEach((platform, j) => {
        if (!matches(PLATFORM_PATTERN, platform)) {
          problem(`${at}.platforms[${j}]`, `"${platform}" is not os/arch[/variant]`);
        }
      });
    });
  }
  (spec.pullSecrets ?? []).forEach((secret, i) => {
    if (secret.name.length > 253 || !matches(DNS_SUBDOMAIN_PATTERN, secret.name)) {
      problem(`spec.pullSecrets[${i}].name`, `"${secret.name}" is not a valid Secret name`);
    }
  });
  if ((spec.pullSecrets?.length ?? 0) > MAX_PULL_SECRETS) {
    problem("spec.pullSecrets", `must have at most ${MAX_PULL_SECRETS} items`);
  }
  const sync = spec.sync ?? {};
  if (sync.interval !== undefined) {
    if (!matches(DURATION_PATTERN, sync.interval)) {
      problem("spec.sync.interval", `"${sync.interval}" is not a duration like 10m or 1h30m`);
    } else if (!parsesAsDuration(sync.interval)) {
      problem("spec.sync.interval", `"${sync.interval}" is too long (the maximum is about 2562047h)`);
    } else if (parseDuration(sync.interval) < parseDuration(MIN_SYNC_INTERVAL)) {
      problem("spec.sync.interval", `must be at least ${MIN_SYNC_INTERVAL}`);
    }
    const tooLong = durationBoundProblem(sync.interval);
    if (tooLong) problem("spec.sync.interval", tooLong);
  }
  if (sync.platforms !== undefined) {
    sync.platforms.forEach((platform, j) => {
      if (!matches(SYNC_PLATFORM_PATTERN, platform)) {
        problem(`spec.sync.platforms[${j}]`, `"${platform}" is not auto or os/arch[/variant]`);
      }
    });
    const onlyAuto = sync.platforms.length === 1 && sync.platforms[0] === AUTO_PLATFORMS;
    if (!onlyAuto && sync.platforms.includes(AUTO_PLATFORMS)) {
      problem("spec.sync.platforms", `either ["auto"] alone or a list of os/arch[/variant] platforms`);
    }
    if (sync.allPlatforms && !onlyAuto) {
      problem(
        "spec.sync.allPlatforms",
        `allPlatforms copies every platform of the index; leave platforms as ["auto"]`,
      );
    }
  }
  const prewarm = spec.prewarm ?? {};
  if (prewarm.minReadyNodes !== undefined && prewarm.minReadyNodes < 0) {
    problem("spec.prewarm.minReadyNodes", "should be greater than or equal to 0");
  }
  const concurrency = prewarm.maxConcurrentNodes;
  if (concurrency !== undefined && (concurrency < 1 || concurrency > MAX_CONCURRENT_NODES)) {
    problem("spec.prewarm.maxConcurrentNodes", `must be between 1 and ${MAX_CONCURRENT_NODES}`);
  }
  if (prewarm.holdTimeout !== undefined && !matches(DURATION_PATTERN, prewarm.holdTimeout)) {
    problem("spec.prewarm.holdTimeout", `"${prewarm.holdTimeout}" is not a duration like 15m`);
  } else if (prewarm.holdTimeout !== undefined && !parsesAsDuration(prewarm.holdTimeout)) {
    problem(
      "spec.prewarm.holdTimeout",
      `"${prewarm.holdTimeout}" is too long (the maximum is about 2562047h)`,
    );
  }
  const holdTooLong =
    prewarm.holdTimeout === undefined ? undefined : durationBoundProblem(prewarm.holdTimeout);
  if (holdTooLong) problem("spec.prewarm.holdTimeout", holdTooLong);
  if (prewarm.minReadyNodes !== undefined && prewarm.minReadyNodes > MAX_MIN_READY_NODES) {
    problem("spec.prewarm.minReadyNodes", `should be less than or equal to ${MAX_MIN_READY_NODES}`);
  }
  if (
    prewarm.priority !== undefined &&
    (!Number.isInteger(prewarm.priority) ||
      prewarm.priority < MIN_PRIORITY ||
      prewarm.priority > MAX_PRIORITY)
  ) {
    problem("spec.prewarm.priority", `must be a 32-bit integer (${MIN_PRIORITY} to ${MAX_PRIORITY})`);
  }
  return problems;
}

/** The CRD's upper bound on a duration field, as its CEL rule says it; undefined when within it. */
function durationBoundProblem(value: string): string | undefined {
  if (!matches(DURATION_PATTERN, value)) return undefined; // the pattern's own problem
  if (
    !matches(BOUNDED_DURATION_PATTERN, value) ||
    !parsesAsDuration(value) ||
    parseDuration(value) > parseDuration(MAX_DURATION)
  )
    return `must be at most ${MAX_DURATION} (one year), written with at most four numbers of at most five digits`;
  return undefined;
}

function checkImage(image: string, field: string, problem: (field: string, message: string) => void): void {
  if (image.length > MAX_IMAGE_LENGTH || !matches(IMAGE_REFERENCE_PATTERN, image)) {
    problem(field, `"${image}" is not an image reference like registry/repository:tag or @sha256:<64 hex>`);
  }
}

function validLabelKey(key: string): boolean {
  return key.length <= 317 && key.indexOf("/") <= 253 && matches(LABEL_KEY_PATTERN, key);
}

const compiled = new Map<string, RegExp>();
function matches(pattern: string, value: string): boolean {
  let regexp = compiled.get(pattern);
  if (!regexp) {
    regexp = new RegExp(pattern);
    compiled.set(pattern, regexp);
  }
  return regexp.test(value);
}
