import { describe, expect, it } from "vitest";
import {
  checkSinglePlatform,
  formatPlatform,
  matchesPlatform,
  parsePlatform,
  parsePlatformList,
  selectManifests,
} from "../../src/oci/platforms.ts";
import { type ImageIndex, MediaType } from "../../src/oci/types.ts";
import { StowageError } from "../../src/util/errors.ts";

const digest = (n: number) => `sha256:${String(n).repeat(64).slice(0, 64)}`;
const index: ImageIndex = {
  schemaVersion: 2,
  mediaType: MediaType.OciIndex,
  manifests: [
    {
      mediaType: MediaType.OciManifest,
      digest: digest(1),
      size: 10,
      platform: { os: "linux", architecture: "amd64" },
    },
    {
      mediaType: MediaType.OciManifest,
      digest: digest(2),
      size: 10,
      platform: { os: "linux", architecture: "arm64", variant: "v8" },
    },
    {
      mediaType: MediaType.OciManifest,
      digest: digest(3),
      size: 10,
      platform: { os: "unknown", architecture: "unknown" },
      annotations: {
        "vnd.docker.reference.digest": digest(1),
        "vnd.docker.reference.type": "attestation-manifest",
      },
    },
  ],
};

function reasonOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof StowageError ? err.reason : "not a StowageError";
  }
  return undefined;
}

describe("platforms", () => {
  it("parses os/architecture/variant and formats it back", () => {
    expect(parsePlatform("linux/arm64/v8")).toEqual({ os: "linux", architecture: "arm64", variant: "v8" });
    expect(formatPlatform(parsePlatform("linux/amd64"))).toBe("linux/amd64");
    expect(formatPlatform(parsePlatform("linux/arm64/v8"))).toBe("linux/arm64/v8");
  });

  it("folds architecture aliases like x86_64 and aarch64", () => {
    expect(parsePlatform("linux/x86_64")).toEqual({ os: "linux", architecture: "amd64" });
    expect(parsePlatform("linux/aarch64")).toEqual({ os: "linux", architecture: "arm64" });
  });

  it("rejects malformed platforms with InvalidArgument naming the input", () => {
    expect(reasonOf(() => parsePlatform("linux"))).toBe("InvalidArgument");
    expect(reasonOf(() => parsePlatform("linux/amd64/v1/extra"))).toBe("InvalidArgument");
    expect(reasonOf(() => parsePlatform("linux/AMD 64"))).toBe("InvalidArgument");
    expect(() => parsePlatform("linux")).toThrow(/invalid platform "linux"/);
  });

  it("splits comma lists and repeated flags, dropping duplicates", () => {
    const list = parsePlatformList(["linux/amd64,linux/arm64", "linux/amd64"]);
    expect(list.map(formatPlatform)).toEqual(["linux/amd64", "linux/arm64"]);
  });

  it("matches linux/arm64 to variant v8 or no variant, but not to v7", () => {
    const arm64 = parsePlatform("linux/arm64");
    expect(matchesPlatform(arm64, { os: "linux", architecture: "arm64", variant: "v8" })).toBe(true);
    expect(matchesPlatform(arm64, { os: "linux", architecture: "arm64" })).toBe(true);
    expect(matchesPlatform(arm64, { os: "linux", architecture: "arm64", variant: "v9" })).toBe(false);
    expect(matchesPlatform(parsePlatform("linux/arm/v6"), { os: "linux", architecture: "arm" })).toBe(false);
    expect(matchesPlatform(parsePlatform("linux/amd64"), { os: "windows", architecture: "amd64" })).toBe(
      false,
    );
    expect(matchesPlatform(parsePlatform("linux/amd64"), undefined)).toBe(false);
  });

  it("selects only the requested platform and the attestation that describes it", () => {
    const selection = selectManifests(index, [parsePlatform("linux/amd64")]);
    expect(selection.selected.map((d) => d.digest)).toEqual([digest(1), digest(3)]);
    expect(selection.keepsAll).toBe(false);
  });

  it("selects every entry when no platform is given, and says so", () => {
    expect(selectManifests(index).keepsAll).toBe(true);
    expect(
      selectManifests(index, [parsePlatform("linux/amd64"), parsePlatform("linux/arm64")]).keepsAll,
    ).toBe(true);
  });

  it("refuses a platform list that matches nothing with PlatformNotFound listing what the index has", () => {
    expect(reasonOf(() => selectManifests(index, [parsePlatform("linux/s390x")]))).toBe("PlatformNotFound");
    expect(() => selectManifests(index, [parsePlatform("linux/s390x")])).toThrow(
      /linux\/s390x.*linux\/amd64, linux\/arm64\/v8/,
    );
  });

  it("checks a single-platform image's config against the filter", () => {
    expect(() =>
      checkSinglePlatform({ os: "linux", architecture: "amd64" }, [parsePlatform("linux/amd64")], "x"),
    ).not.toThrow();
    expect(
      reasonOf(() =>
        checkSinglePlatform({ os: "linux", architecture: "amd64" }, [parsePlatform("linux/arm64")], "x"),
      ),
    ).toBe("PlatformNotFound");
  });
});
