import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { root } from "../e2e/helpers.ts";

const script = join(root, "charts/stowage/files/argocd/health.lua");
const sandbox = join(root, "test/argocd/sandbox.lua");
const dir = mkdtempSync(join(tmpdir(), "stowage-argocd-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Health {
  name: string;
  status?: string;
  message?: string;
  error?: string;
}

/** Run a health script in the Argo CD-shaped sandbox (lua5.1 + dkjson) over named objects. */
function runHealth(scriptPath: string, samples: { name: string; object: object }[]): Promise<Health[]> {
  const file = join(dir, `samples-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify(samples));
  return new Promise((resolve, reject) => {
    execFile(
      "/usr/bin/lua5.1",
      [sandbox, scriptPath, file],
      { cwd: dir, timeout: 30_000 },
      (error, stdout, stderr) => {
        if (error) return reject(new Error(`lua5.1 failed: ${stderr}`));
        resolve(
          stdout
            .trim()
            .split("\n")
            .map((line) => JSON.parse(line) as Health),
        );
      },
    );
  });
}

const condition = (type: string, status: string, reason: string, message: string) => ({
  type,
  status,
  reason,
  message,
  lastTransitionTime: "2026-11-26T12:00:00Z",
});
const modelImage = (generation: number, status?: object) => ({
  apiVersion: "stowage.dev/v1alpha1",
  kind: "ModelImage",
  metadata: { name: "llama3-serve", namespace: "ml", generation },
  spec: { image: "docker.io/vllm/vllm-openai:v0.6.3" },
  ...(status ? { status } : {}),
});

const samples = [
  { name: "new, no status", object: modelImage(1), expect: { status: "Progressing" } },
  {
    name: "ready",
    object: modelImage(2, {
      observedGeneration: 2,
      conditions: [
        condition("Ready", "True", "Ready", "cache holds sha256:ab… and 8/8 nodes are warm"),
        condition("Reconciling", "False", "Ready", ""),
      ],
    }),
    expect: { status: "Healthy", message: "cache holds sha256:ab… and 8/8 nodes are warm" },
  },
  {
    name: "ready but spec changed since",
    object: modelImage(3, {
      observedGeneration: 2,
      conditions: [condition("Ready", "True", "Ready", "old news")],
    }),
    expect: {
      status: "Progressing",
      message: "Waiting for the controller to observe generation 3 (status is for generation 2)",
    },
  },
  {
    name: "reconciling",
    object: modelImage(1, {
      observedGeneration: 1,
      conditions: [
        condition("Ready", "False", "Mirroring", "copying 12.0 GiB of 21.4 GiB"),
        condition("Reconciling", "True", "Mirroring", "copying 12.0 GiB of 21.4 GiB from nvcr.io"),
      ],
    }),
    expect: { status: "Progressing", message: "copying 12.0 GiB of 21.4 GiB from nvcr.io" },
  },
  {
    name: "stalled",
    object: modelImage(1, {
      observedGeneration: 1,
      conditions: [
        condition("Ready", "False", "AuthFailed", "x"),
        condition(
          "Stalled",
          "True",
          "AuthFailed",
          'pull secret "ngc" in namespace "ml" is not of type kubernetes.io/dockerconfigjson',
        ),
      ],
    }),
    expect: {
      status: "Degraded",
      message: 'pull secret "ngc" in namespace "ml" is not of type kubernetes.io/dockerconfigjson',
    },
  },
  {
    name: "stalled without a message uses the reason",
    object: modelImage(1, {
      observedGeneration: 1,
      conditions: [{ type: "Stalled", status: "True", reason: "ImageNotFound" }],
    }),
    expect: { status: "Degraded", message: "ImageNotFound" },
  },
  {
    name: "suspended",
    object: {
      ...modelImage(2, {
        observedGeneration: 2,
        conditions: [
          condition("Ready", "False", "Suspended", "spec.suspend is true: no upstream checks"),
          condition("Reconciling", "False", "Suspended", "spec.suspend is true: no upstream checks"),
        ],
      }),
      spec: { image: "docker.io/vllm/vllm-openai:v0.6.3", suspend: true },
    },
    expect: { status: "Suspended", message: "spec.suspend is true: no upstream checks" },
  },
  {
    name: "not ready, not reconciling, not stalled",
    object: modelImage(1, {
      observedGeneration: 1,
      conditions: [condition("Ready", "False", "PrewarmPending", "3/8 nodes warm")],
    }),
    expect: { status: "Progressing", message: "3/8 nodes warm" },
  },
  {
    name: "node cache ready",
    object: {
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "gpu-1", generation: 4 },
      status: {
        heartbeatTime: "2026-11-26T12:00:00Z",
        conditions: [condition("Ready", "True", "AllPresent", "2 images present")],
      },
    },
    expect: { status: "Healthy", message: "2 images present" },
  },
  {
    name: "node cache pulling",
    object: {
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "gpu-2", generation: 1 },
      status: { conditions: [condition("Ready", "False", "Pulling", "pulling 1 of 2 images")] },
    },
    expect: { status: "Progressing", message: "pulling 1 of 2 images" },
  },
];

describe("Argo CD health check for ModelImage and NodeCache", () => {
  it("maps conditions to Healthy, Progressing, Suspended and Degraded with the condition's message, in Argo CD's sandbox", async () => {
    const results = await runHealth(script, samples);
    expect(results.map((r) => r.error).filter(Boolean)).toEqual([]);
    for (const [i, sample] of samples.entries()) {
      expect({ ...results[i], sample: sample.name }).toMatchObject({
        name: sample.name,
        sample: sample.name,
        ...sample.expect,
      });
    }
  });

  it("runs without string or math, as Argo CD's gopher-lua sandbox has neither (the sandbox itself refuses them)", async () => {
    const usesString = join(dir, "uses-string.lua");
    writeFileSync(usesString, 'return { status = string.upper("healthy") }');
    const usesMethod = join(dir, "uses-method.lua");
    writeFileSync(usesMethod, 'return { status = ("healthy"):upper() }');
    const usesMath = join(dir, "uses-math.lua");
    writeFileSync(usesMath, "return { status = tostring(math.floor(1.5)) }");
    for (const file of [usesString, usesMethod, usesMath]) {
      const [result] = await runHealth(file, [{ name: "probe", object: modelImage(1) }]);
      expect(result.error, file).toMatch(/attempt to index/);
    }
  });

  it("is the script the argocd-cm snippet ships, for both kinds", () => {
    const lua = readFileSync(script, "utf8");
    const snippet = parse(readFileSync(join(root, "examples/argocd/argocd-cm-health.yaml"), "utf8")) as {
      data: Record<string, string>;
    };
    expect(Object.keys(snippet.data).sort()).toEqual([
      "resource.customizations.health.stowage.dev_ModelImage",
      "resource.customizations.health.stowage.dev_NodeCache",
    ]);
    for (const value of Object.values(snippet.data)) expect(value).toBe(lua);
  });
});
