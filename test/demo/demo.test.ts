import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";

// The README's first quick-start command must keep working: run the whole sandbox headless.
describe("npm run demo -- --ci", () => {
  it("applies the example with kubectl, reaches Ready with every sandbox node holding its variant (or mirror-only, said so), and exits 0", async () => {
    const child = spawn("npm", ["run", "--silent", "demo", "--", "--ci"], {
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
    expect(out).toContain("modelimage.stowage.dev/llama3-serve created");
    expect(out).toMatch(
      /variant cuda +upstream sha256:[0-9a-f]{10} → cache sha256:[0-9a-f]{10} \(linux\/amd64\) held by the cache/,
    );
    expect(out).toMatch(
      /variant cpu +upstream sha256:[0-9a-f]{10} → cache sha256:[0-9a-f]{10} \([^)]*linux\/arm64[^)]*\) held by the cache/,
    );
    expect(out).toMatch(/time to Ready +\d+\.\d s/);
    if (out.includes("containerd overlayfs") || out.includes("containerd native")) {
      // Real containerd nodes: each holds its variant, the old-driver GPU node is skipped with the reason.
      expect(out).toMatch(/gpu-node-1 +amd64 +cuda: present/);
      expect(out).toMatch(/cpu-node-arm64 +arm64 +cpu: present/);
      expect(out).toMatch(/gpu-node-old +amd64 +cuda: skipped \(CudaDriverTooOld/);
      expect(out).toContain("result           Ready, and every node holds its variant");
    } else {
      expect(out).toMatch(/nodes +none: .+ — mirror-only run/);
      expect(out).toContain("result           Ready (mirror-only): the cache holds every variant");
    }
    expect(err).toBe("");
    expect(code).toBe(0);
  }, 180_000);
});
