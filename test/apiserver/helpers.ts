import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { stringify } from "yaml";
import { startApiServer, type TestApiServer } from "../../testkit/apiserver/index.ts";
import type { Json } from "../../testkit/apiserver/types.ts";
import { kubectl } from "../../testkit/kubectl.ts";

export const group = "test.stowage.dev";

/** A small CRD exercising what controllers and kubectl rely on: status subresource, printer columns, schema, CEL. */
export const widgetCrd: Json = {
  apiVersion: "apiextensions.k8s.io/v1",
  kind: "CustomResourceDefinition",
  metadata: { name: `widgets.${group}` },
  spec: {
    group,
    scope: "Namespaced",
    names: {
      plural: "widgets",
      singular: "widget",
      kind: "Widget",
      shortNames: ["wg"],
      categories: ["stowage"],
    },
    versions: [
      {
        name: "v1",
        served: true,
        storage: true,
        subresources: { status: {} },
        additionalPrinterColumns: [
          { name: "Image", type: "string", jsonPath: ".spec.image" },
          { name: "Ready", type: "string", jsonPath: '.status.conditions[?(@.type=="Ready")].status' },
          { name: "Size", type: "integer", jsonPath: ".spec.size" },
          { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" },
        ],
        schema: {
          openAPIV3Schema: {
            type: "object",
            properties: {
              spec: {
                type: "object",
                required: ["image"],
                "x-kubernetes-validations": [
                  { rule: "has(self.a) != has(self.b)", message: "exactly one of a or b must be set" },
                  {
                    rule: "!has(self.nickname) || self.nickname != 'root'",
                    messageExpression: "'nickname ' + self.nickname + ' is reserved'",
                    fieldPath: ".nickname",
                    reason: "FieldValueForbidden",
                  },
                ],
                properties: {
                  image: { type: "string", pattern: "^[a-z0-9]+([._/:-][a-z0-9]+)*$" },
                  mode: { type: "string", enum: ["fast", "slow"], default: "fast" },
                  size: { type: "integer", minimum: 1, maximum: 10 },
                  a: { type: "string" },
                  b: { type: "string" },
                  settings: {
                    type: "object",
                    default: {},
                    properties: {
                      retries: { type: "integer", default: 3 },
                      timeout: { type: "string", default: "30s" },
                    },
                  },
                  parts: {
                    type: "array",
                    maxItems: 3,
                    "x-kubernetes-validations": [
                      {
                        rule: "self.all(p, self.exists_one(q, q.name == p.name))",
                        message: "part names must be unique",
                      },
                    ],
                    items: {
                      type: "object",
                      required: ["name"],
                      properties: { name: { type: "string" }, weight: { type: "integer", default: 1 } },
                    },
                  },
                  labels: { type: "object", additionalProperties: { type: "string" } },
                  ports: {
                    type: "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    items: {
                      type: "object",
                      required: ["name"],
                      properties: { name: { type: "string" }, port: { type: "integer", format: "int32" } },
                    },
                  },
                  tags: {
                    type: "array",
                    "x-kubernetes-list-type": "set",
                    items: { type: "string", maxLength: 8 },
                  },
                  extra: { type: "object", "x-kubernetes-preserve-unknown-fields": true },
                  port: { "x-kubernetes-int-or-string": true },
                  nickname: { type: "string", nullable: true },
                  immutableId: {
                    type: "string",
                    "x-kubernetes-validations": [
                      { rule: "self == oldSelf", message: "immutableId is immutable" },
                    ],
                  },
                },
              },
              status: {
                type: "object",
                properties: {
                  observedGeneration: { type: "integer" },
                  phase: { type: "string" },
                  conditions: {
                    type: "array",
                    items: {
                      type: "object",
                      properties: {
                        type: { type: "string" },
                        status: { type: "string" },
                        reason: { type: "string" },
                        message: { type: "string" },
                        lastTransitionTime: { type: "string", format: "date-time" },
                      },
                    },
                  },
                },
              },
            },
          },
        },
      },
    ],
  },
};

/** A cluster-scoped CRD without a status subresource: status is part of the main resource. */
export const gadgetCrd: Json = {
  apiVersion: "apiextensions.k8s.io/v1",
  kind: "CustomResourceDefinition",
  metadata: { name: `gadgets.${group}` },
  spec: {
    group,
    scope: "Cluster",
    names: { plural: "gadgets", singular: "gadget", kind: "Gadget" },
    versions: [
      {
        name: "v1",
        served: true,
        storage: true,
        schema: { openAPIV3Schema: { type: "object", "x-kubernetes-preserve-unknown-fields": true } },
      },
    ],
  },
};

export function widget(name: string, spec: Json = { image: "nginx:1", a: "x" }, namespace = "default"): Json {
  return { apiVersion: `${group}/v1`, kind: "Widget", metadata: { name, namespace }, spec };
}

export interface Clients {
  kc: k8s.KubeConfig;
  core: k8s.CoreV1Api;
  custom: k8s.CustomObjectsApi;
  apps: k8s.AppsV1Api;
}

export function clients(server: TestApiServer): Clients {
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(server.kubeconfigPath);
  return {
    kc,
    core: kc.makeApiClient(k8s.CoreV1Api),
    custom: kc.makeApiClient(k8s.CustomObjectsApi),
    apps: kc.makeApiClient(k8s.AppsV1Api),
  };
}

export async function startWithWidgets(
  options: Parameters<typeof startApiServer>[0] = {},
): Promise<TestApiServer> {
  return startApiServer({ ...options, crds: [widgetCrd, gadgetCrd, ...(options.crds ?? [])] });
}

/** The error a client-node call failed with: HTTP code and the decoded Status. */
export async function failure(call: Promise<unknown>): Promise<{ code: number; status: Json }> {
  try {
    await call;
  } catch (err) {
    const e = err as { code?: number; body?: unknown };
    if (typeof e.code !== "number") throw err;
    const status = typeof e.body === "string" ? JSON.parse(e.body) : e.body;
    return { code: e.code, status };
  }
  throw new Error("expected the call to fail");
}

export const widgets = (namespace = "default") => ({ group, version: "v1", namespace, plural: "widgets" });

export interface KubectlResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run the real kubectl against the server with its own discovery cache. */
export class Kubectl {
  private readonly dir: string;
  private readonly kubeconfigPath: string;

  constructor(server: TestApiServer) {
    this.kubeconfigPath = server.kubeconfigPath;
    this.dir = mkdtempSync(join(tmpdir(), "stowage-kubectl-"));
  }

  run(args: string[], stdin?: string): Promise<KubectlResult> {
    return kubectl(args, { kubeconfig: this.kubeconfigPath, dir: this.dir, stdin, timeoutMs: 30_000 });
  }

  /** Write manifests to a file and `kubectl apply -f` it. */
  async apply(objects: Json[], extra: string[] = []): Promise<KubectlResult> {
    const file = join(this.dir, `manifest-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(file, objects.map((o) => stringify(o)).join("---\n"));
    return this.run(["apply", "-f", file, ...extra]);
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
