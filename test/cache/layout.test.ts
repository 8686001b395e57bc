import { describe, expect, it } from "vitest";
import { cacheHostUrl } from "../../src/agent/hostsToml.ts";
import { cacheHostSegment, hostOfSegment, parseCachePath } from "../../src/cache/layout.ts";

const digest = `sha256:${"a".repeat(64)}`;

describe("cache layout", () => {
  it("reads the path the agent's hosts.toml makes containerd send, for every host form", () => {
    for (const host of ["ghcr.io", "127.0.0.1:5101", "docker.io", "[::1]:5000", "localhost:5000"]) {
      const prefix = new URL(cacheHostUrl("http://cache:5000", host)).pathname;
      const target = parseCachePath(`${prefix}/acme/app/manifests/v1`, host);
      expect(target, host).toMatchObject({
        upstream: host,
        repository: "acme/app",
        kind: "manifest",
        reference: "v1",
      });
      expect(`/v2/${target?.cacheRepository}`).toBe(`${prefix}/acme/app`);
      expect(hostOfSegment(cacheHostSegment(host))).toBe(host);
    }
  });

  it("takes the upstream from ?ns= when containerd uses the front as a plain mirror", () => {
    expect(parseCachePath(`/v2/acme/app/blobs/${digest}`, "ghcr.io")).toMatchObject({
      upstream: "ghcr.io",
      repository: "acme/app",
      cacheRepository: "ghcr.io/acme/app",
      kind: "blob",
    });
    expect(parseCachePath("/v2/alpine/manifests/3.20", "docker.io")).toMatchObject({
      upstream: "docker.io",
      repository: "library/alpine",
      cacheRepository: "docker.io/library/alpine",
    });
    expect(parseCachePath("/v2/library/alpine/manifests/3.20", "registry-1.docker.io")).toMatchObject({
      upstream: "docker.io",
      repository: "library/alpine",
    });
  });

  it("refuses names without an upstream host, and malformed references, with the reason a client can act on", () => {
    expect(() => parseCachePath("/v2/acme/app/manifests/v1", null)).toThrow(
      /does not start with an upstream host/,
    );
    expect(() => parseCachePath("/v2/ghcr.io/manifests/v1", null)).toThrow(/upstream host/);
    expect(() => parseCachePath("/v2/ghcr.io/acme/app/blobs/latest", null)).toThrow(/not a digest/);
    expect(() => parseCachePath("/v2/ghcr.io/Acme/app/manifests/v1", null)).toThrow(
      /invalid repository name/,
    );
    expect(parseCachePath("/v2/ghcr.io/acme/app/tags/list", null)).toBeUndefined();
  });
});
