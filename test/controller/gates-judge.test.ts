import { describe, expect, it } from "vitest";
import type { ModelImage } from "../../src/api/modelImage.ts";
import { type GatedPod, isGated, judge } from "../../src/controller/gates/index.ts";
import { modelImage, prewarmedCondition } from "../webhook/helpers.ts";

const created = Date.parse("2026-01-01T10:00:00Z");
const minute = 60_000;

function heldPod(heldFor: string | undefined, gates = ["stowage.dev/prewarm"]): GatedPod {
  return {
    metadata: {
      name: "p",
      namespace: "ml",
      creationTimestamp: "2026-01-01T10:00:00Z",
      ...(heldFor !== undefined ? { annotations: { "stowage.dev/held-for": heldFor } } : {}),
    },
    spec: { schedulingGates: gates.map((name) => ({ name })) },
  };
}

function lookup(...images: ModelImage[]) {
  return (key: string) => images.find((mi) => `${mi.metadata.namespace}/${mi.metadata.name}` === key);
}

const cold = (name: string, holdTimeout?: string) =>
  modelImage("ml", name, {
    image: `ghcr.io/acme/${name}:1`,
    prewarm: { holdPods: true, ...(holdTimeout ? { holdTimeout } : {}) },
  });
const warm = (name: string) =>
  modelImage(
    "ml",
    name,
    { image: `ghcr.io/acme/${name}:1`, prewarm: { holdPods: true } },
    { conditions: [prewarmedCondition()] },
  );

describe("deciding when a held pod is released", () => {
  it("keeps holding until every ModelImage the pod waits for is prewarmed", () => {
    const pod = heldPod("ml/a,ml/b");
    expect(judge(pod, lookup(warm("a"), cold("b")), created + minute).release).toBeUndefined();
    expect(judge(pod, lookup(warm("a"), warm("b")), created + minute).release).toBe("prewarmed");
  });

  it("releases when a ModelImage it waits for is gone or stops holding pods", () => {
    expect(judge(heldPod("ml/a"), lookup(), created).release).toBe("deleted");
    const stopped = modelImage("ml", "a", { image: "ghcr.io/acme/a:1", prewarm: { holdPods: false } });
    expect(judge(heldPod("ml/a"), lookup(stopped), created).release).toBe("released");
  });

  it("times out at creation plus the shortest holdTimeout of the ModelImages still cold (15 min by default)", () => {
    const pod = heldPod("ml/a,ml/b");
    const images = lookup(cold("a", "5m"), cold("b"));
    expect(judge(pod, images, created + 4 * minute).release).toBeUndefined();
    expect(judge(pod, images, created + 4 * minute).deadline).toBe(created + 5 * minute);
    expect(judge(pod, images, created + 5 * minute).release).toBe("timeout");
    expect(judge(heldPod("ml/b"), lookup(cold("b")), created + 15 * minute).release).toBe("timeout");
    expect(judge(heldPod("ml/b"), lookup(cold("b")), created + 14 * minute).release).toBeUndefined();
  });

  it("judges a pod held for a ModelImage whose holdTimeout is past Go's limit by the default timeout instead of failing", () => {
    const pod = heldPod("ml/a");
    const images = lookup(cold("a", "99999999999h"));
    expect(judge(pod, images, created + 14 * minute).release).toBeUndefined();
    expect(judge(pod, images, created + 15 * minute).release).toBe("timeout");
  });

  it("releases a gate without a held-for annotation only by the default timeout", () => {
    expect(judge(heldPod(undefined), lookup(), created + 14 * minute).release).toBeUndefined();
    expect(judge(heldPod(undefined), lookup(), created + 15 * minute).release).toBe("timeout");
  });

  it("treats only pods carrying the prewarm gate and not being deleted as held", () => {
    expect(isGated(heldPod("ml/a"))).toBe(true);
    expect(isGated(heldPod("ml/a", ["example.com/other"]))).toBe(false);
    const deleting = heldPod("ml/a");
    deleting.metadata = { ...deleting.metadata, deletionTimestamp: "2026-01-01T10:01:00Z" };
    expect(isGated(deleting)).toBe(false);
  });
});
