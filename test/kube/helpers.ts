import { KubeClient, type KubeObject, Resources } from "../../src/kube/client.ts";
import type { RuntimeMetrics } from "../../src/metrics.ts";
import { startApiServer } from "../../testkit/apiserver/index.ts";

export type ApiServer = Awaited<ReturnType<typeof startApiServer>>;

/** C's API server test double on a free loopback port, and a client for it. */
export async function startCluster(options: Parameters<typeof startApiServer>[0] = {}) {
  const server = await startApiServer(options);
  const client = KubeClient.load({ path: server.kubeconfigPath });
  return { server, client };
}

export async function createNamespace(client: KubeClient, name: string): Promise<void> {
  await client.resource(Resources.Namespace).create({ metadata: { name } });
}

/** Poll until `check` returns true; throws with `what` after `timeoutMs`. */
export async function eventually(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

export async function metricSum(
  metrics: RuntimeMetrics,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const metric = await metrics.registry.getSingleMetric(name)?.get();
  return (
    metric?.values
      .filter((v) => Object.entries(labels).every(([k, value]) => v.labels[k] === value))
      .reduce((sum, v) => sum + v.value, 0) ?? 0
  );
}

export function rvByKey(objects: KubeObject[]): Map<string, string> {
  return new Map(
    objects.map((o) => [
      o.metadata?.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : (o.metadata?.name ?? ""),
      o.metadata?.resourceVersion ?? "",
    ]),
  );
}

export const WidgetType = {
  group: "test.stowage.dev",
  version: "v1",
  plural: "widgets",
  kind: "Widget",
  namespaced: true,
} as const;

export interface Widget extends KubeObject {
  spec?: { size?: number };
  status?: { observedGeneration?: number; phase?: string; conditions?: unknown[]; notes?: string[] };
}

/** A namespaced CRD with a status subresource, for tests that need a custom resource. */
export async function createWidgetCrd(client: KubeClient): Promise<void> {
  await client.resource(Resources.CustomResourceDefinition).create({
    metadata: { name: "widgets.test.stowage.dev" },
    spec: {
      group: "test.stowage.dev",
      scope: "Namespaced",
      names: { plural: "widgets", singular: "widget", kind: "Widget", listKind: "WidgetList" },
      versions: [
        {
          name: "v1",
          served: true,
          storage: true,
          subresources: { status: {} },
          schema: { openAPIV3Schema: { type: "object", "x-kubernetes-preserve-unknown-fields": true } },
        },
      ],
    },
  } as KubeObject);
  await eventually("the widget CRD is served", async () => {
    try {
      await client.resource(WidgetType).list({ limit: 1 });
      return true;
    } catch {
      return false;
    }
  });
}
