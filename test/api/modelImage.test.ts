import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { loadAllCrds, loadCrd } from "../../src/api/crds.ts";
import {
  BOUNDED_DURATION_PATTERN,
  DNS_LABEL_PATTERN,
  DNS_SUBDOMAIN_PATTERN,
  DURATION_PATTERN,
  explicitPlatforms,
  holdTimeoutMs,
  IMAGE_REFERENCE_PATTERN,
  LABEL_KEY_PATTERN,
  LABEL_VALUE_PATTERN,
  type ModelImageSpec,
  normaliseImage,
  PLATFORM_PATTERN,
  REGISTRY_PORT_IN_RANGE_PATTERN,
  REGISTRY_WITH_PORT_PATTERN,
  SYNC_PLATFORM_PATTERN,
  statusColumns,
  syncIntervalMs,
  validateModelImageSpec,
  variantsOf,
  withDefaults,
} from "../../src/api/modelImage.ts";
import { parseReference } from "../../src/oci/reference.ts";
import { asSpec, invalidSpecs } from "./invalidSpecs.ts";

const digest = `sha256:0f973b6045${"a".repeat(54)}`;

describe("variantsOf", () => {
  it("turns the image shorthand into one variant named default that every node gets", () => {
    expect(variantsOf({ image: "alpine:3.20" })).toEqual([{ name: "default", image: "alpine:3.20" }]);
  });

  it("returns the declared variants as they are", () => {
    const variants = [
      { name: "cuda", image: "nvcr.io/nvidia/cuda:12", nodeSelector: { "nvidia.com/gpu.present": "true" } },
      { name: "cpu", image: "ghcr.io/acme/cpu:1" },
    ];
    expect(variantsOf({ variants })).toBe(variants);
  });

  it("returns no variants for a spec with neither", () => {
    expect(variantsOf({})).toEqual([]);
  });
});

describe("withDefaults", () => {
  it("fills in the CRD's defaults without touching the input", () => {
    const spec: ModelImageSpec = { image: "alpine" };
    expect(withDefaults(spec)).toEqual({
      image: "alpine",
      pullSecrets: [],
      sync: { interval: "10m", platforms: ["auto"], allPlatforms: false, referrers: false },
      suspend: false,
      prewarm: { enabled: true, maxConcurrentNodes: 4, holdPods: false, holdTimeout: "15m", priority: 0 },
    });
    expect(spec).toEqual({ image: "alpine" });
  });

  it("keeps what the user set, including minReadyNodes 0 and false booleans", () => {
    const defaulted = withDefaults({
      image: "alpine",
      sync: { interval: "1h", referrers: true },
      suspend: true,
      prewarm: { enabled: false, minReadyNodes: 0, maxConcurrentNodes: 1 },
    });
    expect(defaulted.sync).toEqual({
      interval: "1h",
      platforms: ["auto"],
      allPlatforms: false,
      referrers: true,
    });
    expect(defaulted.suspend).toBe(true);
    expect(defaulted.prewarm).toMatchObject({ enabled: false, minReadyNodes: 0, maxConcurrentNodes: 1 });
  });

  it("leaves minReadyNodes unset (every matching node) when the user did not set it", () => {
    expect("minReadyNodes" in withDefaults({ image: "alpine" }).prewarm).toBe(false);
  });

  it("uses the same default values as the CRD schema", () => {
    type Defaults = { default?: unknown; properties: Record<string, { default?: unknown }> };
    type Versions = {
      schema: { openAPIV3Schema: { properties: { spec: { properties: Record<string, Defaults> } } } };
    }[];
    const versions = loadCrd("modelimages.stowage.dev").spec.versions as Versions;
    const schema = versions[0].schema.openAPIV3Schema.properties.spec.properties;
    const defaulted = withDefaults({ image: "alpine" });
    for (const key of ["interval", "platforms", "allPlatforms", "referrers"] as const)
      expect(defaulted.sync[key]).toEqual(schema.sync.properties[key].default);
    for (const key of ["enabled", "maxConcurrentNodes", "holdPods", "holdTimeout", "priority"] as const)
      expect(defaulted.prewarm[key]).toEqual(schema.prewarm.properties[key].default);
    expect(defaulted.suspend).toBe(schema.suspend.default);
  });
});

describe("durations and platforms read from a spec", () => {
  it("reads the sync interval, 10 minutes by default", () => {
    expect(syncIntervalMs({ image: "alpine" })).toBe(600_000);
    expect(syncIntervalMs({ image: "alpine", sync: { interval: "1h30m" } })).toBe(5_400_000);
  });

  it("never checks upstream more often than every 30 s, even for objects that skipped validation", () => {
    expect(syncIntervalMs({ image: "alpine", sync: { interval: "1s" } })).toBe(30_000);
  });

  it("reads the hold timeout, 15 minutes by default", () => {
    expect(holdTimeoutMs({ image: "alpine" })).toBe(900_000);
    expect(holdTimeoutMs({ image: "alpine", prewarm: { holdTimeout: "90s" } })).toBe(90_000);
  });

  it("prefers a variant's platforms over sync.platforms, and treats [auto] as no explicit list", () => {
    const cuda = { name: "cuda", image: "x:1", platforms: ["linux/amd64"] };
    const cpu = { name: "cpu", image: "y:1" };
    const spec: ModelImageSpec = {
      variants: [cuda, cpu],
      sync: { platforms: ["linux/arm64", "linux/amd64"] },
    };
    expect(explicitPlatforms(spec, cuda)).toEqual(["linux/amd64"]);
    expect(explicitPlatforms(spec, cpu)).toEqual(["linux/arm64", "linux/amd64"]);
    expect(explicitPlatforms({ variants: [cpu], sync: { platforms: ["auto"] } }, cpu)).toBeUndefined();
    expect(explicitPlatforms({ variants: [cpu] }, cpu)).toBeUndefined();
  });

  it("normalises an image the way status reports it", () => {
    expect(normaliseImage("alpine")).toBe("docker.io/library/alpine:latest");
    expect(normaliseImage("ghcr.io/acme/x:1")).toBe("ghcr.io/acme/x:1");
    expect(() => normaliseImage("Foo//bar")).toThrow(/invalid reference/);
  });
});

describe("statusColumns", () => {
  it("shows one short digest and the ready/desired node sum", () => {
    expect(
      statusColumns([
        {
          name: "a",
          cacheDigest: digest,
          nodes: { desired: 4, ready: 3, pulling: 1, failed: 0, skipped: 0 },
        },
        {
          name: "b",
          cacheDigest: digest,
          nodes: { desired: 2, ready: 2, pulling: 0, failed: 0, skipped: 0 },
        },
      ]),
    ).toEqual({ digest: "sha256:0f973b6045", nodes: "5/6" });
  });

  it("counts digests when the variants differ, and leaves columns empty before anything is known", () => {
    expect(
      statusColumns([
        { name: "a", cacheDigest: digest },
        { name: "b", cacheDigest: `sha256:${"b".repeat(64)}` },
      ]),
    ).toEqual({ digest: "2 digests" });
    expect(statusColumns([{ name: "a" }])).toEqual({});
  });
});

describe("validateModelImageSpec (the CRD's checks, in code)", () => {
  it("accepts both examples", () => {
    for (const file of ["modelimage-llama.yaml", "modelimage-single.yaml"]) {
      const docs = parseAllDocuments(
        readFileSync(new URL(`../../examples/${file}`, import.meta.url), "utf8"),
      );
      const mi = docs.map((d) => d.toJS()).find((d) => d.kind === "ModelImage");
      expect(validateModelImageSpec(mi.spec)).toEqual([]);
    }
  });

  it.each(invalidSpecs.filter((c) => !c.serverOnly))(
    "names $field for $what, as the API server does",
    ({ field, spec }) => {
      const problems = validateModelImageSpec(asSpec(spec));
      expect(problems.map((p) => p.field)).toContain(field);
    },
  );
});

describe("the CRD and the code share their rules", () => {
  const crdText = readFileSync(new URL("../../crds/stowage.dev_modelimages.yaml", import.meta.url), "utf8");

  it.each([
    ["IMAGE_REFERENCE_PATTERN", IMAGE_REFERENCE_PATTERN],
    ["DNS_LABEL_PATTERN", DNS_LABEL_PATTERN],
    ["DNS_SUBDOMAIN_PATTERN", DNS_SUBDOMAIN_PATTERN],
    ["LABEL_KEY_PATTERN", LABEL_KEY_PATTERN],
    ["LABEL_VALUE_PATTERN", LABEL_VALUE_PATTERN],
    ["PLATFORM_PATTERN", PLATFORM_PATTERN],
    ["SYNC_PLATFORM_PATTERN", SYNC_PLATFORM_PATTERN],
    ["DURATION_PATTERN", DURATION_PATTERN],
    ["BOUNDED_DURATION_PATTERN", BOUNDED_DURATION_PATTERN],
    ["REGISTRY_WITH_PORT_PATTERN", REGISTRY_WITH_PORT_PATTERN],
    ["REGISTRY_PORT_IN_RANGE_PATTERN", REGISTRY_PORT_IN_RANGE_PATTERN],
  ])("writes %s into the CRD verbatim", (_name, pattern) => {
    expect(crdText).toContain(pattern);
  });

  it.each([
    "alpine",
    "alpine:3.20",
    "nvcr.io/nvidia/tritonserver:24.08-py3",
    "localhost:5000/a/b__c/d-e:tag",
    "[::1]:5000/foo/bar:1",
    "Foo/bar",
    `ghcr.io/acme/x:1@${digest}`,
    `ghcr.io/acme/x@sha512:${"c".repeat(128)}`,
    "Foo//bar",
    "ghcr.io/Acme/x",
    "x@sha256:abc",
    "x:",
    "x:-tag",
    "a/.b",
    "host:port/x",
    "",
  ])("agrees with the mirror engine's parser on %j", (reference) => {
    let parses = true;
    try {
      parseReference(reference);
    } catch {
      parses = false;
    }
    expect(new RegExp(IMAGE_REFERENCE_PATTERN).test(reference)).toBe(parses);
  });

  it("loads every CRD in crds/ by file name or by its own name", () => {
    expect(loadCrd("stowage.dev_modelimages.yaml").metadata?.name).toBe("modelimages.stowage.dev");
    expect(loadAllCrds().map((crd) => crd.metadata?.name)).toContain("modelimages.stowage.dev");
    expect(() => loadCrd("widgets.example.com")).toThrow(/no CRD "widgets.example.com"/);
  });
});
