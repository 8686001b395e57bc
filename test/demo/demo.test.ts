import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";
import { apiBackend } from "../../testkit/cluster.ts";
import { nodesUnavailableHere } from "../../testkit/sandbox.ts";

/**
 * Where nodes can run (root, /usr/bin/containerd) the demo must run them and pre-warm them: it is
 * told --require-nodes, so a containerd that does not start, or a planner that does not run,
 * fails it instead of quietly becoming a mirror-only run. Elsewhere the mirror-only fallback is
 * what a user without containerd gets, and it must say so.
 */
const whyNoNodes = nodesUnavailableHere();

async function demo(args: string[]): Promise<{ out: string; err: string; code: number | null }> {
  // The real-k8s project runs the same demo on the real control plane.
  const child = spawn("npm", ["run", "--silent", "demo", "--", "--api", apiBackend(), ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout.on("data", (chunk: Buffer) => {
    out += chunk.toString();
  });
  let err = "";
  child.stderr.on("data", (chunk: Buffer) => {
    err += chunk.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
  return { out, err, code };
}

/** What every run shows: the example applied, both variants in the cache, the time to Ready. */
function expectMirrored(out: string): void {
  expect(out).toContain("modelimage.stowage.dev/llama3-serve created");
  expect(out).toMatch(
    /variant cuda +upstream sha256:[0-9a-f]{10} → cache sha256:[0-9a-f]{10} \(linux\/amd64\) held by the cache/,
  );
  expect(out).toMatch(
    /variant cpu +upstream sha256:[0-9a-f]{10} → cache sha256:[0-9a-f]{10} \([^)]*linux\/arm64[^)]*\) held by the cache/,
  );
  expect(out).toMatch(/time to Ready +\d+\.\d s/);
}

function expectMirrorOnly(out: string, why: string): void {
  expect(out).toContain(`MIRROR-ONLY: no containerd nodes (${why})`);
  expect(out).toContain(`nodes            NONE: ${why} — MIRROR-ONLY run, nothing was pre-warmed`);
  expect(out).toContain(
    "result           Ready (MIRROR-ONLY, no nodes): the cache holds every variant; pre-warm was not shown",
  );
}

// The README's first quick-start command must keep working: run the whole sandbox headless.
describe("npm run demo -- --ci", () => {
  it(whyNoNodes === undefined
    ? "applies the example with kubectl, reaches Ready with every sandbox node holding its variant, and exits 0"
    : "applies the example with kubectl, reaches Ready mirror-only (no containerd nodes here), says so, and exits 0", async () => {
    const { out, err, code } = await demo(["--ci", ...(whyNoNodes === undefined ? ["--require-nodes"] : [])]);
    expect(err).toBe("");
    expectMirrored(out);
    if (whyNoNodes === undefined) {
      // Real containerd nodes: each holds its variant, the old-driver GPU node is skipped with the reason.
      expect(out).toMatch(/node gpu-node-1 +amd64, containerd (overlayfs|native) \+ stowage agent/);
      expect(out).toMatch(/gpu-node-1 +amd64 +cuda: present/);
      expect(out).toMatch(/cpu-node-arm64 +arm64 +cpu: present/);
      expect(out).toMatch(/gpu-node-old +amd64 +cuda: skipped \(CudaDriverTooOld/);
      expect(out).toContain("result           Ready, and every node holds its variant");
      expect(out).not.toContain("MIRROR-ONLY");
    } else {
      expectMirrorOnly(out, whyNoNodes);
    }
    expect(code).toBe(0);
  }, 180_000);

  it("runs mirror-only with --no-nodes, as a machine without containerd does, and says so", async () => {
    const { out, err, code } = await demo(["--ci", "--no-nodes"]);
    expect(err).toBe("");
    expectMirrored(out);
    expectMirrorOnly(out, "disabled (--no-nodes)");
    expect(code).toBe(0);
  }, 180_000);
});
