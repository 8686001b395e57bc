import { ApiextensionsV1Api, setHeaderOptions } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TestApiServer } from "../../testkit/apiserver/index.ts";
import type { Json } from "../../testkit/apiserver/types.ts";
import { type Clients, clients, failure, group, startWithWidgets, widget, widgets } from "./helpers.ts";

let server: TestApiServer;
let api: Clients;
const mergeType = setHeaderOptions("Content-Type", "application/merge-patch+json");

beforeAll(async () => {
  server = await startWithWidgets();
  api = clients(server);
});

afterAll(async () => {
  await server.stop();
});

const create = (name: string, spec: Json) =>
  api.custom.createNamespacedCustomObject({ ...widgets(), body: widget(name, spec) }) as Promise<Json>;

/** POST a widget as raw JSON so query parameters and response headers are visible. */
async function post(
  name: string,
  spec: Json,
  query = "",
): Promise<{ status: number; body: Json; warning: string | null }> {
  const response = await fetch(`${server.url}/apis/${group}/v1/namespaces/default/widgets${query}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(widget(name, spec)),
  });
  return { status: response.status, body: await response.json(), warning: response.headers.get("warning") };
}

describe("defaulting", () => {
  it("applies defaults on create, including inside nested objects and list items", async () => {
    const created = await create("defaults", {
      image: "nginx",
      a: "x",
      parts: [{ name: "p1" }, { name: "p2", weight: 5 }],
    });
    expect(created.spec.mode).toBe("fast");
    expect(created.spec.settings).toEqual({ retries: 3, timeout: "30s" });
    expect(created.spec.parts).toEqual([
      { name: "p1", weight: 1 },
      { name: "p2", weight: 5 },
    ]);
  });

  it("applies defaults on update to fields the update removed", async () => {
    await create("defaults-update", { image: "nginx", a: "x", mode: "slow", settings: { retries: 9 } });
    const updated = (await api.custom.patchNamespacedCustomObject(
      { ...widgets(), name: "defaults-update", body: { spec: { mode: null, settings: { retries: null } } } },
      mergeType,
    )) as Json;
    expect(updated.spec.mode).toBe("fast");
    expect(updated.spec.settings).toEqual({ retries: 3, timeout: "30s" });
  });

  it("drops null for non-nullable fields and keeps it for nullable ones", async () => {
    const { body } = await post("nulls", { image: "nginx", a: "x", size: null, nickname: null });
    expect("size" in body.spec).toBe(false);
    expect(body.spec.nickname).toBeNull();
  });
});

describe("unknown fields", () => {
  it("prunes unknown fields with a warning by default, keeping x-kubernetes-preserve-unknown-fields subtrees", async () => {
    const { status, body, warning } = await post("pruned", {
      image: "nginx",
      a: "x",
      colour: "red",
      settings: { retries: 1, extraKnob: true },
      extra: { anything: { goes: [1, 2] } },
    });
    expect(status).toBe(201);
    expect(body.spec.colour).toBeUndefined();
    expect(body.spec.settings.extraKnob).toBeUndefined();
    expect(body.spec.extra).toEqual({ anything: { goes: [1, 2] } });
    expect(warning).toContain('unknown field \\"spec.colour\\"');
    expect(warning).toContain('unknown field \\"spec.settings.extraKnob\\"');
  });

  it("refuses unknown fields with 400 under fieldValidation=Strict and prunes silently under Ignore", async () => {
    const strict = await post(
      "strict",
      { image: "nginx", a: "x", colour: "red", shade: 1 },
      "?fieldValidation=Strict",
    );
    expect(strict.status).toBe(400);
    expect(strict.body).toMatchObject({
      reason: "BadRequest",
      message:
        'Widget in version "v1" cannot be handled as a Widget: strict decoding error: unknown field "spec.colour", unknown field "spec.shade"',
    });
    const ignored = await post(
      "ignored",
      { image: "nginx", a: "x", colour: "red" },
      "?fieldValidation=Ignore",
    );
    expect(ignored.status).toBe(201);
    expect(ignored.warning).toBeNull();
    expect(ignored.body.spec.colour).toBeUndefined();
  });
});

const notChecked =
  "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation";

describe("validation", () => {
  it("reports each failure as a cause naming the field, in an apiserver-shaped 422 Invalid", async () => {
    const { code, status } = await failure(
      create("invalid-many", { image: "Foo//bar", size: 0, mode: "turbo", a: "x" }),
    );
    expect(code).toBe(422);
    expect(status.reason).toBe("Invalid");
    expect(status.message).toBe(
      `Widget.${group} "invalid-many" is invalid: [spec.image: Invalid value: "Foo//bar": spec.image in body should match '^[a-z0-9]+([._/:-][a-z0-9]+)*$', spec.mode: Unsupported value: "turbo": supported values: "fast", "slow", spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1, <nil>: Invalid value: null: ${notChecked}]`,
    );
    expect(status.details).toMatchObject({ name: "invalid-many", group, kind: "Widget" });
    expect(status.details.causes).toEqual([
      {
        reason: "FieldValueInvalid",
        message: `Invalid value: "Foo//bar": spec.image in body should match '^[a-z0-9]+([._/:-][a-z0-9]+)*$'`,
        field: "spec.image",
      },
      {
        reason: "FieldValueNotSupported",
        message: 'Unsupported value: "turbo": supported values: "fast", "slow"',
        field: "spec.mode",
      },
      {
        reason: "FieldValueInvalid",
        message: "Invalid value: 0: spec.size in body should be greater than or equal to 1",
        field: "spec.size",
      },
      // an unsupported value blocks the CEL rules, and the real server says they were not checked
      { reason: "FieldValueInvalid", message: `Invalid value: null: ${notChecked}`, field: "<nil>" },
    ]);
  });

  it("reports a missing required field, and that it kept the CEL rules from being checked", async () => {
    const { status } = await failure(create("invalid-required", { a: "x" }));
    expect(status.message).toBe(
      `Widget.${group} "invalid-required" is invalid: [spec.image: Required value, <nil>: Invalid value: null: ${notChecked}]`,
    );
    expect(status.details.causes).toEqual([
      { reason: "FieldValueRequired", message: "Required value", field: "spec.image" },
      { reason: "FieldValueInvalid", message: `Invalid value: null: ${notChecked}`, field: "<nil>" },
    ]);
  });

  it("still evaluates CEL rules after errors that do not block them (patterns, bounds)", async () => {
    const { status } = await failure(create("invalid-pattern-and-rule", { image: "Foo//bar", size: 0 }));
    expect(status.details.causes.map((c: Json) => c.field)).toEqual(["spec.image", "spec.size", "spec"]);
    expect(status.details.causes[2].message).toBe("Invalid value: exactly one of a or b must be set");
  });

  it("checks types, int-or-string, array bounds and required fields of list items", async () => {
    const wrongType = await failure(create("invalid-type", { image: "nginx", a: "x", size: "big" }));
    expect(wrongType.status.message).toContain(
      `spec.size: Invalid value: "string": spec.size in body must be of type integer: "string"`,
    );
    expect((await post("port-int", { image: "nginx", a: "x", port: 8080 })).status).toBe(201);
    expect((await post("port-str", { image: "nginx", a: "x", port: "http" })).status).toBe(201);
    expect((await post("port-bool", { image: "nginx", a: "x", port: true })).status).toBe(422);
    const tooMany = await failure(
      create("invalid-items", {
        image: "nginx",
        a: "x",
        parts: [{ name: "a" }, { name: "b" }, { name: "c" }, {}],
      }),
    );
    expect(tooMany.status.message).toContain("spec.parts: Too many: 4: must have at most 3 items");
    expect(tooMany.status.message).toContain("spec.parts[3].name: Required value");
  });

  it("evaluates CEL rules: exactly one of a or b, and unique list item names", async () => {
    const neither = await failure(create("cel-neither", { image: "nginx" }));
    expect(neither.status.message).toBe(
      `Widget.${group} "cel-neither" is invalid: spec: Invalid value: exactly one of a or b must be set`,
    );
    // a rule on an object or a list shows no value; on a scalar it shows the value
    expect(neither.status.details.causes).toEqual([
      {
        reason: "FieldValueInvalid",
        message: "Invalid value: exactly one of a or b must be set",
        field: "spec",
      },
    ]);
    const duplicate = await failure(
      create("cel-dup", { image: "nginx", b: "y", parts: [{ name: "p" }, { name: "p" }] }),
    );
    expect(duplicate.status.message).toContain("spec.parts: Invalid value: part names must be unique");
    expect(
      (await post("cel-ok", { image: "nginx", b: "y", parts: [{ name: "p" }, { name: "q" }] })).status,
    ).toBe(201);
  });

  it("reports a CEL rule's messageExpression at its fieldPath with its reason", async () => {
    const { status } = await failure(create("cel-reason", { image: "nginx", a: "x", nickname: "root" }));
    expect(status.message).toBe(
      `Widget.${group} "cel-reason" is invalid: spec.nickname: Forbidden: nickname root is reserved`,
    );
    expect(status.details.causes).toEqual([
      {
        reason: "FieldValueForbidden",
        message: "Forbidden: nickname root is reserved",
        field: "spec.nickname",
      },
    ]);
  });

  it("refuses duplicate keys in list-type map and duplicate items in list-type set", async () => {
    const { status } = await failure(
      create("lists", {
        image: "nginx",
        a: "x",
        ports: [
          { name: "http", port: 80 },
          { name: "http", port: 8080 },
        ],
        tags: ["gpu", "cpu", "gpu", "much-too-long"],
      }),
    );
    expect(status.details.causes).toEqual([
      { reason: "FieldValueDuplicate", message: 'Duplicate value: {"name":"http"}', field: "spec.ports[1]" },
      { reason: "FieldValueDuplicate", message: 'Duplicate value: "gpu"', field: "spec.tags[2]" },
      {
        reason: "FieldValueTooLong",
        message: "Too long: may not be more than 8 bytes",
        field: "spec.tags[3]",
      },
      { reason: "FieldValueInvalid", message: `Invalid value: null: ${notChecked}`, field: "<nil>" },
    ]);
  });

  it("evaluates transition rules with oldSelf only on update", async () => {
    await create("immutable", { image: "nginx", a: "x", immutableId: "one" });
    const { code, status } = await failure(
      api.custom.patchNamespacedCustomObject(
        { ...widgets(), name: "immutable", body: { spec: { immutableId: "two" } } },
        mergeType,
      ),
    );
    expect(code).toBe(422);
    expect(status.message).toContain('spec.immutableId: Invalid value: "two": immutableId is immutable');
    const unrelated = (await api.custom.patchNamespacedCustomObject(
      { ...widgets(), name: "immutable", body: { spec: { size: 2 } } },
      mergeType,
    )) as Json;
    expect(unrelated.spec.size).toBe(2);
  });

  it("validates status writes against the status schema", async () => {
    await create("status-checked", { image: "nginx", a: "x" });
    const { code, status } = await failure(
      api.custom.patchNamespacedCustomObjectStatus(
        {
          ...widgets(),
          name: "status-checked",
          body: { status: { conditions: [{ type: "Ready", lastTransitionTime: "yesterday" }] } },
        },
        mergeType,
      ),
    );
    expect(code).toBe(422);
    expect(status.message).toContain("status.conditions[0].lastTransitionTime");
  });
});

describe("CRD lifecycle", () => {
  const sprocketCrd = (versions: string[]): Json => ({
    apiVersion: "apiextensions.k8s.io/v1",
    kind: "CustomResourceDefinition",
    metadata: { name: `sprockets.${group}` },
    spec: {
      group,
      scope: "Namespaced",
      names: { plural: "sprockets", kind: "Sprocket" },
      versions: versions.map((name, i) => ({
        name,
        served: true,
        storage: i === 0,
        schema: { openAPIV3Schema: { type: "object", "x-kubernetes-preserve-unknown-fields": true } },
      })),
    },
  });

  async function servedVersions(): Promise<string[]> {
    const groups = (await (await fetch(`${server.url}/apis`)).json()) as Json;
    const entry = groups.groups.find((g: Json) => g.name === group);
    const versions: string[] = [];
    for (const v of entry?.versions ?? []) {
      const list = (await (await fetch(`${server.url}/apis/${group}/${v.version}`)).json()) as Json;
      if (list.resources.some((r: Json) => r.name === "sprockets")) versions.push(v.version);
    }
    return versions;
  }

  it("serves a CRD's versions once created, marks it Established, and stops serving them when deleted", async () => {
    const crdApi = api.kc.makeApiClient(ApiextensionsV1Api);
    const created = await crdApi.createCustomResourceDefinition({ body: sprocketCrd(["v1", "v1beta1"]) });
    expect(created.status?.conditions?.map((c) => [c.type, c.status])).toEqual([
      ["NamesAccepted", "True"],
      ["Established", "True"],
    ]);
    expect(created.status?.acceptedNames?.kind).toBe("Sprocket");
    expect(await servedVersions()).toEqual(["v1", "v1beta1"]);

    await api.custom.createNamespacedCustomObject({
      group,
      version: "v1beta1",
      namespace: "default",
      plural: "sprockets",
      body: { apiVersion: `${group}/v1beta1`, kind: "Sprocket", metadata: { name: "s1" } },
    });
    const asV1 = (await api.custom.getNamespacedCustomObject({
      group,
      version: "v1",
      namespace: "default",
      plural: "sprockets",
      name: "s1",
    })) as Json;
    expect(asV1.apiVersion).toBe(`${group}/v1`);

    await crdApi.deleteCustomResourceDefinition({ name: `sprockets.${group}` });
    for (let i = 0; i < 100 && (await servedVersions()).length > 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    expect(await servedVersions()).toEqual([]);
    const gone = await fetch(`${server.url}/apis/${group}/v1/namespaces/default/sprockets`);
    expect(gone.status).toBe(404);
  });

  it("refuses a CRD whose schema is not structural, has a default its schema rejects, or a rule that does not compile", async () => {
    const bad = sprocketCrd(["v1"]);
    bad.spec.versions[0].schema.openAPIV3Schema = {
      type: "object",
      properties: {
        spec: {
          type: "object",
          "x-kubernetes-validations": [{ rule: "self.a ==", message: "broken" }],
          properties: {
            untyped: { description: "no type" },
            list: { type: "array" },
            mode: { type: "string", enum: ["a", "b"], default: "c" },
          },
        },
      },
    };
    // POSTed as JSON: client-node's typed model would drop the x-kubernetes-* keys written this way
    const response = await fetch(`${server.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(bad),
    });
    expect(response.status).toBe(422);
    const status = (await response.json()) as Json;
    const fields = status.details.causes.map((c: Json) => c.field);
    const root = "spec.versions[0].schema.openAPIV3Schema.properties[spec]";
    expect(fields).toEqual([
      `${root}.x-kubernetes-validations[0].rule`,
      `${root}.properties[untyped].type`,
      `${root}.properties[list].items`,
      `${root}.properties[mode].default`,
    ]);
  });

  it("refuses a CRD whose name is not <plural>.<group>", async () => {
    const crdApi = api.kc.makeApiClient(ApiextensionsV1Api);
    const bad = { ...sprocketCrd(["v1"]), metadata: { name: "wrong.name" } };
    const { code, status } = await failure(crdApi.createCustomResourceDefinition({ body: bad }));
    expect(code).toBe(422);
    expect(status.message).toContain("metadata.name");
  });
});
