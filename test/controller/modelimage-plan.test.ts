import { describe, expect, it } from "vitest";
import type { ModelImage } from "../../src/api/modelImage.ts";
import {
  choosePlatforms,
  choosePlatformsForImage,
  type Node,
  nextSyncDelay,
  previousSyncAnswers,
} from "../../src/controller/modelimage/plan.ts";
import { formatPlatform } from "../../src/oci/platforms.ts";

const node = (name: string, arch: string, labels: Record<string, string>, ready = true): Node => ({
  metadata: { name, labels: { "kubernetes.io/os": "linux", "kubernetes.io/arch": arch, ...labels } },
  status: { conditions: [{ type: "Ready", status: ready ? "True" : "False" }] },
});
const mi = (spec: ModelImage["spec"]): ModelImage => ({
  apiVersion: "stowage.dev/v1alpha1",
  kind: "ModelImage",
  metadata: { name: "m", namespace: "ml" },
  spec,
});
const variant = { name: "gpu", image: "ghcr.io/acme/x:1", nodeSelector: { gpu: "true" } };

describe("ModelImage sync planning", () => {
  it("schedules the next check one interval ahead plus at most the jitter fraction of it", () => {
    expect(nextSyncDelay(600_000, 0.1, () => 0)).toBe(600_000);
    expect(nextSyncDelay(600_000, 0.1, () => 0.5)).toBe(630_000);
    expect(nextSyncDelay(600_000, 0.1, () => 0.999)).toBeLessThan(660_000);
    expect(nextSyncDelay(30_000, 0, () => 0.9)).toBe(30_000);
  });

  it("takes auto platforms from the Ready nodes the variant's selector matches", () => {
    const nodes = [
      node("a", "amd64", { gpu: "true" }),
      node("b", "arm64", { gpu: "true" }),
      node("c", "arm64", { gpu: "true" }, false),
      node("d", "s390x", {}),
    ];
    const choice = choosePlatforms(mi({ variants: [variant] }), variant, nodes);
    expect(choice.kind).toBe("list");
    if (choice.kind === "list")
      expect(choice.platforms.map(formatPlatform)).toEqual(["linux/amd64", "linux/arm64"]);
  });

  it("mirrors every platform when no Ready node matches, and says why", () => {
    expect(choosePlatforms(mi({ variants: [variant] }), variant, [node("d", "amd64", {})])).toEqual({
      kind: "all",
      noMatchingNodes: true,
    });
  });

  it("prefers allPlatforms, then an explicit list, over the nodes", () => {
    const nodes = [node("a", "amd64", { gpu: "true" })];
    expect(
      choosePlatforms(mi({ variants: [variant], sync: { allPlatforms: true } }), variant, nodes),
    ).toEqual({
      kind: "all",
      noMatchingNodes: false,
    });
    const listed = choosePlatforms(
      mi({ variants: [variant], sync: { platforms: ["linux/arm64/v8"] } }),
      variant,
      nodes,
    );
    expect(listed.kind === "list" && listed.platforms.map(formatPlatform)).toEqual(["linux/arm64/v8"]);
  });

  it("asks the cache tag for every platform that variants sharing the upstream image want, in any ModelImage", () => {
    const nodes = [node("a", "amd64", { gpu: "true" }), node("b", "arm64", { cpu: "true" })];
    const gpu = { name: "gpu", image: "ghcr.io/acme/x:1", nodeSelector: { gpu: "true" } };
    const cpu = { name: "cpu", image: "ghcr.io/acme/x:1", nodeSelector: { cpu: "true" } };
    const other = { name: "other", image: "ghcr.io/acme/y:1", nodeSelector: { cpu: "true" } };
    const owner = { ...mi({ variants: [gpu, other] }), metadata: { name: "a", namespace: "ml" } };
    const peer = { ...mi({ variants: [cpu] }), metadata: { name: "b", namespace: "team" } };
    const names = (choice: ReturnType<typeof choosePlatformsForImage>) =>
      choice.kind === "list" ? choice.platforms.map(formatPlatform) : choice.kind;
    // Alone, the gpu variant wants amd64; with the peer mirroring the same tag, arm64 too.
    expect(names(choosePlatformsForImage(owner, gpu, nodes, [owner]))).toEqual(["linux/amd64"]);
    expect(names(choosePlatformsForImage(owner, gpu, nodes, [owner, peer]))).toEqual([
      "linux/amd64",
      "linux/arm64",
    ]);
    expect(names(choosePlatformsForImage(peer, cpu, nodes, [owner, peer]))).toEqual([
      "linux/amd64",
      "linux/arm64",
    ]);
    // A variant of the same object with the same image counts too; one wanting everything wins.
    const everywhere = { name: "everywhere", image: "ghcr.io/acme/x:1", nodeSelector: { pool: "none" } };
    const both = mi({ variants: [gpu, everywhere] });
    expect(choosePlatformsForImage(both, gpu, nodes, [both])).toEqual({
      kind: "all",
      noMatchingNodes: false,
    });
    // Being deleted, a peer no longer shapes the tag.
    const leaving = { ...peer, metadata: { ...peer.metadata, deletionTimestamp: "2026-11-26T00:00:00Z" } };
    expect(names(choosePlatformsForImage(owner, gpu, nodes, [owner, leaving]))).toEqual(["linux/amd64"]);
  });

  it("trusts the recorded cache copy only for the same upstream digest and platforms it already holds", () => {
    const previous = {
      name: "gpu",
      sourceDigest: "sha256:up",
      cacheDigest: "sha256:filtered",
      platforms: ["linux/amd64", "linux/arm64/v8"],
    };
    const amd64 = {
      kind: "list" as const,
      platforms: [{ os: "linux", architecture: "amd64" }],
      fromNodes: true,
    };
    const riscv = {
      kind: "list" as const,
      platforms: [{ os: "linux", architecture: "riscv64" }],
      fromNodes: true,
    };
    expect(previousSyncAnswers(previous, "sha256:up", amd64)).toBe(true);
    expect(previousSyncAnswers(previous, "sha256:moved", amd64)).toBe(false);
    expect(previousSyncAnswers(previous, "sha256:up", riscv)).toBe(false);
    expect(previousSyncAnswers(previous, "sha256:up", { kind: "all", noMatchingNodes: false })).toBe(false);
  });
});
