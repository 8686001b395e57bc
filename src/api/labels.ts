import { createHash } from "node:crypto";

/** Taint an autoscaled node carries until every image planned for it is present. */
export const WARMING_TAINT_KEY = "stowage.dev/warming";

/** Scheduling gate the admission webhook adds to pods whose ModelImage is not yet prewarmed. */
export const PREWARM_SCHEDULING_GATE = "stowage.dev/prewarm";

/** Pod annotation naming the ModelImage a pod needs, when its images do not say it. */
export const MODEL_IMAGE_ANNOTATION = "stowage.dev/model-image";

/** Namespace label that turns pod holding off for a namespace (`stowage.dev/hold-pods: disabled`). */
export const HOLD_PODS_NAMESPACE_LABEL = "stowage.dev/hold-pods";

/** Prefix of the per-ModelImage node labels the planner maintains on nodes that hold its image. */
export const WARM_LABEL_PREFIX = "warm.stowage.dev/";

/** Value of a warm label: the node holds every image of that ModelImage's variant for the node. */
export const WARM_LABEL_VALUE = "true";

/**
 * The node label saying "this node holds ModelImage NS/NAME warm". A label name is at most 63
 * characters and namespace + name can be 316, so the name is `<ns>.<name>` when it fits and a
 * readable prefix plus a hash of both otherwise; the planner and the webhook both call this.
 */
export function warmNodeLabel(namespace: string, name: string): string {
  const plain = `${namespace}.${name}`;
  if (plain.length <= 63) return `${WARM_LABEL_PREFIX}${plain}`;
  const hash = createHash("sha256").update(`${namespace}/${name}`).digest("hex").slice(0, 10);
  const head = plain.slice(0, 63 - hash.length - 1).replace(/[^A-Za-z0-9]+$/, "");
  return `${WARM_LABEL_PREFIX}${head}-${hash}`;
}

/**
 * NodeCache annotation the uninstall hook (`stowage uninstall`) sets: the node's agent then removes
 * the containerd hosts.toml files it wrote (restoring any it merged with), stops pulling, and
 * reports MirrorConfigured=False reason `Uninstalled`.
 */
export const UNINSTALL_ANNOTATION = "stowage.dev/uninstall";
