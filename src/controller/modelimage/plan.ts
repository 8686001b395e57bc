/**
 * Pure decisions of the ModelImage reconciler: which platforms a variant wants, where it goes
 * in the cache, whether what the cache holds already answers the upstream, when to look again.
 * Nothing here talks to a registry or the API.
 */
import {
  explicitPlatforms,
  type ModelImage,
  type ModelImageVariant,
  type VariantStatus,
  variantsOf,
} from "../../api/modelImage.ts";
import type { KubeObject } from "../../kube/client.ts";
import { formatPlatform, matchesPlatform, normalizePlatform, parsePlatform } from "../../oci/platforms.ts";
import {
  cacheRepository,
  formatReference,
  type ImageReference,
  parseReference,
} from "../../oci/reference.ts";
import type { Platform } from "../../oci/types.ts";

export interface Node extends KubeObject {
  spec?: { unschedulable?: boolean };
  status?: {
    conditions?: { type: string; status: string }[];
    nodeInfo?: { operatingSystem?: string; architecture?: string };
  };
}

/** What to mirror of a variant's (possibly multi-platform) image. */
export type PlatformChoice =
  /** Every platform, upstream index digest kept. `noMatchingNodes`: chosen because no Ready node matched. */
  | { kind: "all"; noMatchingNodes: boolean }
  /** Only these platforms (a filtered index gets a new digest). */
  | { kind: "list"; platforms: Platform[]; fromNodes: boolean };

export function isNodeReady(node: Node): boolean {
  return node.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") ?? false;
}

/** An empty or absent selector selects every node, as a Pod's nodeSelector does. */
export function selectorMatches(
  selector: Record<string, string> | undefined,
  labels: Record<string, string> | undefined,
): boolean {
  // for...in rather than Object.entries: called for every node on every sync and plan pass, and
  // entries() allocates an array per key.
  for (const key in selector) {
    if (Object.hasOwn(selector, key) && labels?.[key] !== selector[key]) return false;
  }
  return true;
}

/**
 * The platform a node runs, from its labels (kubernetes.io/os, kubernetes.io/arch) or nodeInfo.
 * Kubernetes does not publish the ARM variant; 32-bit arm nodes are taken as v7 (containerd's
 * default) and arm64 as v8, which is what images for them declare.
 */
export function nodePlatform(node: Node): Platform | undefined {
  const labels = node.metadata?.labels ?? {};
  const os = labels["kubernetes.io/os"] ?? node.status?.nodeInfo?.operatingSystem;
  const architecture = labels["kubernetes.io/arch"] ?? node.status?.nodeInfo?.architecture;
  if (!os || !architecture) return undefined;
  const platform = normalizePlatform({ os, architecture });
  if (platform.architecture === "arm" && !platform.variant) platform.variant = "v7";
  return platform;
}

/**
 * The platforms a variant should be mirrored for: every one with `sync.allPlatforms`, else the
 * variant's or the ModelImage's explicit list, else ("auto") those of the Ready nodes its
 * selector matches; all of them when no node matches yet.
 */
export function choosePlatforms(
  mi: ModelImage,
  variant: ModelImageVariant,
  nodes: readonly Node[],
): PlatformChoice {
  if (mi.spec.sync?.allPlatforms) return { kind: "all", noMatchingNodes: false };
  const explicit = explicitPlatforms(mi.spec, variant);
  if (explicit)
    return { kind: "list", platforms: uniquePlatforms(explicit.map(parsePlatform)), fromNodes: false };
  const platforms = readyNodePlatforms(nodes, variant.nodeSelector);
  if (platforms.length === 0) return { kind: "all", noMatchingNodes: true };
  return { kind: "list", platforms, fromNodes: true };
}

/**
 * The distinct platforms of the Ready nodes a selector matches, remembered per node list: the
 * variants sharing an image are looked at on every sync (a hundred ModelImages over one image,
 * 500 nodes: 50,000 node checks a sync), and they share a handful of selectors.
 */
const platformsByNodeList = new WeakMap<readonly Node[], Map<string, Platform[]>>();

function readyNodePlatforms(
  nodes: readonly Node[],
  selector: Record<string, string> | undefined,
): Platform[] {
  let bySelector = platformsByNodeList.get(nodes);
  if (!bySelector) {
    bySelector = new Map();
    platformsByNodeList.set(nodes, bySelector);
  }
  const key = JSON.stringify(Object.entries(selector ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  let platforms = bySelector.get(key);
  if (!platforms) {
    const found: Platform[] = [];
    for (const node of nodes) {
      if (!isNodeReady(node) || !selectorMatches(selector, node.metadata?.labels)) continue;
      const platform = nodePlatform(node);
      if (platform) found.push(platform);
    }
    platforms = uniquePlatforms(found);
    bySelector.set(key, platforms);
  }
  return [...platforms];
}

/**
 * The platforms the cache tag of `variant`'s image must hold. Every variant of every ModelImage
 * that mirrors the same upstream reference lands on the same cache tag, so the tag carries the
 * union of what they all want (any "all" wins); each pushing only its own platforms would
 * overwrite the others' filtered index on every sync. `noMatchingNodes` stays this variant's own.
 */
export function choosePlatformsForImage(
  mi: ModelImage,
  variant: ModelImageVariant,
  nodes: readonly Node[],
  modelImages: readonly ModelImage[],
): PlatformChoice {
  const own = choosePlatforms(mi, variant, nodes);
  const image = sameImageKey(variant.image);
  if (image === undefined) return own;
  const sameObject = (m: ModelImage) =>
    m.metadata?.namespace === mi.metadata?.namespace && m.metadata?.name === mi.metadata?.name;
  // This object as given (the informer's copy may be older), then every other live ModelImage.
  // Only the sharers are collected: every sync looks at every ModelImage, and a pair per
  // variant of each was garbage by the million while 2,000 ModelImages synced.
  const sharing: [ModelImage, ModelImageVariant][] = [];
  for (const v of variantsOf(mi.spec))
    if (v.name !== variant.name && sameImageKey(v.image) === image) sharing.push([mi, v]);
  for (const m of modelImages) {
    if (sameObject(m) || m.metadata?.deletionTimestamp) continue;
    for (const v of variantsOf(m.spec)) if (sameImageKey(v.image) === image) sharing.push([m, v]);
  }
  let union: Platform[] = own.kind === "list" ? [...own.platforms] : [];
  let all = own.kind === "all";
  for (const [owner, peerVariant] of sharing) {
    let wanted: PlatformChoice;
    try {
      wanted = choosePlatforms(owner, peerVariant, nodes);
    } catch {
      continue; // that ModelImage's own reconcile reports its bad platforms
    }
    if (wanted.kind === "all") all = true;
    else union = union.concat(wanted.platforms);
  }
  if (all) return { kind: "all", noMatchingNodes: own.kind === "all" && own.noMatchingNodes };
  return { kind: "list", platforms: uniquePlatforms(union), fromNodes: own.kind === "list" && own.fromNodes };
}

/** Upstream references that mirror to the same cache tag compare equal; unparsable ones never do. */
function sameImageKey(image: string): string | undefined {
  // Every sync compares its image with every live ModelImage's: parse each reference once.
  if (imageKeys.has(image)) return imageKeys.get(image);
  let key: string | undefined;
  try {
    key = formatReference(parseReference(image));
  } catch {
    key = undefined;
  }
  if (imageKeys.size >= IMAGE_KEYS_MAX) imageKeys.clear();
  imageKeys.set(image, key);
  return key;
}

/** Parsed references by text; cleared whole when full (a cluster has far fewer distinct images). */
const imageKeys = new Map<string, string | undefined>();
const IMAGE_KEYS_MAX = 20_000;

function uniquePlatforms(platforms: Platform[]): Platform[] {
  const byName = new Map(platforms.map((p) => [formatPlatform(p), p]));
  return [...byName.keys()].sort().map((name) => byName.get(name)!);
}

/** A stable string for a platform choice: part of the single-flight key. */
export function platformKey(choice: PlatformChoice): string {
  return choice.kind === "all" ? "*" : choice.platforms.map(formatPlatform).join(",");
}

/**
 * Where a source image lives in the cache (the cache layout, see `cacheRepository`): repository
 * `cacheRepository(source)`, same tag; a digest-only source is pushed by (its resulting) digest,
 * so the target names no reference.
 */
export function cacheTarget(source: ImageReference, cacheRegistry: string): ImageReference {
  const target: ImageReference = { registry: cacheRegistry, repository: cacheRepository(source) };
  if (source.tag !== undefined) target.tag = source.tag;
  return target;
}

/** The cache reference as kubelet-facing text, with the digest once known. */
export function cacheImageName(target: ImageReference, cacheDigest: string | undefined): string {
  if (target.tag === undefined && cacheDigest) return formatReference({ ...target, digest: cacheDigest });
  return formatReference(target);
}

/**
 * Does the cache content recorded in `previous` answer an upstream now at `upstreamDigest`
 * under this platform choice? (The cache HEAD must still show `previous.cacheDigest`; the
 * caller checks that.) Extra platforms in the cache are fine: only missing ones need a copy.
 */
export function previousSyncAnswers(
  previous: VariantStatus | undefined,
  upstreamDigest: string,
  choice: PlatformChoice,
): boolean {
  if (!previous?.cacheDigest || previous.sourceDigest !== upstreamDigest) return false;
  if (choice.kind === "all") return previous.cacheDigest === upstreamDigest;
  const have = (previous.platforms ?? []).map((p) => {
    try {
      return parsePlatform(p);
    } catch {
      return undefined;
    }
  });
  return choice.platforms.every((wanted) =>
    have.some((candidate) => candidate && matchesPlatform(wanted, candidate)),
  );
}

/** The next periodic check: the interval plus up to `jitter` of it, so many objects spread out. */
export function nextSyncDelay(
  intervalMs: number,
  jitter: number,
  random: () => number = Math.random,
): number {
  const spread = Math.min(Math.max(jitter, 0), 1);
  return Math.round(intervalMs * (1 + spread * random()));
}
