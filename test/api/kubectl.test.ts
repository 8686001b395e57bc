import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { loadCrd } from "../../src/api/crds.ts";
import {
  API_VERSION,
  KIND,
  type ModelImage,
  type ModelImageSpec,
  type ModelImageStatus,
  validateModelImageSpec,
  withDefaults,
} from "../../src/api/modelImage.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { Kubectl, startCluster } from "../kube/helpers.ts";
import { invalidSpecs } from "./invalidSpecs.ts";

let server: TestCluster;
let kubectl: Kubectl;

beforeAll(async () => {
  ({ cluster: server } = await startCluster({ crds: [loadCrd("modelimages.stowage.dev")] }));
  kubectl = new Kubectl(server.kubeconfigPath);
});

afterAll(async () => {
  kubectl?.cleanup();
  await server?.stop();
});

const examples = new URL("../../examples/", import.meta.url);

/**
 * kubectl ran and succeeded: exit 0 and nothing on stderr. Output alone proves nothing, since a
 * kubectl that is missing or cannot reach the server also prints nothing on stdout.
 */
type KubectlRun = Awaited<ReturnType<Kubectl["run"]>>;

function expectSuccess(result: KubectlRun, what: string): void {
  expect({ what, code: result.code, stderr: result.stderr }).toEqual({ what, code: 0, stderr: "" });
}

/** kubectl ran and the API server refused: a non-zero exit with the server's error on stderr. */
function expectRefusal(result: KubectlRun, ...messages: string[]): void {
  expect(result.code).not.toBe(0);
  expect(result.stderr).toMatch(/^(The|Error from server)/m);
  for (const message of messages) expect(result.stderr).toContain(message);
}

async function getModelImage(name: string, namespace: string): Promise<ModelImage> {
  const result = await kubectl.run(["get", "modelimage", name, "-n", namespace, "-o", "json"]);
  expectSuccess(result, `get modelimage ${namespace}/${name}`);
  return JSON.parse(result.stdout);
}

describe("the ModelImage CRD with the API server and the built kubectl", () => {
  it("applies the CUDA + CPU example with its namespace and keeps what the user wrote", async () => {
    const file = new URL("modelimage-llama.yaml", examples);
    const result = await kubectl.run(["apply", "-f", file.pathname]);
    expectSuccess(result, "apply modelimage-llama.yaml");
    expect(result.stdout).toContain("namespace/ml created");
    expect(result.stdout).toContain("modelimage.stowage.dev/llama3-serve created");

    const written = parseAllDocuments(readFileSync(file, "utf8"))
      .map((d) => d.toJS())
      .find((d) => d.kind === KIND);
    const stored = await getModelImage("llama3-serve", "ml");
    expect(stored.spec.variants).toEqual(written.spec.variants);
    expect(stored.spec.prewarm).toEqual({ ...written.spec.prewarm, priority: 0 });
    expect(stored.spec.sync).toEqual({ ...written.spec.sync, allPlatforms: false });
  });

  it("applies the single-image example and fills in every default", async () => {
    const result = await kubectl.run(["apply", "-f", new URL("modelimage-single.yaml", examples).pathname]);
    expectSuccess(result, "apply modelimage-single.yaml");
    expect(result.stdout).toContain("modelimage.stowage.dev/vllm created");

    const stored = await getModelImage("vllm", "default");
    expect(stored.spec).toEqual({
      image: "docker.io/vllm/vllm-openai:v0.6.3",
      sync: { interval: "10m", platforms: ["auto"], allPlatforms: false, referrers: false },
      suspend: false,
      prewarm: { enabled: true, maxConcurrentNodes: 4, holdPods: false, holdTimeout: "15m", priority: 0 },
    });
  });

  it("accepts a spec with every field set at the edge of what is allowed", async () => {
    const prefix = `${"p".repeat(63)}.${"q".repeat(63)}.${"r".repeat(63)}.${"s".repeat(61)}`; // 253 characters
    const spec: ModelImageSpec = {
      variants: Array.from({ length: 16 }, (_, i) => ({
        name: i === 0 ? "v".repeat(63) : `v${i}`,
        image: [
          "alpine",
          `localhost:5000/a/b__c/d--e:${"t".repeat(128)}`,
          `[::1]:5000/x/y:1@sha256:${"a".repeat(64)}`,
          `ghcr.io/acme/x@sha512:${"b".repeat(128)}`,
        ][i % 4],
        nodeSelector: {
          [`${prefix}/${"n".repeat(63)}`]: "v".repeat(63),
          "empty-value": "",
          "kubernetes.io/arch": "arm64",
        },
        platforms: ["linux/arm64/v8", "linux/amd64", "windows/amd64"],
      })),
      pullSecrets: Array.from({ length: 16 }, (_, i) => ({ name: `secret-${i}.example.com` })),
      sync: {
        interval: "30s",
        platforms: ["linux/amd64", "linux/arm64"],
        allPlatforms: false,
        referrers: true,
      },
      suspend: true,
      prewarm: {
        enabled: true,
        minReadyNodes: 0,
        maxConcurrentNodes: 1000,
        holdPods: true,
        holdTimeout: "1h0m0.5s",
        priority: -10,
      },
    };
    const result = await kubectl.apply([
      { apiVersion: API_VERSION, kind: KIND, metadata: { name: "edges", namespace: "default" }, spec },
    ]);
    expectSuccess(result, "apply edges");
    expect((await getModelImage("edges", "default")).spec).toEqual(spec);
    expect(validateModelImageSpec(spec)).toEqual([]);
  });

  it("defaults exactly as withDefaults does, for code paths that read objects not written through the API server", async () => {
    const specs: ModelImageSpec[] = [
      { image: "alpine:3.20" },
      {
        image: "alpine:3.20",
        pullSecrets: [{ name: "hub" }],
        sync: { referrers: true },
        prewarm: { minReadyNodes: 0 },
      },
      {
        variants: [{ name: "cpu", image: "ghcr.io/acme/cpu:1" }],
        suspend: true,
        prewarm: { enabled: false },
      },
    ];
    for (const [i, spec] of specs.entries()) {
      const name = `defaults-${i}`;
      const applied = await kubectl.apply([
        { apiVersion: API_VERSION, kind: KIND, metadata: { name, namespace: "default" }, spec },
      ]);
      expectSuccess(applied, `apply ${name}`);
      const stored = await getModelImage(name, "default");
      expect(withDefaults(spec)).toEqual({ pullSecrets: [], ...stored.spec });
    }
  });

  it("lists ModelImages by short name with READY, SYNCED, DIGEST, NODES, LAG and AGE from the status", async () => {
    const applied = await kubectl.apply([
      {
        apiVersion: API_VERSION,
        kind: KIND,
        metadata: { name: "lagging", namespace: "default" },
        spec: { image: "alpine:3.20" },
      },
    ]);
    expectSuccess(applied, "apply lagging");
    const status: ModelImageStatus = {
      observedGeneration: 1,
      conditions: [
        {
          type: "Ready",
          status: "False",
          reason: "UpstreamChanged",
          message: "a new digest is being copied",
          lastTransitionTime: "2026-01-01T00:00:00Z",
        },
        {
          type: "Synced",
          status: "False",
          reason: "UpstreamChanged",
          message: "a new digest is being copied",
          lastTransitionTime: "2026-01-01T00:00:00Z",
        },
      ],
      digest: "sha256:0f973b6045",
      nodes: "3/4",
      lagSince: new Date(Date.now() - 2 * 3600_000).toISOString().replace(/\.\d+Z$/, "Z"),
    };
    const patched = await kubectl.run([
      "patch",
      "mi",
      "lagging",
      "-n",
      "default",
      "--subresource=status",
      "--type=merge",
      "-p",
      JSON.stringify({ status }),
    ]);
    expectSuccess(patched, "patch lagging status");

    const table = await kubectl.run(["get", "mi", "-n", "default"]);
    expectSuccess(table, "get mi");
    const [header, ...rows] = table.stdout.trim().split("\n");
    expect(header.split(/\s+/)).toEqual(["NAME", "READY", "SYNCED", "DIGEST", "NODES", "LAG", "AGE"]);
    const lagging = rows.find((row) => row.startsWith("lagging "))?.split(/\s+/);
    expect(lagging?.slice(0, 6)).toEqual(["lagging", "False", "False", "sha256:0f973b6045", "3/4", "120m"]);

    const byCategory = await kubectl.run(["get", "stowage", "-n", "default", "-o", "name"]);
    expectSuccess(byCategory, "get stowage");
    expect(byCategory.stdout).toContain("modelimage.stowage.dev/lagging");
  });

  it("refuses a status with a condition status other than True, False or Unknown", async () => {
    const result = await kubectl.run([
      "patch",
      "mi",
      "vllm",
      "-n",
      "default",
      "--subresource=status",
      "--type=merge",
      "-p",
      JSON.stringify({
        status: {
          conditions: [
            {
              type: "Ready",
              status: "Maybe",
              reason: "X",
              message: "",
              lastTransitionTime: "2026-01-01T00:00:00Z",
            },
          ],
        },
      }),
    ]);
    expectRefusal(result, "status.conditions[0].status");
  });

  it.each(invalidSpecs)("refuses $what, naming $field", async ({ field, message, spec }) => {
    const result = await kubectl.apply([
      { apiVersion: API_VERSION, kind: KIND, metadata: { name: "refused", namespace: "default" }, spec },
    ]);
    expectRefusal(result, field.startsWith("unknown field") ? field : `${field}:`, message);
  });

  it("created none of the refused ModelImages", async () => {
    const refused = await kubectl.run([
      "get",
      "mi",
      "refused",
      "-n",
      "default",
      "--ignore-not-found",
      "-o",
      "yaml",
    ]);
    expectSuccess(refused, "get mi refused --ignore-not-found");
    expect(refused.stdout).toBe("");
    expect(parse(refused.stdout)).toBeNull();
    // The same server lists what was accepted, so the empty answer above is about "refused".
    const all = await kubectl.run(["get", "mi", "-n", "default", "-o", "name"]);
    expectSuccess(all, "get mi -o name");
    const names = all.stdout.trim().split("\n");
    expect(names).toContain("modelimage.stowage.dev/vllm");
    expect(names).not.toContain("modelimage.stowage.dev/refused");
  });
});
