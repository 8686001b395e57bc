import { X509Certificate } from "node:crypto";
import jsonpatch from "fast-json-patch";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { warmNodeLabel } from "../../src/api/labels.ts";
import type { ModelImage } from "../../src/api/modelImage.ts";
import { createCertificateAuthority, issueServingCertificate } from "../../src/webhook/certs.ts";
import { startWebhookServer, type WebhookServer } from "../../src/webhook/server.ts";
import {
  DIGEST_A,
  DIGEST_B,
  DIGEST_C,
  type Json,
  modelImage,
  pod,
  postJson,
  prewarmedCondition,
  review,
  servedCertificate,
} from "./helpers.ts";

const hold = { prewarm: { holdPods: true } };

const modelImages: ModelImage[] = [
  modelImage("ml", "llama", { image: "ghcr.io/acme/llama:v3", ...hold }),
  modelImage(
    "ml",
    "triton",
    {
      variants: [
        { name: "gpu", image: "nvcr.io/nvidia/tritonserver:24.01", nodeSelector: { gpu: "true" } },
        { name: "cpu", image: "nvcr.io/nvidia/tritonserver:24.01-cpu" },
      ],
      ...hold,
    },
    {
      variants: [
        {
          name: "gpu",
          image: "nvcr.io/nvidia/tritonserver:24.01",
          cacheImage: "cache.stowage.svc:5000/nvcr.io/nvidia/tritonserver:24.01",
          sourceDigest: DIGEST_A,
          cacheDigest: DIGEST_B,
          nodes: { desired: 3, ready: 1, pulling: 2, failed: 0, skipped: 0 },
        },
      ],
    },
  ),
  modelImage("ml", "pinned", { image: `docker.io/library/busybox@${DIGEST_C}`, ...hold }),
  modelImage(
    "ml",
    "warm-already",
    { image: "ghcr.io/acme/warm:1", ...hold },
    { conditions: [prewarmedCondition()] },
  ),
  modelImage("ml", "no-hold", { image: "ghcr.io/acme/nohold:1" }),
  modelImage("other", "llama", { image: "ghcr.io/acme/llama:v3", ...hold }),
  modelImage("stowage-system", "own", { image: "ghcr.io/acme/own:1", ...hold }),
  modelImage("quiet", "llama", { image: "ghcr.io/acme/llama:v3", ...hold }),
];

const namespaceLabels: Record<string, Record<string, string>> = {
  ml: {},
  quiet: { "stowage.dev/hold-pods": "disabled" },
};

let server: WebhookServer;
let caPem: string;

beforeAll(async () => {
  const ca = await createCertificateAuthority("test-ca", { now: Date.now(), validityMs: 3600_000 });
  caPem = ca.certPem;
  const serving = await issueServingCertificate(
    ca,
    { dnsNames: ["stowage-webhook.stowage-system.svc"], ipAddresses: ["127.0.0.1"] },
    { now: Date.now(), validityMs: 3600_000 },
  );
  server = await startWebhookServer({
    host: "127.0.0.1",
    port: 0,
    certPem: serving.certPem,
    keyPem: serving.keyPem,
    lookups: {
      modelImagesIn: (ns) => modelImages.filter((mi) => mi.metadata.namespace === ns),
      namespaceLabels: (ns) => namespaceLabels[ns],
      controllerNamespace: "stowage-system",
    },
  });
});

afterAll(async () => {
  await server?.close();
});

async function admit(body: Json): Promise<{ response: Json; patched?: Json }> {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  const answer = await postJson(server.url, text, caPem);
  expect(answer.status).toBe(200);
  expect(answer.body.apiVersion).toBe("admission.k8s.io/v1");
  expect(answer.body.kind).toBe("AdmissionReview");
  const response = answer.body.response;
  expect(response.allowed).toBe(true);
  if (typeof body === "object" && body.request?.uid) expect(response.uid).toBe(body.request.uid);
  if (!response.patch) return { response };
  expect(response.patchType).toBe("JSONPatch");
  const ops = JSON.parse(Buffer.from(response.patch, "base64").toString("utf8"));
  const object = typeof body === "object" ? body.request.object : undefined;
  return { response, patched: jsonpatch.applyPatch(structuredClone(object), ops, true).newDocument };
}

function gates(p: Json): string[] {
  return (p?.spec?.schedulingGates ?? []).map((g: Json) => g.name);
}

describe("pod admission over HTTPS with a generated certificate", () => {
  it("serves a certificate for the Service DNS name and 127.0.0.1 that verifies with the generated CA", async () => {
    // postJson trusts only the CA: the handshake itself is the verification.
    const { response } = await admit(review(pod("ml", { containers: [{ name: "c", image: "alpine" }] })));
    expect(response.patch).toBeUndefined();
    const info = await servedCertificate(server.url, caPem);
    const cert = new X509Certificate(info);
    expect(cert.subjectAltName).toContain("DNS:stowage-webhook.stowage-system.svc");
    expect(cert.subjectAltName).toContain("IP Address:127.0.0.1");
    expect(cert.checkIssued(new X509Certificate(caPem))).toBe(true);
  });

  it("gates a pod whose container uses a held ModelImage's repository and tag, and says why", async () => {
    const { patched } = await admit(
      review(pod("ml", { containers: [{ name: "serve", image: "ghcr.io/acme/llama:v3" }] })),
    );
    expect(gates(patched)).toEqual(["stowage.dev/prewarm"]);
    expect(patched.metadata.annotations["stowage.dev/held-for"]).toBe("ml/llama");
    expect(patched.metadata.annotations["stowage.dev/held-reason"]).toContain('container "serve"');
  });

  it("does not gate a pod using another tag of the same repository", async () => {
    const { response } = await admit(
      review(pod("ml", { containers: [{ name: "serve", image: "ghcr.io/acme/llama:v2" }] })),
    );
    expect(response.patch).toBeUndefined();
  });

  it("matches Docker Hub short names after normalisation", async () => {
    const { patched } = await admit(
      review(pod("ml", { containers: [{ name: "c", image: `busybox@${DIGEST_C}` }] })),
    );
    expect(patched.metadata.annotations["stowage.dev/held-for"]).toBe("ml/pinned");
  });

  it("gates a pod pinned by digest to the variant's source digest or cache digest, not to another digest", async () => {
    const bySource = await admit(
      review(pod("ml", { containers: [{ name: "c", image: `nvcr.io/nvidia/tritonserver@${DIGEST_A}` }] })),
    );
    expect(bySource.patched.metadata.annotations["stowage.dev/held-for"]).toBe("ml/triton");
    const byCache = await admit(
      review(
        pod("ml", {
          containers: [
            { name: "c", image: `cache.stowage.svc:5000/nvcr.io/nvidia/tritonserver@${DIGEST_B}` },
          ],
        }),
      ),
    );
    expect(byCache.patched.metadata.annotations["stowage.dev/held-for"]).toBe("ml/triton");
    const other = await admit(
      review(pod("ml", { containers: [{ name: "c", image: `nvcr.io/nvidia/tritonserver@${DIGEST_C}` }] })),
    );
    expect(other.response.patch).toBeUndefined();
  });

  it("gates a pod that names a ModelImage in the stowage.dev/model-image annotation", async () => {
    const { patched } = await admit(
      review(
        pod(
          "ml",
          { containers: [{ name: "c", image: "my-own/runtime:1" }] },
          { annotations: { "stowage.dev/model-image": "llama", team: "a" } },
        ),
      ),
    );
    expect(gates(patched)).toEqual(["stowage.dev/prewarm"]);
    expect(patched.metadata.annotations).toMatchObject({ team: "a", "stowage.dev/held-for": "ml/llama" });
  });

  it("gates on an init container's image and keeps the user's own scheduling gates", async () => {
    const { patched } = await admit(
      review(
        pod("ml", {
          schedulingGates: [{ name: "example.com/quota" }],
          initContainers: [{ name: "fetch", image: "nvcr.io/nvidia/tritonserver:24.01-cpu" }],
          containers: [{ name: "c", image: "alpine" }],
        }),
      ),
    );
    expect(gates(patched)).toEqual(["example.com/quota", "stowage.dev/prewarm"]);
    expect(patched.metadata.annotations["stowage.dev/held-reason"]).toContain('init container "fetch"');
  });

  it("gates on an image volume's reference", async () => {
    const { patched } = await admit(
      review(
        pod("ml", {
          containers: [{ name: "c", image: "alpine" }],
          volumes: [{ name: "weights", image: { reference: "ghcr.io/acme/llama:v3" } }],
        }),
      ),
    );
    expect(patched.metadata.annotations["stowage.dev/held-reason"]).toContain('image volume "weights"');
  });

  it("never gates pods with spec.nodeName, in a namespace labelled hold-pods=disabled, or in the controller's namespace", async () => {
    const cases = [
      pod("ml", { nodeName: "n1", containers: [{ name: "c", image: "ghcr.io/acme/llama:v3" }] }),
      pod("quiet", { containers: [{ name: "c", image: "ghcr.io/acme/llama:v3" }] }),
      pod("stowage-system", { containers: [{ name: "c", image: "ghcr.io/acme/own:1" }] }),
    ];
    for (const p of cases) expect((await admit(review(p))).response.patch).toBeUndefined();
  });

  it("never gates for a ModelImage that is already Prewarmed or has holdPods false", async () => {
    for (const image of ["ghcr.io/acme/warm:1", "ghcr.io/acme/nohold:1"])
      expect(
        (await admit(review(pod("ml", { containers: [{ name: "c", image }] })))).response.patch,
      ).toBeUndefined();
  });

  it("matches only ModelImages of the pod's own namespace", async () => {
    const { patched } = await admit(
      review(pod("other", { containers: [{ name: "c", image: "ghcr.io/acme/llama:v3" }] })),
    );
    expect(patched.metadata.annotations["stowage.dev/held-for"]).toBe("other/llama");
  });

  it("adds a preferred affinity to warm nodes when some node already holds the image", async () => {
    const { patched } = await admit(
      review(pod("ml", { containers: [{ name: "c", image: "nvcr.io/nvidia/tritonserver:24.01" }] })),
    );
    expect(patched.spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution).toEqual([
      {
        weight: 50,
        preference: {
          matchExpressions: [{ key: warmNodeLabel("ml", "triton"), operator: "In", values: ["true"] }],
        },
      },
    ]);
    const cold = await admit(
      review(pod("ml", { containers: [{ name: "c", image: "ghcr.io/acme/llama:v3" }] })),
    );
    expect(cold.patched.spec.affinity).toBeUndefined();
  });

  it("merges the warm-node preference into the user's affinity without dropping any of it", async () => {
    const required = {
      nodeSelectorTerms: [{ matchExpressions: [{ key: "gpu", operator: "In", values: ["a100"] }] }],
    };
    const userPreferred = {
      weight: 10,
      preference: { matchExpressions: [{ key: "zone", operator: "In", values: ["a"] }] },
    };
    const podAffinity = {
      requiredDuringSchedulingIgnoredDuringExecution: [{ topologyKey: "x", labelSelector: {} }],
    };
    const { patched } = await admit(
      review(
        pod("ml", {
          containers: [{ name: "c", image: "nvcr.io/nvidia/tritonserver:24.01" }],
          affinity: {
            podAffinity,
            nodeAffinity: {
              requiredDuringSchedulingIgnoredDuringExecution: required,
              preferredDuringSchedulingIgnoredDuringExecution: [userPreferred],
            },
          },
        }),
      ),
    );
    expect(patched.spec.affinity.podAffinity).toEqual(podAffinity);
    expect(patched.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution).toEqual(
      required,
    );
    const preferred = patched.spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution;
    expect(preferred).toHaveLength(2);
    expect(preferred[0]).toEqual(userPreferred);
    expect(preferred[1].preference.matchExpressions[0].key).toBe(warmNodeLabel("ml", "triton"));

    const onlyPodAffinity = await admit(
      review(
        pod("ml", {
          containers: [{ name: "c", image: "nvcr.io/nvidia/tritonserver:24.01" }],
          affinity: { podAffinity },
        }),
      ),
    );
    expect(onlyPodAffinity.patched.spec.affinity.podAffinity).toEqual(podAffinity);
    expect(
      onlyPodAffinity.patched.spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution,
    ).toHaveLength(1);
  });

  it("answers malformed or unexpected requests with allowed and a warning, never an error", async () => {
    const notJson = await admit("{ this is not json");
    expect(notJson.response.warnings?.[0]).toMatch(/not an AdmissionReview/);
    const noRequest = await admit({ apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview" });
    expect(noRequest.response.warnings?.[0]).toMatch(/not an AdmissionReview/);
    const v1beta1 = await admit({ ...review(pod("ml", {})), apiVersion: "admission.k8s.io/v1beta1" });
    expect(v1beta1.response.warnings?.[0]).toMatch(/not supported/);
    const badPod = await admit(review("a string, not a pod"));
    expect(badPod.response.warnings?.[0]).toMatch(/malformed/);
    const badSpec = await admit(review({ metadata: { namespace: "ml" }, spec: [1, 2] }));
    expect(badSpec.response.warnings?.[0]).toMatch(/malformed/);
  });

  it("lets updates and other kinds through untouched", async () => {
    const update = await admit(
      review(pod("ml", { containers: [{ name: "c", image: "ghcr.io/acme/llama:v3" }] }), {
        operation: "UPDATE",
      }),
    );
    expect(update.response.patch).toBeUndefined();
    const deployment = await admit(
      review(pod("ml", { containers: [{ name: "c", image: "ghcr.io/acme/llama:v3" }] }), {
        kind: { group: "apps", version: "v1", kind: "Deployment" },
      }),
    );
    expect(deployment.response.patch).toBeUndefined();
  });
});
