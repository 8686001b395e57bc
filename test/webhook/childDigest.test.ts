/**
 * A pod pinned to the per-platform child manifest of a multi-platform ModelImage (e.g. the amd64
 * digest `crane digest --platform linux/amd64` prints) is held like one naming the tag or the
 * index: the webhook's lookups, fed by informers on the API server (the double or the real one),
 * know which single-platform digests the planner assigned to nodes for each variant.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadCrd } from "../../src/api/crds.ts";
import { ModelImageResource } from "../../src/api/modelImage.ts";
import { type NodeCache, NodeCacheResource } from "../../src/api/nodeCache.ts";
import { type KubeClient, type KubeObject, Resources } from "../../src/kube/client.ts";
import { Manager } from "../../src/kube/manager.ts";
import { reviewPodAdmission } from "../../src/webhook/admission.ts";
import { type AdmissionWebhook, setupWebhook } from "../../src/webhook/index.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { eventually, startCluster } from "../kube/helpers.ts";
import { DIGEST_A, DIGEST_B, DIGEST_C, pod, review } from "./helpers.ts";

const AMD64 = `sha256:${"d".repeat(64)}`;
const ARM64 = `sha256:${"e".repeat(64)}`;
const OTHER = `sha256:${"f".repeat(64)}`;

let api: TestCluster;
let client: KubeClient;
let manager: Manager;
let webhook: AdmissionWebhook;

beforeAll(async () => {
  ({ cluster: api, client } = await startCluster({
    crds: [loadCrd("modelimages.stowage.dev") as never, loadCrd("nodecaches.stowage.dev") as never],
  }));
  await client.resource(Resources.Namespace).create({ metadata: { name: "ml" } });
  await client.resource(ModelImageResource).create({
    apiVersion: "stowage.dev/v1alpha1",
    kind: "ModelImage",
    metadata: { name: "triton", namespace: "ml" },
    spec: { image: "nvcr.io/nvidia/tritonserver:24.08", prewarm: { holdPods: true } },
  } as KubeObject);
  // What the controller writes once the index is mirrored: the index digests in status ...
  await client.resource(ModelImageResource).patchStatus(
    "triton",
    {
      status: {
        variants: [
          {
            name: "default",
            image: "nvcr.io/nvidia/tritonserver:24.08",
            sourceDigest: DIGEST_A,
            cacheDigest: DIGEST_B,
          },
        ],
      },
    },
    "ml",
  );
  // ... and the planner's NodeCaches: each node gets its platform's child manifest.
  const nodeCaches = client.resource<NodeCache>(NodeCacheResource);
  for (const [node, digest] of [
    ["gpu-amd64", AMD64],
    ["gpu-arm64", ARM64],
  ] as const)
    await nodeCaches.create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: node },
      spec: {
        nodeName: node,
        images: [
          {
            image: "nvcr.io/nvidia/tritonserver:24.08",
            digest,
            requestedBy: [{ namespace: "ml", name: "triton", variant: "default" }],
          },
          // another ModelImage's image on the same node: not triton's
          { image: "ghcr.io/acme/other:1", digest: OTHER, requestedBy: [{ namespace: "ml", name: "other" }] },
        ],
      },
    });
  manager = new Manager({ client });
  webhook = setupWebhook(manager, { namespace: "stowage-system", nodeCaches: true });
  await manager.start();
  await eventually(
    "the webhook's caches",
    async () =>
      webhook.modelImages.byNamespace("ml").length === 1 &&
      webhook.lookups.platformDigests?.("ml", "triton", "default")?.size === 2,
  );
});

afterAll(async () => {
  await manager?.stop();
  await api?.stop();
});

function held(image: string): boolean {
  const outcome = reviewPodAdmission(
    review(pod("ml", { containers: [{ name: "serve", image }] })),
    webhook.lookups,
  );
  return outcome.decision?.hold === true;
}

describe("pods pinned to a per-platform child digest", () => {
  it("holds a pod pinned to the amd64 or the arm64 child of the ModelImage's index", () => {
    expect(held(`nvcr.io/nvidia/tritonserver@${AMD64}`)).toBe(true);
    expect(held(`nvcr.io/nvidia/tritonserver:24.08@${ARM64}`)).toBe(true);
  });

  it("still holds by tag and by the index digests, and not by a digest another ModelImage was planned as or an unknown one", () => {
    expect(held("nvcr.io/nvidia/tritonserver:24.08")).toBe(true);
    expect(held(`nvcr.io/nvidia/tritonserver@${DIGEST_A}`)).toBe(true);
    expect(held(`nvcr.io/nvidia/tritonserver@${OTHER}`)).toBe(false);
    expect(held(`nvcr.io/nvidia/tritonserver@${DIGEST_C}`)).toBe(false);
    // the child digest under another repository names another image
    expect(held(`ghcr.io/acme/other@${AMD64}`)).toBe(false);
  });

  it("follows the planner: a child digest no NodeCache lists any more no longer matches", async () => {
    await client.resource<NodeCache>(NodeCacheResource).delete("gpu-arm64");
    await eventually(
      "the arm64 NodeCache gone from the webhook's cache",
      async () => webhook.lookups.platformDigests?.("ml", "triton", "default")?.has(ARM64) === false,
    );
    expect(held(`nvcr.io/nvidia/tritonserver@${ARM64}`)).toBe(false);
    expect(held(`nvcr.io/nvidia/tritonserver@${AMD64}`)).toBe(true);
  });
});
