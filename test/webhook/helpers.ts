import { randomUUID } from "node:crypto";
import { request } from "node:https";
import {
  API_VERSION,
  KIND,
  type ModelImage,
  type ModelImageSpec,
  type ModelImageStatus,
} from "../../src/api/modelImage.ts";

export const DIGEST_A = `sha256:${"a".repeat(64)}`;
export const DIGEST_B = `sha256:${"b".repeat(64)}`;
export const DIGEST_C = `sha256:${"c".repeat(64)}`;

export function modelImage(
  namespace: string,
  name: string,
  spec: ModelImageSpec,
  status?: ModelImageStatus,
): ModelImage {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { namespace, name },
    spec,
    ...(status ? { status } : {}),
  };
}

export function prewarmedCondition() {
  return {
    type: "Prewarmed",
    status: "True" as const,
    reason: "NodesWarm",
    message: "all nodes warm",
    lastTransitionTime: "2026-01-01T00:00:00Z",
  };
}

// biome-ignore lint/suspicious/noExplicitAny: test pods are free-form JSON shaped per test case
export type Json = any;

export function pod(namespace: string, spec: Json, metadata: Json = {}): Json {
  return { apiVersion: "v1", kind: "Pod", metadata: { name: "p", namespace, ...metadata }, spec };
}

export function review(object: Json, overrides: Json = {}): Json {
  return {
    apiVersion: "admission.k8s.io/v1",
    kind: "AdmissionReview",
    request: {
      uid: randomUUID(),
      kind: { group: "", version: "v1", kind: "Pod" },
      resource: { group: "", version: "v1", resource: "pods" },
      namespace: object?.metadata?.namespace,
      name: object?.metadata?.name,
      operation: "CREATE",
      userInfo: { username: "test" },
      object,
      dryRun: false,
      ...overrides,
    },
  };
}

/** POST a body over HTTPS, trusting only `ca`; resolves with the status and parsed body. */
export function postJson(url: string, body: string, ca: string): Promise<{ status: number; body: Json }> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { method: "POST", ca, agent: false, headers: { "content-type": "application/json" } },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => {
          text += chunk;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

/** The certificate the server at `url` presents (PEM), verified against `ca`. */
export function servedCertificate(url: string, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: "GET", ca, agent: false }, (res) => {
      const socket = res.socket as import("node:tls").TLSSocket;
      const raw = socket.getPeerCertificate().raw;
      res.resume();
      resolve(
        `-----BEGIN CERTIFICATE-----\n${raw
          .toString("base64")
          .match(/.{1,64}/g)
          ?.join("\n")}\n-----END CERTIFICATE-----\n`,
      );
    });
    req.on("error", reject);
    req.end();
  });
}
