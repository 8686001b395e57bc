/**
 * The chart rendered by the real helm and judged by the real kube-apiserver: `helm lint --strict`
 * and `helm template` across a matrix of values, every rendered manifest sent to
 * `kubectl apply --dry-run=server --validate=strict` on a control plane that serves the chart's
 * CRDs (from its crds/, as `helm install` applies them) and stand-ins for the prometheus-operator
 * and cert-manager CRDs (test/real/fixtures: their group, version, kind and scope, not their full
 * schemas). And the chart as a subchart: a parent chart depending on it by `file://`, with
 * `global:` values.
 */
import { readdirSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, parseAllDocuments, stringify } from "yaml";
import { type ControlPlane, type CrdShape, startControlPlane } from "../../testkit/controlplane/index.ts";
import { helm, helmOk } from "../../testkit/helm.ts";
import { kubectl, kubectlOk } from "../../testkit/kubectl.ts";
import { root } from "../support/run.ts";

const chartDir = join(root, "charts/stowage");
const RELEASE = "stowage";
const NAMESPACE = "stowage-system";
const KUBE_VERSION = "1.37.2";

type Values = Record<string, unknown>;

interface Rendered {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  // biome-ignore lint/suspicious/noExplicitAny: a rendered manifest of any kind; tests read the fields they check
  [field: string]: any;
}

function yamlDocuments(text: string): Rendered[] {
  return parseAllDocuments(text)
    .map((doc) => doc.toJS() as Rendered | null)
    .filter((obj): obj is Rendered => obj !== null);
}

function crdsIn(path: string): CrdShape[] {
  return yamlDocuments(readFileSync(path, "utf8")) as unknown as CrdShape[];
}

/** What `kubectl apply` prints for an object: `kind.group/name` (core kinds without a group). */
function kubectlName(obj: Rendered): string {
  const group = obj.apiVersion.includes("/") ? obj.apiVersion.split("/")[0] : "";
  return `${obj.kind.toLowerCase()}${group ? `.${group}` : ""}/${obj.metadata.name}`;
}

function find(objects: Rendered[], kind: string, name: string, namespace?: string): Rendered | undefined {
  return objects.find(
    (o) =>
      o.kind === kind &&
      o.metadata.name === name &&
      (namespace === undefined || (o.metadata.namespace ?? NAMESPACE) === namespace),
  );
}

let plane: ControlPlane;
let dir: string;
let files = 0;

async function valuesFile(values: Values): Promise<string> {
  const path = join(dir, `values-${++files}.yaml`);
  await writeFile(path, stringify(values));
  return path;
}

interface Case {
  name: string;
  /** values files (charts/stowage/ci/...) then values objects, in order */
  files?: string[];
  values?: Values;
  /** `--api-versions` for helm template (what a cluster would report) */
  apiVersions?: string[];
  /** what this case is about, checked in the render, so a case cannot pass by rendering something else */
  check(objects: Rendered[]): void;
}

const ciFiles = readdirSync(join(chartDir, "ci")).filter((f) => f.endsWith(".yaml"));

const matrix: Case[] = [
  {
    name: "defaults",
    check(objects) {
      expect(find(objects, "Deployment", "stowage-controller")?.spec.replicas).toBe(2);
      expect(find(objects, "DaemonSet", "stowage-agent")).toBeDefined();
      const cache = find(objects, "StatefulSet", "stowage-cache");
      expect(cache?.spec.volumeClaimTemplates).toHaveLength(1);
      // uninstall deletes the claims (test/real/helm-lifecycle.test.ts sees it happen)
      expect(cache?.spec.persistentVolumeClaimRetentionPolicy).toEqual({
        whenDeleted: "Delete",
        whenScaled: "Retain",
      });
      expect(find(objects, "Lease", "stowage-controller")).toBeDefined();
      // helm template asks no cluster: monitoring.coreos.com/v1 is not detected, nothing forced
      expect(objects.filter((o) => o.apiVersion.startsWith("monitoring.coreos.com/"))).toEqual([]);
      expect(find(objects, "MutatingWebhookConfiguration", "stowage-webhook")).toBeUndefined();
    },
  },
  {
    name: "cache claims kept on uninstall",
    values: { cache: { persistence: { keepOnUninstall: true, storageClass: "fast" } } },
    check(objects) {
      const cache = find(objects, "StatefulSet", "stowage-cache");
      expect(cache?.spec.persistentVolumeClaimRetentionPolicy.whenDeleted).toBe("Retain");
      expect(cache?.spec.volumeClaimTemplates[0].spec.storageClassName).toBe("fast");
    },
  },
  {
    name: "webhook on, certificates managed by the controller",
    values: { webhook: { enabled: true } },
    check(objects) {
      expect(find(objects, "MutatingWebhookConfiguration", "stowage-webhook")).toBeDefined();
      expect(find(objects, "Service", "stowage-webhook")).toBeDefined();
      expect(objects.filter((o) => o.apiVersion.startsWith("cert-manager.io/"))).toEqual([]);
    },
  },
  {
    name: "webhook with certManagement external and the chart's self-signed Issuer",
    values: { webhook: { enabled: true, certManagement: "external" } },
    check(objects) {
      expect(find(objects, "Certificate", "stowage-webhook")?.spec.issuerRef.name).toBe(
        "stowage-webhook-selfsigned",
      );
      expect(find(objects, "Issuer", "stowage-webhook-selfsigned")).toBeDefined();
    },
  },
  {
    name: "webhook with certManagement external and a ClusterIssuer of the user's",
    values: {
      webhook: {
        enabled: true,
        certManagement: "external",
        issuerRef: { name: "corp-ca", kind: "ClusterIssuer" },
      },
    },
    check(objects) {
      expect(find(objects, "Certificate", "stowage-webhook")?.spec.issuerRef).toMatchObject({
        name: "corp-ca",
        kind: "ClusterIssuer",
      });
      expect(objects.filter((o) => o.kind === "Issuer")).toEqual([]);
    },
  },
  {
    name: "cache on S3 with TLS and basic auth, three replicas sharing a generated http secret",
    values: {
      cache: {
        replicas: 3,
        s3: { enabled: true, bucket: "models", regionEndpoint: "https://minio.internal:9000" },
        tls: { enabled: true, secretName: "cache-tls" },
        htpasswd: { enabled: true, secretName: "cache-auth" },
      },
    },
    check(objects) {
      const cache = find(objects, "StatefulSet", "stowage-cache");
      expect(cache?.spec.replicas).toBe(3);
      expect(cache?.spec.volumeClaimTemplates).toBeUndefined();
      expect(find(objects, "Secret", "stowage-cache-http-secret")).toBeDefined();
      const args: string[] = find(objects, "Deployment", "stowage-controller")?.spec.template.spec
        .containers[0].args;
      expect(args).toContain("--cache-registry=https://stowage-cache.stowage-system.svc:5000");
    },
  },
  {
    name: "multiple cache replicas on S3 with an existing http secret",
    values: {
      cache: { replicas: 2, s3: { enabled: true, bucket: "models" }, httpSecret: { existingSecret: "http" } },
    },
    check(objects) {
      expect(find(objects, "StatefulSet", "stowage-cache")?.spec.replicas).toBe(2);
      // The existing http secret is used, not a generated one; only the front's node-token key is made.
      expect(objects.filter((o) => o.kind === "Secret").map((o) => o.metadata.name)).toEqual([
        "stowage-node-token",
      ]);
    },
  },
  {
    name: "cache.enabled=false with an external registry",
    values: { cache: { enabled: false, externalUrl: "https://registry.internal:5443" } },
    check(objects) {
      expect(objects.filter((o) => o.metadata.name.startsWith("stowage-cache"))).toEqual([]);
      const args: string[] = find(objects, "Deployment", "stowage-controller")?.spec.template.spec
        .containers[0].args;
      expect(args).toContain("--cache-registry=https://registry.internal:5443");
    },
  },
  {
    name: "ServiceMonitor and PrometheusRule forced on",
    values: { metrics: { serviceMonitor: { force: true } }, prometheusRule: { force: true } },
    check(objects) {
      expect(find(objects, "ServiceMonitor", "stowage")).toBeDefined();
      expect(find(objects, "PrometheusRule", "stowage")?.spec.groups.length).toBeGreaterThan(0);
    },
  },
  {
    name: "ServiceMonitor and PrometheusRule when the cluster serves monitoring.coreos.com/v1",
    apiVersions: ["monitoring.coreos.com/v1"],
    check(objects) {
      expect(find(objects, "ServiceMonitor", "stowage")).toBeDefined();
      expect(find(objects, "PrometheusRule", "stowage")).toBeDefined();
      // the agents' PodMonitor needs its own kind served, not only the group version
      expect(find(objects, "PodMonitor", "stowage-agent")).toBeUndefined();
    },
  },
  {
    name: "the agents' PodMonitor when the cluster serves monitoring.coreos.com/v1 PodMonitor",
    apiVersions: ["monitoring.coreos.com/v1", "monitoring.coreos.com/v1/PodMonitor"],
    check(objects) {
      expect(find(objects, "PodMonitor", "stowage-agent")).toBeDefined();
    },
  },
  {
    name: "watchNamespaces",
    values: { watchNamespaces: ["ml", "research"] },
    check(objects) {
      expect(find(objects, "RoleBinding", "stowage-controller", "ml")).toBeDefined();
      expect(find(objects, "RoleBinding", "stowage-controller", "research")).toBeDefined();
      expect(find(objects, "ClusterRoleBinding", "stowage-controller-namespaced")).toBeUndefined();
    },
  },
  {
    name: "everything optional on: NetworkPolicies, monitoring, webhook, dashboard in another namespace",
    values: {
      networkPolicy: {
        enabled: true,
        metricsFrom: [{ namespaceSelector: { matchLabels: { name: "monitoring" } } }],
      },
      metrics: { serviceMonitor: { force: true, labels: { release: "kube-prometheus-stack" } } },
      prometheusRule: { force: true },
      webhook: { enabled: true, excludeNamespaces: ["monitoring"] },
      dashboard: { namespace: "monitoring" },
      cache: { service: { type: "NodePort", nodePort: 30500 }, nodeEndpoint: "http://10.0.0.5:30500" },
    },
    check(objects) {
      expect(objects.filter((o) => o.kind === "NetworkPolicy").map((o) => o.metadata.name)).toEqual([
        "stowage-controller",
        "stowage-agent",
        "stowage-cache",
      ]);
      expect(find(objects, "ConfigMap", "stowage-dashboard", "monitoring")).toBeDefined();
    },
  },
  {
    name: "agent and leader election off, one controller replica",
    values: {
      agent: { enabled: false },
      controller: {
        replicas: 1,
        leaderElection: { enabled: false },
        podDisruptionBudget: { enabled: false },
      },
    },
    check(objects) {
      expect(objects.filter((o) => o.metadata.name === "stowage-agent")).toEqual([]);
      expect(objects.filter((o) => o.kind === "Lease")).toEqual([]);
      const args: string[] = find(objects, "Deployment", "stowage-controller")?.spec.template.spec
        .containers[0].args;
      expect(args).toContain("--prewarm=false");
    },
  },
  // every values file the chart ships for CI, as it ships it
  ...ciFiles.map(
    (file): Case => ({
      name: `ci/${file}`,
      files: [join(chartDir, "ci", file)],
      check(objects) {
        expect(find(objects, "Deployment", "stowage-controller")).toBeDefined();
      },
    }),
  ),
];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "stowage-helm-"));
  // Dry runs need the API server alone: no controllers, no scheduler.
  plane = await startControlPlane({
    controllerManager: false,
    scheduler: false,
    crds: [
      ...readdirSync(join(chartDir, "crds")).flatMap((f) => crdsIn(join(chartDir, "crds", f))),
      ...crdsIn(join(root, "test/real/fixtures/monitoring-crds.yaml")),
      ...crdsIn(join(root, "test/real/fixtures/cert-manager-crds.yaml")),
    ],
  });
  // the release namespace, the watched namespaces and the dashboard's
  for (const namespace of [NAMESPACE, "ml", "research", "monitoring"])
    await kubectlOk(["create", "namespace", namespace], { kubeconfig: plane.kubeconfigPath, dir });
});

afterAll(async () => {
  await plane?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** `kubectl apply --dry-run=server --validate=strict` of `manifest`: what the API server says of it. */
function serverDryRun(manifest: string) {
  return kubectl(["apply", "--dry-run=server", "--validate=strict", "-f", "-"], {
    kubeconfig: plane.kubeconfigPath,
    dir,
    stdin: manifest,
  });
}

describe("the chart across a values matrix", () => {
  for (const testCase of matrix) {
    it(`lints, renders and is accepted by the API server: ${testCase.name}`, async () => {
      const valueArgs: string[] = [];
      for (const file of testCase.files ?? []) valueArgs.push("-f", file);
      if (testCase.values) valueArgs.push("-f", await valuesFile(testCase.values));

      const lint = await helm(
        [
          "lint",
          "--strict",
          "--kube-version",
          KUBE_VERSION,
          chartDir,
          "--namespace",
          NAMESPACE,
          ...valueArgs,
        ],
        { dir },
      );
      expect({ code: lint.code, stderr: lint.stderr }).toEqual({ code: 0, stderr: "" });
      expect(lint.stdout).toContain("1 chart(s) linted, 0 chart(s) failed");
      expect(lint.stdout).not.toMatch(/\[(ERROR|WARNING)\]/);

      const apiArgs = (testCase.apiVersions ?? []).flatMap((api) => ["--api-versions", api]);
      const manifest = await helmOk(
        [
          "template",
          RELEASE,
          chartDir,
          "--namespace",
          NAMESPACE,
          "--kube-version",
          KUBE_VERSION,
          ...apiArgs,
          ...valueArgs,
        ],
        { dir },
      );
      const objects = yamlDocuments(manifest);
      testCase.check(objects);

      const applied = await serverDryRun(manifest);
      expect({ code: applied.code, stderr: applied.stderr }).toEqual({ code: 0, stderr: "" });
      const accepted = applied.stdout
        .trim()
        .split("\n")
        .map((line) => /^(\S+) created \(server dry run\)$/.exec(line)?.[1] ?? `unexpected: ${line}`);
      expect(accepted.sort()).toEqual(objects.map(kubectlName).sort());
    });
  }

  it("has teeth: the API server refuses an unknown field, a wrong type, and what the stand-in CRDs require", async () => {
    const manifest = await helmOk(
      [
        "template",
        RELEASE,
        chartDir,
        "--namespace",
        NAMESPACE,
        "-f",
        await valuesFile({ prometheusRule: { force: true }, metrics: { serviceMonitor: { force: true } } }),
      ],
      { dir },
    );
    const objects = yamlDocuments(manifest);
    const mutated = (change: (objects: Rendered[]) => void) => {
      const copy = structuredClone(objects);
      change(copy);
      return copy.map((o) => stringify(o)).join("---\n");
    };
    const refusals = [
      {
        manifest: mutated((all) => {
          find(all, "Deployment", "stowage-controller")!.spec.template.spec.containers[0].imagePullPolcy =
            "Always";
        }),
        says: /unknown field "spec.template.spec.containers\[0\].imagePullPolcy"/,
      },
      {
        manifest: mutated((all) => {
          find(all, "Service", "stowage-controller-metrics")!.spec.ports[0].port = "8080";
        }),
        says: /spec\.ports(\[0\])?\.port of type int32/,
      },
      {
        manifest: mutated((all) => {
          delete find(all, "ServiceMonitor", "stowage")!.spec.selector;
        }),
        says: /spec.selector: Required value/,
      },
      {
        manifest: mutated((all) => {
          find(all, "PrometheusRule", "stowage")!.spec.groups[0].rules[0].labels.severity = 2;
        }),
        says: /labels.severity in body must be of type string/,
      },
    ];
    for (const { manifest: bad, says } of refusals) {
      const applied = await serverDryRun(bad);
      expect(applied.code).not.toBe(0);
      expect(applied.stderr).toMatch(says);
    }
  });

  it("helm lint refuses a value the schema refuses, naming it", async () => {
    const lint = await helm(
      ["lint", "--strict", chartDir, "-f", await valuesFile({ controller: { replicas: "two" } })],
      { dir },
    );
    expect(lint.code).not.toBe(0);
    expect(`${lint.stdout}${lint.stderr}`).toMatch(/controller\/replicas.*(integer|got string)/);
  });
});

describe("the chart as a subchart", () => {
  it("accepts a parent chart's global values: dependency build (file://, offline), lint and template", async () => {
    const parent = join(dir, "platform");
    await mkdir(parent);
    const chart = parse(readFileSync(join(chartDir, "Chart.yaml"), "utf8")) as {
      name: string;
      version: string;
    };
    await writeFile(
      join(parent, "Chart.yaml"),
      stringify({
        apiVersion: "v2",
        name: "platform",
        version: "1.0.0",
        dependencies: [{ name: chart.name, version: chart.version, repository: `file://${chartDir}` }],
      }),
    );
    // a parent with templates of its own, as a platform chart has (lint --strict warns on none)
    await mkdir(join(parent, "templates"));
    await writeFile(
      join(parent, "templates", "configmap.yaml"),
      "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-platform\ndata:\n  registry: {{ .Values.global.imageRegistry | quote }}\n",
    );
    await writeFile(
      join(parent, "values.yaml"),
      stringify({
        global: { imageRegistry: "registry.internal", imagePullSecrets: ["corp"], storageClass: "fast" },
        stowage: { controller: { replicas: 1 } },
      }),
    );
    // Offline: every proxy points at a closed port, so a download attempt would fail the build.
    const offline = { HTTP_PROXY: "http://127.0.0.1:9", HTTPS_PROXY: "http://127.0.0.1:9", NO_PROXY: "" };
    await helmOk(["dependency", "build", parent], { dir, env: offline });
    expect(readdirSync(join(parent, "charts"))).toEqual([`${chart.name}-${chart.version}.tgz`]);

    const lint = await helm(["lint", "--strict", "--with-subcharts", parent], { dir, env: offline });
    expect({ code: lint.code, stderr: lint.stderr }).toEqual({ code: 0, stderr: "" });
    expect(lint.stdout).toContain("2 chart(s) linted, 0 chart(s) failed");

    const manifest = await helmOk(["template", "platform", parent, "--namespace", NAMESPACE], { dir });
    const objects = yamlDocuments(manifest);
    // the subchart's objects, named after the parent's release, with the parent's values for it
    expect(find(objects, "Deployment", "platform-stowage-controller")?.spec.replicas).toBe(1);
    const applied = await serverDryRun(manifest);
    expect({ code: applied.code, stderr: applied.stderr }).toEqual({ code: 0, stderr: "" });
    expect(applied.stdout.trim().split("\n")).toHaveLength(objects.length);

    // accepting `global` opened nothing else: a typo under the subchart's key is still refused
    const typo = await helm(
      ["template", "platform", parent, "--namespace", NAMESPACE, "--set", "stowage.controller.replicaz=1"],
      { dir },
    );
    expect(typo.code).not.toBe(0);
    expect(typo.stderr).toMatch(/stowage:[\s\S]*additional properties 'replicaz' not allowed/);
  });
});
