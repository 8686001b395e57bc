/**
 * The JSON patch (RFC 6902) the webhook answers with: the prewarm scheduling gate, annotations
 * saying why, and a preferred node affinity towards warm nodes merged into what the pod has.
 */
import { PREWARM_SCHEDULING_GATE, WARM_LABEL_VALUE, warmNodeLabel } from "../api/labels.ts";
import type { JsonPatchOp } from "../kube/client.ts";
import { type HoldMatch, hasPrewarmGate, type PodView } from "./match.ts";

/** Pod annotation: the ModelImages (`ns/name`, comma-separated) the gate waits for. */
export const HELD_FOR_ANNOTATION = "stowage.dev/held-for";
/** Pod annotation: a human-readable reason for the gate. */
export const HELD_REASON_ANNOTATION = "stowage.dev/held-reason";
/** Weight of the preferred node affinity towards nodes that hold the image warm. */
export const WARM_AFFINITY_WEIGHT = 50;

interface PreferredTerm {
  weight: number;
  preference: { matchExpressions?: { key: string; operator: string; values?: string[] }[] };
}

/** `a/b~c` → `a~1b~0c` (JSON pointer escaping of one path segment). */
export function pointerSegment(key: string): string {
  return key.replaceAll("~", "~0").replaceAll("/", "~1");
}

export function heldFor(matches: readonly HoldMatch[]): string {
  return matches.map((m) => `${m.modelImage.metadata?.namespace}/${m.modelImage.metadata?.name}`).join(",");
}

/** The `ns/name` keys a held pod's annotation lists (empty when it has none). */
export function parseHeldFor(annotations: Record<string, string> | undefined): string[] {
  const value = annotations?.[HELD_FOR_ANNOTATION];
  if (!value) return [];
  return value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.includes("/"));
}

function warmTerm(match: HoldMatch): PreferredTerm {
  const meta = match.modelImage.metadata ?? {};
  return {
    weight: WARM_AFFINITY_WEIGHT,
    preference: {
      matchExpressions: [
        {
          key: warmNodeLabel(meta.namespace ?? "", meta.name ?? ""),
          operator: "In",
          values: [WARM_LABEL_VALUE],
        },
      ],
    },
  };
}

function sameTerm(a: unknown, b: PreferredTerm): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Operations that gate `pod`, annotate why, and prefer warm nodes; never removes what the user set. */
export function holdPatch(pod: PodView, matches: readonly HoldMatch[]): JsonPatchOp[] {
  const ops: JsonPatchOp[] = [];
  const spec = pod.spec ?? {};
  if (!hasPrewarmGate(spec)) {
    if (Array.isArray(spec.schedulingGates))
      ops.push({ op: "add", path: "/spec/schedulingGates/-", value: { name: PREWARM_SCHEDULING_GATE } });
    else ops.push({ op: "add", path: "/spec/schedulingGates", value: [{ name: PREWARM_SCHEDULING_GATE }] });
  }

  const annotations: Record<string, string> = {
    [HELD_FOR_ANNOTATION]: heldFor(matches),
    [HELD_REASON_ANNOTATION]: matches
      .map(
        (m) =>
          `${m.modelImage.metadata?.namespace}/${m.modelImage.metadata?.name} is not prewarmed yet (${m.via})`,
      )
      .join("; "),
  };
  if (pod.metadata?.annotations) {
    for (const [key, value] of Object.entries(annotations))
      ops.push({ op: "add", path: `/metadata/annotations/${pointerSegment(key)}`, value });
  } else {
    ops.push({ op: "add", path: "/metadata/annotations", value: annotations });
  }

  const terms = matches.filter((m) => m.warmSomewhere).map(warmTerm);
  if (terms.length > 0) ops.push(...affinityOps(spec.affinity, terms));
  return ops;
}

function affinityOps(affinity: Record<string, unknown> | undefined, terms: PreferredTerm[]): JsonPatchOp[] {
  const nodeAffinity = affinity?.nodeAffinity as Record<string, unknown> | undefined;
  const preferred = nodeAffinity?.preferredDuringSchedulingIgnoredDuringExecution;
  if (!affinity)
    return [
      {
        op: "add",
        path: "/spec/affinity",
        value: { nodeAffinity: { preferredDuringSchedulingIgnoredDuringExecution: terms } },
      },
    ];
  if (!nodeAffinity)
    return [
      {
        op: "add",
        path: "/spec/affinity/nodeAffinity",
        value: { preferredDuringSchedulingIgnoredDuringExecution: terms },
      },
    ];
  if (!Array.isArray(preferred))
    return [
      {
        op: "add",
        path: "/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution",
        value: terms,
      },
    ];
  return terms
    .filter((term) => !preferred.some((existing) => sameTerm(existing, term)))
    .map((term) => ({
      op: "add" as const,
      path: "/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution/-",
      value: term,
    }));
}
