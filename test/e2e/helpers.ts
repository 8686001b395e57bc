/**
 * The end-to-end environment: a Kubernetes API with the real ModelImage CRD (the API double, or
 * the real control plane when the run asks for it: testkit/cluster.ts), real registries, the
 * built kubectl, and the controller as a child process (testkit/controllerProcess.ts).
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse, stringify } from "yaml";
import { loadCrd } from "../../src/api/crds.ts";
import type { KubeObject } from "../../testkit/apiserver/index.ts";
import { startTestCluster, type TestCluster, type TestClusterOptions } from "../../testkit/cluster.ts";
import { kubectl as runKubectl } from "../../testkit/kubectl.ts";
import { eventually } from "../support/eventually.ts";

export { eventually };

export const root = fileURLToPath(new URL("../..", import.meta.url));

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export interface Cluster {
  /** the API under test, double or real; `api.double` only where a test is about the double */
  api: TestCluster;
  dir: string;
  /** kubectl as the cluster admin */
  kubectl(args: string[], stdin?: string): Promise<Run>;
  /** kubectl that must succeed; returns stdout. */
  kubectlOk(args: string[], stdin?: string): Promise<string>;
  /** `kubectl apply -f` of YAML documents written to a temp file. */
  apply(documents: object[]): Promise<string>;
  stop(): Promise<void>;
}

export type StowageCrd = "stowage.dev_modelimages" | "stowage.dev_nodecaches";

export interface ClusterOptions {
  /** the CRDs served from the start (default: ModelImage only) */
  crds?: StowageCrd[];
  /** double only: enforce RBAC (the real apiserver always does) */
  rbac?: boolean;
  /** real only: how to start the control plane (extra apiserver flags) */
  controlPlane?: TestClusterOptions["controlPlane"];
}

export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  const crds = (options.crds ?? ["stowage.dev_modelimages"]).map((name) => loadCrd(name) as KubeObject);
  const api = await startTestCluster({ crds, rbac: options.rbac, controlPlane: options.controlPlane });
  const dir = await mkdtemp(join(tmpdir(), "stowage-e2e-"));
  let files = 0;
  const kubectl = (args: string[], stdin?: string): Promise<Run> =>
    runKubectl(args, { kubeconfig: api.kubeconfigPath, dir, stdin });
  const kubectlOk = async (args: string[], stdin?: string) => {
    const run = await kubectl(args, stdin);
    if (run.code !== 0) throw new Error(`kubectl ${args.join(" ")} failed (${run.code}): ${run.stderr}`);
    return run.stdout;
  };
  const cluster: Cluster = {
    api,
    dir,
    kubectl,
    kubectlOk,
    async apply(documents) {
      const file = join(dir, `manifest-${++files}.yaml`);
      await writeFile(file, documents.map((d) => stringify(d)).join("---\n"));
      return kubectlOk(["apply", "-f", file]);
    },
    async stop() {
      await api.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    await cluster.apply([{ apiVersion: "v1", kind: "Namespace", metadata: { name: "stowage-system" } }]);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}

/** The example's documents, for tests to edit (image, name) before applying a temp copy. */
export async function exampleDocuments(file: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(join(root, "examples", file), "utf8");
  return text
    .split(/^---$/m)
    .map((doc) => parse(doc))
    .filter(Boolean);
}

export function modelImage(
  name: string,
  spec: Record<string, unknown>,
  namespace = "default",
): Record<string, unknown> {
  return { apiVersion: "stowage.dev/v1alpha1", kind: "ModelImage", metadata: { name, namespace }, spec };
}

export function dockerConfigSecret(
  name: string,
  namespace: string,
  registry: string,
  credentials: { username: string; password: string },
  type = "kubernetes.io/dockerconfigjson",
): Record<string, unknown> {
  const auth = Buffer.from(`${credentials.username}:${credentials.password}`).toString("base64");
  const config = JSON.stringify({ auths: { [registry]: { auth } } });
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name, namespace },
    type,
    data: {
      [type === "kubernetes.io/dockerconfigjson" ? ".dockerconfigjson" : "config"]:
        Buffer.from(config).toString("base64"),
    },
  };
}

export interface Condition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
}

export interface ModelImageView {
  metadata: { name: string; namespace: string; generation?: number };
  status?: {
    conditions?: Condition[];
    variants?: { name: string; cacheImage?: string; sourceDigest?: string; cacheDigest?: string }[];
  };
}

export async function getModelImage(
  cluster: Cluster,
  name: string,
  namespace = "default",
): Promise<ModelImageView> {
  return JSON.parse(
    await cluster.kubectlOk(["get", "mi", name, "-n", namespace, "-o", "json"]),
  ) as ModelImageView;
}

export function condition(mi: ModelImageView, type: string): Condition | undefined {
  return mi.status?.conditions?.find((c) => c.type === type);
}

/** A condition reaching a status (and reason), polled through kubectl as a person would. */
export function waitForCondition(
  cluster: Cluster,
  name: string,
  type: string,
  expected: { status: string; reason?: string },
  namespace = "default",
  timeoutMs = 60_000,
): Promise<ModelImageView> {
  let last: ModelImageView | undefined;
  return eventually(
    `${namespace}/${name} ${type}=${expected.status}${expected.reason ? ` (${expected.reason})` : ""}`,
    async () => {
      last = await getModelImage(cluster, name, namespace);
      const found = condition(last, type);
      return found?.status === expected.status && (!expected.reason || found.reason === expected.reason)
        ? last
        : undefined;
    },
    timeoutMs,
  ).catch((err: Error) => {
    throw new Error(`${err.message}; last status: ${JSON.stringify(last?.status)}`);
  });
}

/** Prometheus text → the value of the first sample whose name and labels match. */
export function sampleValue(
  metricsText: string,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  for (const line of metricsText.split("\n")) {
    if (!line.startsWith(name) || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const labelText = match[3] ?? "";
    const ok = Object.entries(labels).every(([k, v]) => labelText.includes(`${k}="${v}"`));
    if (ok) return Number(match[4]);
  }
  return undefined;
}
