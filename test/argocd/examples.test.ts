import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { type Cluster, root, startCluster } from "../e2e/helpers.ts";

interface Application {
  kind: string;
  metadata: { name: string; annotations?: Record<string, string> };
  spec: { source: { path: string; directory?: { include?: string } } };
}
const examples = join(root, "examples/argocd");
const app = (file: string) => parse(readFileSync(join(examples, file), "utf8")) as Application;
const wave = (a: Application) => Number(a.metadata.annotations?.["argocd.argoproj.io/sync-wave"] ?? 0);

let cluster: Cluster;
beforeAll(async () => {
  cluster = await startCluster();
  await cluster.kubectlOk(["create", "namespace", "ml"]);
});
afterAll(async () => {
  await cluster?.stop();
});

describe("Argo CD examples", () => {
  it("sync the chart (and its CRDs) in an earlier wave than the ModelImages, from paths that exist", () => {
    const chart = app("stowage.yaml");
    const modelImages = app("modelimages.yaml");
    const rootApp = app("root.yaml");
    for (const a of [chart, modelImages, rootApp]) {
      expect(a.kind).toBe("Application");
      expect(existsSync(join(root, a.spec.source.path)), a.spec.source.path).toBe(true);
    }
    expect(chart.spec.source.path).toBe("charts/stowage");
    expect(wave(chart)).toBeLessThan(wave(modelImages));
    expect(rootApp.spec.source.directory?.include).toBe("{stowage.yaml,modelimages.yaml}");
  });

  it("leave the Prometheus operator objects to the chart's capability check, since Argo CD renders with the cluster's API versions", () => {
    const chart = app("stowage.yaml") as unknown as {
      spec: {
        source: { helm?: { valuesObject?: Record<string, { force?: boolean; serviceMonitor?: object }> } };
      };
    };
    const values = chart.spec.source.helm?.valuesObject ?? {};
    expect(values.prometheusRule?.force).toBeUndefined();
    expect(values.metrics?.serviceMonitor).toBeUndefined();
    for (const file of [join(examples, "stowage.yaml"), join(root, "docs/operations.md")]) {
      expect(readFileSync(file, "utf8"), file).not.toMatch(/cannot see the cluster|No cluster to ask/);
    }
  });

  it("hold ModelImages the API server accepts (server-side dry run against the CRD) and that skip the dry run before it exists", async () => {
    const folder = join(examples, "modelimages");
    const files = readdirSync(folder).filter((f) => f.endsWith(".yaml"));
    expect(files.length).toBeGreaterThan(0);
    for (const file of files) {
      const doc = parse(readFileSync(join(folder, file), "utf8")) as Application;
      expect(doc.metadata.annotations?.["argocd.argoproj.io/sync-options"]).toBe(
        "SkipDryRunOnMissingResource=true",
      );
    }
    const out = await cluster.kubectlOk(["apply", "--dry-run=server", "-f", folder]);
    expect(out).toMatch(/modelimage\.stowage\.dev\/llama3-serve created \(server dry run\)/);
  });
});
