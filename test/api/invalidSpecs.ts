import type { ModelImageSpec } from "../../src/api/modelImage.ts";

export interface InvalidCase {
  what: string;
  /** The field the API server names, as kubectl prints it. */
  field: string;
  /** A fragment of the message. */
  message: string;
  spec: Record<string, unknown>;
  /** Only the API server can refuse it (unknown fields); validateModelImageSpec does not look. */
  serverOnly?: boolean;
}

const image = "ghcr.io/acme/llama:1.2";
const variant = (extra: Record<string, unknown>) => ({ variants: [{ name: "cuda", image, ...extra }] });
const digest = `sha256:${"a".repeat(64)}`;

/** ModelImage specs `kubectl apply` must refuse, each with the field it must name. */
export const invalidSpecs: InvalidCase[] = [
  {
    what: "both image and variants",
    field: "spec",
    message: "exactly one of image or variants must be set",
    spec: { image, variants: [{ name: "cuda", image }] },
  },
  {
    what: "neither image nor variants",
    field: "spec",
    message: "exactly one of image or variants",
    spec: {},
  },
  {
    what: "an empty path component (Foo//bar)",
    field: "spec.image",
    message: "is not an image reference",
    spec: { image: "Foo//bar" },
  },
  {
    what: "an uppercase repository",
    field: "spec.image",
    message: '"ghcr.io/Acme/llama:1" is not an image reference',
    spec: { image: "ghcr.io/Acme/llama:1" },
  },
  {
    what: "a digest with too few hex digits",
    field: "spec.variants[0].image",
    message: "is not an image reference",
    spec: { variants: [{ name: "cuda", image: "ghcr.io/acme/llama@sha256:abc123" }] },
  },
  {
    what: "a digest with an unknown algorithm",
    field: "spec.image",
    message: "is not an image reference",
    spec: { image: `ghcr.io/acme/llama:1@md5:${"a".repeat(32)}` },
  },
  {
    what: "a tag starting with '-'",
    field: "spec.image",
    message: "is not an image reference",
    spec: { image: "alpine:-rc1" },
  },
  {
    what: "duplicate variant names",
    field: "spec.variants[1]",
    message: 'Duplicate value: {"name":"cuda"}',
    spec: {
      variants: [
        { name: "cuda", image },
        { name: "cuda", image: `${image}@${digest}` },
      ],
    },
  },
  {
    what: "a variant name with uppercase letters",
    field: "spec.variants[0].name",
    message: "should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
    spec: { variants: [{ name: "Cuda", image }] },
  },
  {
    what: "a variant name longer than 63 characters",
    field: "spec.variants[0].name",
    message: "63",
    spec: { variants: [{ name: "a".repeat(64), image }] },
  },
  {
    what: "an empty variants list",
    field: "spec.variants",
    message: "at least 1 items",
    spec: { variants: [] },
  },
  {
    what: "17 variants",
    field: "spec.variants",
    message: "16",
    spec: { variants: Array.from({ length: 17 }, (_, i) => ({ name: `v${i}`, image })) },
  },
  {
    what: "an interval under 30s",
    field: "spec.sync.interval",
    message: "must be at least 30s",
    spec: { image, sync: { interval: "5s" } },
  },
  {
    what: "an interval that is not a Go duration",
    field: "spec.sync.interval",
    message: 'Invalid value: "ten minutes"',
    spec: { image, sync: { interval: "ten minutes" } },
  },
  {
    what: "a negative interval",
    field: "spec.sync.interval",
    message: 'Invalid value: "-1h"',
    spec: { image, sync: { interval: "-1h" } },
  },
  {
    what: "an interval past one year",
    field: "spec.sync.interval",
    message: "must be at most 8760h",
    spec: { image, sync: { interval: "8761h" } },
  },
  {
    what: "an interval past Go's duration limit",
    field: "spec.sync.interval",
    message: "must be at most 8760h",
    spec: { image, sync: { interval: "99999999999h" } },
  },
  {
    what: "a holdTimeout past one year",
    field: "spec.prewarm.holdTimeout",
    message: "must be at most 8760h",
    spec: { image, prewarm: { holdTimeout: "9000h" } },
  },
  {
    what: "a registry port of 65536",
    field: "spec.image",
    message: "the registry port must be between 1 and 65535",
    spec: { image: "registry.example.com:65536/acme/llama:1" },
  },
  {
    what: "a registry port of 0 in a variant",
    field: "spec.variants[0].image",
    message: "the registry port must be between 1 and 65535",
    spec: { variants: [{ name: "cuda", image: "localhost:0/acme/llama:1" }] },
  },
  {
    what: "a priority past int32",
    field: "spec.prewarm.priority",
    message: "should be less than or equal to 2147483647",
    spec: { image, prewarm: { priority: 2147483648 } },
  },
  {
    what: "minReadyNodes past 100000",
    field: "spec.prewarm.minReadyNodes",
    message: "should be less than or equal to 100000",
    spec: { image, prewarm: { minReadyNodes: 100001 } },
  },
  {
    what: "a node selector value with a space",
    field: "spec.variants[0].nodeSelector.tier",
    message: 'Invalid value: "gpu large"',
    spec: variant({ nodeSelector: { tier: "gpu large" } }),
  },
  {
    what: "a node selector value of 64 characters",
    field: "spec.variants[0].nodeSelector.tier",
    message: "63",
    spec: variant({ nodeSelector: { tier: "a".repeat(64) } }),
  },
  {
    what: "a node selector key starting with '-'",
    field: "spec.variants[0].nodeSelector",
    message: "keys must be qualified label names",
    spec: variant({ nodeSelector: { "-bad": "true", "nvidia.com/gpu.present": "true" } }),
  },
  {
    what: "a node selector key whose name is 64 characters",
    field: "spec.variants[0].nodeSelector",
    message: "a name of at most 63 characters",
    spec: variant({ nodeSelector: { [`example.com/${"n".repeat(64)}`]: "true" } }),
  },
  {
    what: "a node selector key with an uppercase prefix",
    field: "spec.variants[0].nodeSelector",
    message: "an optional DNS subdomain prefix",
    spec: variant({ nodeSelector: { "Example.com/gpu": "true" } }),
  },
  {
    what: "a platform without an architecture",
    field: "spec.variants[0].platforms[0]",
    message: 'Invalid value: "linux"',
    spec: variant({ platforms: ["linux"] }),
  },
  {
    what: "an uppercase platform",
    field: "spec.variants[0].platforms[1]",
    message: 'Invalid value: "Linux/AMD64"',
    spec: variant({ platforms: ["linux/arm64/v8", "Linux/AMD64"] }),
  },
  {
    what: "sync.platforms mixing auto and platforms",
    field: "spec.sync.platforms",
    message: 'either ["auto"] alone or a list of os/arch[/variant] platforms, not both',
    spec: { image, sync: { platforms: ["auto", "linux/amd64"] } },
  },
  {
    what: "a malformed sync platform",
    field: "spec.sync.platforms[0]",
    message: 'Invalid value: "amd64"',
    spec: { image, sync: { platforms: ["amd64"] } },
  },
  {
    what: "allPlatforms together with a platform list",
    field: "spec.sync.allPlatforms",
    message: "allPlatforms copies every platform",
    spec: { image, sync: { allPlatforms: true, platforms: ["linux/amd64"] } },
  },
  {
    what: "a pull secret name with uppercase and '_'",
    field: "spec.pullSecrets[0].name",
    message: 'Invalid value: "Bad_Name"',
    spec: { image, pullSecrets: [{ name: "Bad_Name" }] },
  },
  {
    what: "maxConcurrentNodes 0",
    field: "spec.prewarm.maxConcurrentNodes",
    message: "should be greater than or equal to 1",
    spec: { image, prewarm: { maxConcurrentNodes: 0 } },
  },
  {
    what: "maxConcurrentNodes 1001",
    field: "spec.prewarm.maxConcurrentNodes",
    message: "should be less than or equal to 1000",
    spec: { image, prewarm: { maxConcurrentNodes: 1001 } },
  },
  {
    what: "minReadyNodes -1",
    field: "spec.prewarm.minReadyNodes",
    message: "should be greater than or equal to 0",
    spec: { image, prewarm: { minReadyNodes: -1 } },
  },
  {
    what: "a holdTimeout that is not a duration",
    field: "spec.prewarm.holdTimeout",
    message: 'Invalid value: "forever"',
    spec: { image, prewarm: { holdTimeout: "forever" } },
  },
  {
    what: "an unknown field spec.imagee",
    field: 'unknown field "spec.imagee"',
    message: "strict decoding error",
    spec: { image, imagee: image },
    serverOnly: true,
  },
  {
    what: "selector instead of nodeSelector in a variant",
    field: 'unknown field "spec.variants[0].selector"',
    message: "strict decoding error",
    spec: variant({ selector: { "kubernetes.io/arch": "arm64" } }),
    serverOnly: true,
  },
];

export function asSpec(spec: Record<string, unknown>): ModelImageSpec {
  return spec as ModelImageSpec;
}
