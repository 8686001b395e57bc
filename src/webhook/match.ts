/**
 * Which ModelImages a pod waits for: pure decisions from a pod, its namespace's labels and the
 * ModelImages of that namespace (read from an informer cache by the caller).
 */
import { HOLD_PODS_NAMESPACE_LABEL, MODEL_IMAGE_ANNOTATION, PREWARM_SCHEDULING_GATE } from "../api/labels.ts";
import { ConditionTypes, type ModelImage, variantsOf } from "../api/modelImage.ts";
import { isConditionTrue } from "../kube/conditions.ts";
import { type ImageReference, parseReference } from "../oci/reference.ts";

/** The parts of a Pod the webhook reads. */
export interface PodSpecView {
  nodeName?: string;
  containers?: { name?: string; image?: string }[];
  initContainers?: { name?: string; image?: string }[];
  ephemeralContainers?: { name?: string; image?: string }[];
  volumes?: { name?: string; image?: { reference?: string } }[];
  schedulingGates?: { name: string }[];
  affinity?: Record<string, unknown>;
}

export interface PodView {
  metadata?: {
    name?: string;
    generateName?: string;
    namespace?: string;
    annotations?: Record<string, string>;
  };
  spec?: PodSpecView;
}

export interface HoldMatch {
  modelImage: ModelImage;
  /** Why this ModelImage matched: `image docker.io/x:1 (container "serve")` or `annotation`. */
  via: string;
  /** True when some node already holds the image warm (preferred affinity is worth adding). */
  warmSomewhere: boolean;
}

export type HoldDecision = { hold: false; why: string } | { hold: true; matches: HoldMatch[] };

export interface HoldContext {
  /** The namespace the pod is created in (from the AdmissionReview when the pod has none). */
  namespace: string;
  namespaceLabels: Record<string, string> | undefined;
  /** The controller's own namespace: never gated. */
  controllerNamespace?: string;
  modelImages: readonly ModelImage[];
  /**
   * The single-platform digests the pre-warm planner assigned to nodes for a ModelImage's variant
   * (NodeCache spec images requested by it): a pod pinned to the child manifest of its platform,
   * rather than to the index, names one of these. Children are copied byte-exact, so the digest
   * is the upstream's and the cache's alike.
   */
  platformDigests?: (namespace: string, name: string, variant: string) => ReadonlySet<string> | undefined;
}

interface PodImage {
  ref: ImageReference;
  where: string;
}

function podImages(spec: PodSpecView): PodImage[] {
  const out: PodImage[] = [];
  const add = (image: string | undefined, where: string) => {
    if (!image) return;
    try {
      out.push({ ref: parseReference(image), where });
    } catch {
      // An unparseable image cannot match a ModelImage; kubelet reports it, not us.
    }
  };
  for (const c of spec.containers ?? []) add(c.image, `container "${c.name ?? ""}"`);
  for (const c of spec.initContainers ?? []) add(c.image, `init container "${c.name ?? ""}"`);
  for (const v of spec.volumes ?? []) add(v.image?.reference, `image volume "${v.name ?? ""}"`);
  return out;
}

function repositoryOf(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}`;
}

function tryParse(image: string | undefined): ImageReference | undefined {
  if (!image) return undefined;
  try {
    return parseReference(image);
  } catch {
    return undefined;
  }
}

/**
 * True when the pod image names the variant: same normalised repository (the source or the cache
 * copy) and the same tag, or a digest the variant is known by (its reference, the source or cache
 * digest in status, or one of its per-platform child digests).
 */
export function imageMatchesVariant(
  podRef: ImageReference,
  variantImage: string,
  status: { image?: string; cacheImage?: string; sourceDigest?: string; cacheDigest?: string } | undefined,
  platformDigests?: ReadonlySet<string>,
): boolean {
  const refs = [tryParse(variantImage), tryParse(status?.image), tryParse(status?.cacheImage)].filter(
    (r): r is ImageReference => r !== undefined,
  );
  const repo = repositoryOf(podRef);
  const sameRepo = refs.filter((r) => repositoryOf(r) === repo);
  if (sameRepo.length === 0) return false;
  if (podRef.digest) {
    const digests = new Set<string>();
    for (const r of sameRepo) if (r.digest) digests.add(r.digest);
    if (status?.sourceDigest) digests.add(status.sourceDigest);
    if (status?.cacheDigest) digests.add(status.cacheDigest);
    return digests.has(podRef.digest) || platformDigests?.has(podRef.digest) === true;
  }
  return sameRepo.some((r) => r.tag !== undefined && r.tag === podRef.tag);
}

export function isPrewarmed(mi: ModelImage): boolean {
  return isConditionTrue(mi.status?.conditions, ConditionTypes.Prewarmed);
}

function holdsPods(mi: ModelImage): boolean {
  return mi.spec?.prewarm?.holdPods === true && mi.metadata?.deletionTimestamp === undefined;
}

function warmSomewhere(mi: ModelImage): boolean {
  return (mi.status?.variants ?? []).some((v) => (v.nodes?.ready ?? 0) > 0);
}

/** Whether (and for which ModelImages) a pod being created should wait for pre-warming. */
export function decideHold(pod: PodView, ctx: HoldContext): HoldDecision {
  const spec = pod.spec ?? {};
  if (spec.nodeName) return { hold: false, why: "spec.nodeName is set: the pod bypasses the scheduler" };
  if (ctx.controllerNamespace && ctx.namespace === ctx.controllerNamespace)
    return { hold: false, why: "the controller's own namespace is never held" };
  if (ctx.namespaceLabels?.[HOLD_PODS_NAMESPACE_LABEL] === "disabled")
    return { hold: false, why: `namespace is labelled ${HOLD_PODS_NAMESPACE_LABEL}=disabled` };

  const images = podImages(spec);
  const named = pod.metadata?.annotations?.[MODEL_IMAGE_ANNOTATION];
  const matches: HoldMatch[] = [];
  let skippedReady = false;
  for (const mi of ctx.modelImages) {
    if (mi.metadata?.namespace !== undefined && mi.metadata.namespace !== ctx.namespace) continue;
    let via: string | undefined;
    if (named !== undefined && named === mi.metadata?.name) via = `annotation ${MODEL_IMAGE_ANNOTATION}`;
    if (!via) {
      const statusByName = new Map((mi.status?.variants ?? []).map((v) => [v.name, v]));
      for (const variant of variantsOf(mi.spec ?? {})) {
        const children = ctx.platformDigests?.(
          mi.metadata?.namespace ?? ctx.namespace,
          mi.metadata?.name ?? "",
          variant.name,
        );
        const hit = images.find((img) =>
          imageMatchesVariant(img.ref, variant.image, statusByName.get(variant.name), children),
        );
        if (hit) {
          via = `${hit.where} uses variant "${variant.name}"`;
          break;
        }
      }
    }
    if (!via) continue;
    if (!holdsPods(mi)) continue;
    if (isPrewarmed(mi)) {
      skippedReady = true;
      continue;
    }
    matches.push({ modelImage: mi, via, warmSomewhere: warmSomewhere(mi) });
  }
  if (matches.length === 0)
    return {
      hold: false,
      why: skippedReady ? "its ModelImages are already prewarmed" : "no ModelImage that holds pods matches",
    };
  return { hold: true, matches };
}

/** True when the pod already carries the prewarm gate. */
export function hasPrewarmGate(spec: PodSpecView | undefined): boolean {
  return (spec?.schedulingGates ?? []).some((g) => g.name === PREWARM_SCHEDULING_GATE);
}
