/**
 * Status written by the controller never fights Argo CD: after `kubectl apply` (client-side, with
 * the last-applied annotation) and a full reconcile to Ready, spec, labels and annotations are
 * byte-identical to what was applied, and `kubectl diff` sees nothing to change.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { type Cluster, startCluster, waitForCondition } from "../e2e/helpers.ts";

let cluster: Cluster;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let controller: ControllerProcess | undefined;

interface Stored {
  metadata: {
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    finalizers?: string[];
    generation?: number;
    resourceVersion?: string;
    managedFields?: unknown[];
  };
  spec: unknown;
  status?: unknown;
}

beforeAll(async () => {
  [cluster, upstream, cache] = await Promise.all([startCluster(), startRegistry(), startRegistry()]);
  const owner = new RegistryClient({ insecureHosts: [upstream.host] });
  await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "acme/llama" }, "1.0");
  await owner.close();
  await cluster.kubectlOk(["create", "namespace", "ml"]);
});

afterAll(async () => {
  await controller?.kill("SIGTERM");
  await Promise.all([cluster?.stop(), upstream?.stop(), cache?.stop()]);
});

describe("Argo CD sees no drift on a reconciled ModelImage", () => {
  it("keeps spec, labels and annotations byte-identical to the kubectl apply and adds only status", async () => {
    const manifest = {
      apiVersion: "stowage.dev/v1alpha1",
      kind: "ModelImage",
      metadata: {
        name: "llama",
        namespace: "ml",
        labels: { "app.kubernetes.io/instance": "models", team: "research" },
        annotations: {
          "argocd.argoproj.io/sync-options": "SkipDryRunOnMissingResource=true",
          "argocd.argoproj.io/tracking-id": "models:stowage.dev/ModelImage:ml/llama",
        },
      },
      spec: {
        variants: [
          {
            name: "cpu",
            image: `${upstream.host}/acme/llama:1.0`,
            nodeSelector: { "kubernetes.io/arch": "amd64" },
          },
        ],
        sync: { interval: "10m" },
      },
    };
    const file = join(cluster.dir, "llama.yaml");
    await writeFile(file, stringify(manifest));
    await cluster.kubectlOk(["apply", "-f", file]);
    const applied = JSON.parse(
      await cluster.kubectlOk(["get", "mi", "llama", "-n", "ml", "-o", "json"]),
    ) as Stored;
    expect(applied.metadata.annotations?.["kubectl.kubernetes.io/last-applied-configuration"]).toBeTruthy();
    expect(applied.status).toBeUndefined();

    controller = await startControllerProcess({
      kubeconfig: cluster.api.kubeconfigPath,
      cacheRegistry: cache.url,
      args: ["--insecure-registry", upstream.host],
    });
    await waitForCondition(cluster, "llama", "Ready", { status: "True" }, "ml", 90_000);
    const reconciled = JSON.parse(
      await cluster.kubectlOk(["get", "mi", "llama", "-n", "ml", "-o", "json"]),
    ) as Stored;

    expect(JSON.stringify(reconciled.spec)).toBe(JSON.stringify(applied.spec));
    expect(JSON.stringify(reconciled.metadata.labels)).toBe(JSON.stringify(applied.metadata.labels));
    expect(JSON.stringify(reconciled.metadata.annotations)).toBe(
      JSON.stringify(applied.metadata.annotations),
    );
    expect(reconciled.metadata.generation).toBe(applied.metadata.generation);
    // with the default retainOnDelete the controller adds no finalizer either (docs/operations.md)
    expect(reconciled.metadata.finalizers).toBeUndefined();
    expect(reconciled.status).toBeDefined();
    expect(reconciled.metadata.resourceVersion).not.toBe(applied.metadata.resourceVersion);

    // the same manifest applied again is a no-op: kubectl diff exits 0 and apply says unchanged
    const diff = await cluster.kubectl(["diff", "-f", file]);
    expect({ code: diff.code, stdout: diff.stdout }).toEqual({ code: 0, stdout: "" });
    expect(await cluster.kubectlOk(["apply", "-f", file])).toContain(
      "modelimage.stowage.dev/llama unchanged",
    );
  });
});
