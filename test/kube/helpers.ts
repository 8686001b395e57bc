import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { KubeClient, type KubeObject, Resources } from "../../src/kube/client.ts";
import type { RuntimeMetrics } from "../../src/metrics.ts";
import { apiBackend, startTestCluster, type TestClusterOptions } from "../../testkit/cluster.ts";
import { type KubectlRun, kubectl } from "../../testkit/kubectl.ts";

export type { TestCluster } from "../../testkit/cluster.ts";

/**
 * A Kubernetes API for the project's backend (the double, or the real control plane under
 * `real-k8s`), and an admin client for it.
 */
export async function startCluster(options: TestClusterOptions = {}) {
  const cluster = await startTestCluster(options);
  const client = KubeClient.load({ path: cluster.kubeconfigPath });
  return { cluster, client };
}

/** The built kubectl against a cluster, with its own HOME and discovery cache. */
export class Kubectl {
  private readonly dir = mkdtempSync(join(tmpdir(), "stowage-kubectl-"));
  private readonly kubeconfigPath: string;

  constructor(kubeconfigPath: string) {
    this.kubeconfigPath = kubeconfigPath;
  }

  run(args: string[], stdin?: string): Promise<KubectlRun> {
    return kubectl(args, { kubeconfig: this.kubeconfigPath, dir: this.dir, stdin, timeoutMs: 60_000 });
  }

  /** Writes the objects to a file and `kubectl apply -f`s it. */
  apply(objects: object[], extra: string[] = []): Promise<KubectlRun> {
    const file = join(this.dir, `manifest-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(file, objects.map((o) => stringify(o)).join("---\n"));
    return this.run(["apply", "-f", file, ...extra]);
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export async function createNamespace(client: KubeClient, name: string): Promise<void> {
  await client.resource(Resources.Namespace).create({ metadata: { name } });
}

const ServiceAccountType = {
  group: "",
  version: "v1",
  plural: "serviceaccounts",
  kind: "ServiceAccount",
  namespaced: true,
} as const;

/**
 * Waits for the namespace's `default` ServiceAccount, which a real cluster's controller-manager
 * creates a moment after the namespace and without which no Pod is admitted there. The double
 * admits Pods without it.
 */
export async function waitForDefaultServiceAccount(client: KubeClient, namespace: string): Promise<void> {
  if (apiBackend() !== "real") return;
  await eventually(`the default ServiceAccount of ${namespace}`, async () => {
    return (await client.resource(ServiceAccountType).find("default", namespace)) !== undefined;
  });
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

export function rvByKey(objects: readonly KubeObject[]): Map<string, string> {
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
