import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import type { TestApiServer } from "../../testkit/apiserver/index.ts";
import type { Json } from "../../testkit/apiserver/types.ts";
import {
  type Clients,
  clients,
  group,
  Kubectl,
  startWithWidgets,
  widget,
  widgetCrd,
  widgets,
} from "./helpers.ts";

let server: TestApiServer;
let api: Clients;
let kubectl: Kubectl;

beforeAll(async () => {
  server = await startWithWidgets();
  api = clients(server);
  kubectl = new Kubectl(server);
});

afterAll(async () => {
  kubectl.cleanup();
  await server.stop();
});

async function get(
  path: string,
  accept = "application/json",
): Promise<{ status: number; type: string | null; body: Json }> {
  const response = await fetch(`${server.url}${path}`, { headers: { Accept: accept } });
  return { status: response.status, type: response.headers.get("content-type"), body: await response.json() };
}

function resource(list: Json, name: string): Json {
  return list.resources.find((r: Json) => r.name === name);
}

describe("discovery", () => {
  it("answers /version with a 1.32 server version", async () => {
    const { body } = await get("/version");
    expect(body).toMatchObject({ major: "1", minor: "32", gitVersion: expect.stringMatching(/^v1\.32\./) });
  });

  it("lists core v1 resources with verbs, scope, short names and status subresources", async () => {
    expect((await get("/api")).body).toMatchObject({ kind: "APIVersions", versions: ["v1"] });
    const { body } = await get("/api/v1");
    expect(body).toMatchObject({ kind: "APIResourceList", groupVersion: "v1" });
    expect(resource(body, "pods")).toMatchObject({
      namespaced: true,
      kind: "Pod",
      shortNames: ["po"],
      verbs: expect.arrayContaining(["create", "delete", "get", "list", "patch", "update", "watch"]),
    });
    expect(resource(body, "pods/status")).toMatchObject({ kind: "Pod", verbs: ["get", "patch", "update"] });
    expect(resource(body, "nodes")).toMatchObject({ namespaced: false, kind: "Node" });
    expect(resource(body, "nodes/status")).toBeTruthy();
    for (const name of ["namespaces", "secrets", "configmaps", "events", "serviceaccounts", "services"])
      expect(resource(body, name), name).toBeTruthy();
  });

  it("lists the named groups Stowage uses and each group's resources", async () => {
    const { body } = await get("/apis");
    const names = body.groups.map((g: Json) => g.name);
    for (const name of [
      "events.k8s.io",
      "coordination.k8s.io",
      "apps",
      "admissionregistration.k8s.io",
      "apiextensions.k8s.io",
      "rbac.authorization.k8s.io",
      group,
    ])
      expect(names).toContain(name);
    expect(resource((await get("/apis/apps/v1")).body, "deployments/status")).toBeTruthy();
    expect(resource((await get("/apis/apps/v1")).body, "daemonsets")).toMatchObject({ shortNames: ["ds"] });
    expect(resource((await get("/apis/coordination.k8s.io/v1")).body, "leases")).toMatchObject({
      kind: "Lease",
      namespaced: true,
    });
    expect(resource((await get("/apis/events.k8s.io/v1")).body, "events")).toMatchObject({ kind: "Event" });
    expect(
      resource((await get("/apis/rbac.authorization.k8s.io/v1")).body, "clusterrolebindings"),
    ).toMatchObject({ namespaced: false });
    const widgetsList = (await get(`/apis/${group}/v1`)).body;
    expect(resource(widgetsList, "widgets")).toMatchObject({
      singularName: "widget",
      namespaced: true,
      kind: "Widget",
      shortNames: ["wg"],
      categories: ["stowage"],
    });
    expect(resource(widgetsList, "widgets/status")).toBeTruthy();
    expect((await get(`/apis/${group}`)).body).toMatchObject({
      kind: "APIGroup",
      name: group,
      preferredVersion: { version: "v1" },
    });
  });

  it("serves aggregated discovery when asked, which the real kubectl uses for api-resources", async () => {
    const { type, body } = await get(
      "/apis",
      "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
    );
    expect(type).toBe("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
    const testGroup = body.items.find((g: Json) => g.metadata.name === group);
    const widgetEntry = testGroup.versions[0].resources.find((r: Json) => r.resource === "widgets");
    expect(widgetEntry).toMatchObject({
      responseKind: { group, version: "v1", kind: "Widget" },
      scope: "Namespaced",
      singularResource: "widget",
      subresources: [{ subresource: "status", verbs: ["get", "patch", "update"] }],
    });
    const out = await kubectl.run(["api-resources", "--api-group", group]);
    expect(out.stdout).toMatch(/widgets\s+wg\s+test\.stowage\.dev\/v1\s+true\s+Widget/);
    expect(out.stdout).toMatch(/gadgets\s+test\.stowage\.dev\/v1\s+false\s+Gadget/);
  });
});

describe("tables", () => {
  beforeAll(async () => {
    await api.custom.createNamespacedCustomObject({
      ...widgets(),
      body: widget("tabled", { image: "nginx", a: "x", size: 4 }),
    });
    const current = (await api.custom.getNamespacedCustomObject({ ...widgets(), name: "tabled" })) as Json;
    await api.custom.replaceNamespacedCustomObjectStatus({
      ...widgets(),
      name: "tabled",
      body: {
        ...current,
        status: {
          conditions: [
            { type: "Synced", status: "False" },
            { type: "Ready", status: "True" },
          ],
        },
      },
    });
  });

  const tableAccept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

  it("returns a meta.k8s.io/v1 Table of the CRD's printer columns with NAME first", async () => {
    const { body } = await get(`/apis/${group}/v1/namespaces/default/widgets`, tableAccept);
    expect(body).toMatchObject({
      kind: "Table",
      apiVersion: "meta.k8s.io/v1",
      metadata: { resourceVersion: expect.any(String) },
    });
    expect(body.columnDefinitions.map((c: Json) => c.name)).toEqual([
      "Name",
      "Image",
      "Ready",
      "Size",
      "Age",
    ]);
    const row = body.rows.find((r: Json) => r.cells[0] === "tabled");
    expect(row.cells.slice(0, 4)).toEqual(["tabled", "nginx", "True", 4]);
    expect(row.cells[4]).toMatch(/^\d+s$/);
    expect(row.object).toMatchObject({
      kind: "PartialObjectMetadata",
      apiVersion: "meta.k8s.io/v1",
      metadata: { name: "tabled" },
    });
  });

  it("honours includeObject=Object and None for the rows' object", async () => {
    const full = await get(
      `/apis/${group}/v1/namespaces/default/widgets/tabled?includeObject=Object`,
      tableAccept,
    );
    expect(full.body.rows[0].object).toMatchObject({ kind: "Widget", spec: { image: "nginx" } });
    const none = await get(
      `/apis/${group}/v1/namespaces/default/widgets/tabled?includeObject=None`,
      tableAccept,
    );
    expect(none.body.rows[0].object).toBeNull();
  });

  it("prints built-ins with NAME, a few obvious columns and AGE", async () => {
    await api.core.createNamespacedPod({
      namespace: "default",
      body: { metadata: { name: "tabled-pod" }, spec: { containers: [{ name: "c", image: "i" }] } },
    });
    const out = await kubectl.run(["get", "pods"]);
    expect(out.stdout).toMatch(/^NAME\s+STATUS\s+AGE\n/);
    expect(out.stdout).toMatch(/tabled-pod\s+Pending\s+\d+s/);
  });
});

describe("standalone", () => {
  it("runs from main.ts, writes a kubeconfig kubectl uses as is, preloads CRDs and stops on SIGTERM", async () => {
    const dir = mkdtempSync(join(tmpdir(), "stowage-apiserver-main-"));
    const crdFile = join(dir, "crd.yaml");
    const kubeconfig = join(dir, "kubeconfig");
    writeFileSync(crdFile, stringify(widgetCrd));
    const child = spawn(
      process.execPath,
      ["testkit/apiserver/main.ts", "--port", "0", "--kubeconfig", kubeconfig, "--crd", crdFile],
      {
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    try {
      const output = await new Promise<string>((resolve, reject) => {
        let text = "";
        child.stdout.on("data", (chunk) => {
          text += chunk;
          if (text.includes("kubeconfig:")) resolve(text);
        });
        child.once("exit", (code) => reject(new Error(`main.ts exited with ${code}`)));
      });
      const url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(output)?.[1];
      expect(url).toBeTruthy();
      expect(output).toContain(`kubeconfig: ${kubeconfig}`);
      expect(readFileSync(kubeconfig, "utf8")).toContain(url!);
      const standalone = new Kubectl({ kubeconfigPath: kubeconfig } as TestApiServer);
      try {
        const out = await standalone.run(["get", "widgets"]);
        expect(out.stderr).toContain("No resources found in default namespace.");
      } finally {
        standalone.cleanup();
      }
    } finally {
      const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
      child.kill("SIGTERM");
      expect(await exited).toBe(0);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
