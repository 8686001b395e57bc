/**
 * A cluster (the API double or the real control plane, with the ModelImage and NodeCache CRDs),
 * a real cache registry, the
 * pre-warm planner in-process, and a fake agent that writes NodeCache status the way the node
 * agent does (so these tests do not need containerd).
 */
import { loadCrd } from "../../src/api/crds.ts";
import type { ModelImage, ModelImageSpec, VariantStatus } from "../../src/api/modelImage.ts";
import {
  type ImageFsStatus,
  type NodeCache,
  NodeCacheResource,
  type NodeImageState,
  type NodeImageStatus,
} from "../../src/api/nodeCache.ts";
import { controllerConfig } from "../../src/controller/config.ts";
import { type PrewarmConfig, setupPrewarmController } from "../../src/controller/prewarm/index.ts";
import type { PlannerNode, Taint } from "../../src/controller/prewarm/nodes.ts";
import { KubeClient, type KubeObject, Resources } from "../../src/kube/client.ts";
import { EventRecorder } from "../../src/kube/events.ts";
import { Manager } from "../../src/kube/manager.ts";
import { formatTime } from "../../src/kube/time.ts";
import { createPrewarmMetrics, createRegistry } from "../../src/metrics.ts";
import { startTestCluster, type TestCluster } from "../../testkit/cluster.ts";

export async function startCluster(): Promise<{ api: TestCluster; client: KubeClient }> {
  const api = await startTestCluster({
    crds: [loadCrd("stowage.dev_modelimages") as never, loadCrd("stowage.dev_nodecaches") as never],
  });
  const client = KubeClient.load({ path: api.kubeconfigPath });
  return { api, client };
}

export async function startPlanner(
  client: KubeClient,
  cacheHost: string,
  prewarm: Partial<PrewarmConfig> = {},
) {
  const registry = createRegistry();
  const metrics = createPrewarmMetrics(registry);
  const manager = new Manager({ client });
  const events = new EventRecorder({
    client,
    reportingController: "stowage.dev/controller",
    reportingInstance: "test",
  });
  const planner = setupPrewarmController(manager, {
    client,
    config: controllerConfig({ registry: cacheHost, insecure: true }),
    prewarm,
    events,
    metrics,
  });
  await manager.start();
  return {
    manager,
    planner,
    metrics,
    registry,
    stop: async () => {
      await manager.stop();
      await planner.close();
    },
  };
}

export interface NodeOptions {
  labels?: Record<string, string>;
  arch?: string;
  ready?: boolean;
  taints?: Taint[];
  /** The node's InternalIP (where peers reach its agent in fan-out). */
  internalIp?: string;
}

export async function createNode(
  client: KubeClient,
  name: string,
  options: NodeOptions = {},
): Promise<PlannerNode> {
  return client.resource<PlannerNode>(Resources.Node).create({
    metadata: {
      name,
      labels: {
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": options.arch ?? "amd64",
        ...options.labels,
      },
    },
    spec: options.taints ? { taints: options.taints } : {},
    status: {
      conditions: [{ type: "Ready", status: options.ready === false ? "False" : "True" }],
      ...(options.internalIp ? { addresses: [{ type: "InternalIP", address: options.internalIp }] } : {}),
    },
  });
}

export async function getNode(client: KubeClient, name: string): Promise<PlannerNode> {
  return client.resource<PlannerNode>(Resources.Node).get(name);
}

/** A ModelImage as the ModelImage reconciler leaves it once the cache holds `cacheDigests` (by variant). */
export async function createCachedModelImage(
  client: KubeClient,
  namespace: string,
  name: string,
  spec: ModelImageSpec,
  cacheDigests: Record<string, string>,
): Promise<ModelImage> {
  const objects = client.resource<ModelImage>({
    group: "stowage.dev",
    version: "v1alpha1",
    plural: "modelimages",
    kind: "ModelImage",
    namespaced: true,
  });
  const created = await objects.create({
    apiVersion: "stowage.dev/v1alpha1",
    kind: "ModelImage",
    metadata: { name, namespace },
    spec,
  });
  const variants: VariantStatus[] = Object.entries(cacheDigests).map(([variant, digest]) => ({
    name: variant,
    cacheDigest: digest,
  }));
  return objects.patchStatus(name, { status: { variants } }, namespace).then((mi) => mi ?? created);
}

export function modelImageClient(client: KubeClient) {
  return client.resource<ModelImage>({
    group: "stowage.dev",
    version: "v1alpha1",
    plural: "modelimages",
    kind: "ModelImage",
    namespaced: true,
  });
}

export function nodeCaches(client: KubeClient) {
  return client.resource<NodeCache>(NodeCacheResource);
}

export async function findNodeCache(client: KubeClient, name: string): Promise<NodeCache | undefined> {
  return nodeCaches(client).find(name);
}

/** The fake agent: report states of spec images (by digest) and the image filesystem, as the agent would. */
export async function report(
  client: KubeClient,
  node: string,
  states: Record<string, NodeImageState>,
  imageFs?: ImageFsStatus,
): Promise<void> {
  const nc = await nodeCaches(client).get(node);
  const now = formatTime(Date.now());
  const images: NodeImageStatus[] = Object.entries(states).map(([digest, state]) => {
    const entry = nc.spec.images?.find((e) => e.digest === digest);
    const previous = nc.status?.images?.find((s) => s.digest === digest);
    return {
      image: entry?.image ?? "unknown",
      digest,
      state,
      ownedByAgent: true,
      startedAt: previous?.startedAt ?? now,
      ...(state === "Present" || state === "Failed" ? { finishedAt: now } : {}),
      ...(state === "Failed" ? { reason: "PullFailed", message: "rpc error: not found" } : {}),
    };
  });
  await nodeCaches(client).patchStatus(node, {
    status: { images, ...(imageFs ? { imageFs } : {}), heartbeatTime: now },
  });
}

/** A NodeCache the agent created before any image was planned (reports the disk). */
export async function agentStarted(client: KubeClient, node: string, imageFs: ImageFsStatus): Promise<void> {
  const nodeObj = await getNode(client, node);
  await nodeCaches(client).create({
    apiVersion: "stowage.dev/v1alpha1",
    kind: "NodeCache",
    metadata: {
      name: node,
      ownerReferences: [{ apiVersion: "v1", kind: "Node", name: node, uid: nodeObj.metadata?.uid }],
    },
    spec: { nodeName: node },
  });
  await nodeCaches(client).patchStatus(node, { status: { imageFs } });
}

export async function eventsAbout(client: KubeClient, namespace: string, name: string) {
  const list = await client
    .resource<KubeObject & { reason?: string; note?: string; type?: string; regarding?: { name?: string } }>(
      Resources.Event,
    )
    .list({ namespace });
  return list.items.filter((e) => e.regarding?.name === name);
}
