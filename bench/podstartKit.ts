/**
 * Pieces of `bench:podstart` (bench/podstart.ts): the runnable synthetic model image (busybox
 * plus multi-GB incompressible layers), the pod whose start is timed, and a stopwatch that
 * watches the pod from the bench with a monotonic clock.
 */
import { isNotFound, type KubeClient } from "../src/kube/client.ts";
import type { RegistryClient, RepoRef } from "../src/oci/registry.ts";
import { pushImage, type SyntheticImage } from "../testkit/images.ts";
import { runnableImage } from "../testkit/runnableImage.ts";

// biome-ignore lint/suspicious/noExplicitAny: pods and nodes read back as free-form JSON
export type Json = any;

/**
 * An OCI image: busybox first (the executable layer), then uncompressed tar layers of random bytes
 * of `layerSizes` (streamed, never held in memory), entrypoint `/bin/sh`.
 */
export function buildRunnableImage(seed: string, layerSizes: number[]): Promise<SyntheticImage> {
  return runnableImage({ seed, dataLayerSizes: layerSizes, entrypoint: ["/bin/sh"] });
}

/** Pushes the image and returns its manifest digest. */
export function pushRunnableImage(
  client: RegistryClient,
  repo: RepoRef,
  tag: string,
  image: SyntheticImage,
): Promise<string> {
  return pushImage(client, repo, image, tag);
}

/** Bytes of every blob of the image (config and layers). */
export function imageBytes(image: SyntheticImage): number {
  return image.blobs.reduce((sum, b) => sum + b.descriptor.size, 0);
}

/**
 * The user pod: the image's container sleeping, on one named node (hostNetwork: the kubelet
 * nodes have loopback-only CNI). IfNotPresent, as for a tag a kubelet pulls once.
 */
export function userPod(name: string, namespace: string, nodeName: string, image: string): Json {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace, labels: { app: "podstart-bench" } },
    spec: {
      nodeSelector: { "kubernetes.io/hostname": nodeName },
      hostNetwork: true,
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      terminationGracePeriodSeconds: 1,
      containers: [{ name: "main", image, imagePullPolicy: "IfNotPresent", command: ["/bin/sleep", "3600"] }],
    },
  };
}

export interface PodStart {
  /** monotonic ms from just before the create request to the watch event showing the container running */
  ms: number;
  /** monotonic ms from just before the create request to the first event with spec.nodeName */
  scheduledMs?: number;
  /** monotonic ms until the first event whose schedulingGates were empty, when the pod was created with some */
  ungatedMs?: number;
  /** the pod's own whole-second timestamps: startedAt − creationTimestamp */
  podTimestampsSeconds?: number;
  /** whether the webhook gated the pod when it was created */
  gated: boolean;
  node?: string;
}

/**
 * Creates the pod and times it to running with the bench's monotonic clock: the create request
 * returns the pod's resourceVersion, and a watch from that version sees every later change, so
 * no event is missed between the create and the watch.
 */
export async function timePodStart(
  client: KubeClient,
  pod: Json,
  options: { timeoutMs: number; started?: number; onEvent?: (pod: Json, atMs: number) => void },
): Promise<PodStart> {
  const namespace = pod.metadata.namespace;
  const name = pod.metadata.name;
  const started = options.started ?? performance.now();
  const created: Json = await client.request("POST", `/api/v1/namespaces/${namespace}/pods`, { body: pod });
  const result: PodStart = { ms: 0, gated: (created.spec?.schedulingGates ?? []).length > 0 };
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(new Error("timeout")), options.timeoutMs);
  let failure: string | undefined;
  let runningPod: Json;
  const see = (object: Json) => {
    const at = performance.now() - started;
    options.onEvent?.(object, at);
    if (object.spec?.nodeName && result.scheduledMs === undefined) {
      result.scheduledMs = at;
      result.node = object.spec.nodeName;
    }
    if (result.gated && result.ungatedMs === undefined && (object.spec?.schedulingGates ?? []).length === 0)
      result.ungatedMs = at;
    const status = object.status?.containerStatuses?.[0];
    if (status?.state?.running) {
      result.ms = at;
      runningPod = object;
      abort.abort();
    }
    const waiting = status?.state?.waiting;
    if (
      waiting &&
      /ErrImage|ImagePullBackOff|CrashLoop|CreateContainer|InvalidImage/.test(waiting.reason ?? "")
    ) {
      failure = `${waiting.reason}: ${waiting.message ?? ""}`;
      abort.abort();
    }
  };
  see(created);
  let resourceVersion = created.metadata.resourceVersion;
  try {
    while (!abort.signal.aborted) {
      await client
        .watch(
          `/api/v1/namespaces/${namespace}/pods`,
          { fieldSelector: `metadata.name=${name}`, resourceVersion, allowWatchBookmarks: false },
          (type, object) => {
            const obj = object as Json;
            if (obj?.metadata?.resourceVersion) resourceVersion = obj.metadata.resourceVersion;
            if (type === "ADDED" || type === "MODIFIED") see(obj);
          },
          { signal: abort.signal, inactivityMs: 60_000 },
        )
        .catch((err: Error) => {
          // A watch the server ended or that went quiet is resumed from the last version seen.
          if (!/inactive|no data|ECONNRESET|socket hang up/i.test(err.message)) throw err;
        });
    }
  } finally {
    clearTimeout(timer);
  }
  if (failure) throw new Error(`pod ${namespace}/${name}: ${failure}`);
  if (result.ms === 0)
    throw new Error(`pod ${namespace}/${name} was not running within ${options.timeoutMs} ms`);
  const startedAt = runningPod.status.containerStatuses[0].state.running.startedAt;
  result.podTimestampsSeconds =
    (Date.parse(startedAt) - Date.parse(runningPod.metadata.creationTimestamp)) / 1000;
  return result;
}

/** Deletes the pod and waits until it is gone, so the next measurement starts on an idle node. */
export async function deletePod(client: KubeClient, namespace: string, name: string, timeoutMs = 120_000) {
  await client.request("DELETE", `/api/v1/namespaces/${namespace}/pods/${name}`).catch(() => {});
  await waitFor(
    `pod ${namespace}/${name} gone`,
    async () => {
      try {
        await client.request("GET", `/api/v1/namespaces/${namespace}/pods/${name}`);
        return undefined;
      } catch (err) {
        if (isNotFound(err)) return true;
        throw err;
      }
    },
    timeoutMs,
  );
}

/** Polls `probe` every `intervalMs` until it returns something other than undefined. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs: number,
  intervalMs = 200,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = err;
    }
    if (performance.now() > deadline)
      throw new Error(
        `${what}: not within ${Math.round(timeoutMs / 1000)} s${lastError ? ` (last error: ${(lastError as Error).message})` : ""}`,
      );
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}
