/**
 * The API double (testkit/apiserver) against the real kube-apiserver v1.37: each scenario sends
 * the same requests, as the same users, to both servers with the Stowage CRDs installed, and
 * compares what came back: HTTP status, Status reason, message and causes, warnings, whole
 * objects (after the replacements listed in differentialHarness.ts `normalisedFields`), watch
 * event sequences and the AdmissionReview a webhook receives. Each step must also get the status
 * the scenario means it to get, so a scenario cannot pass by both servers failing alike.
 * Where the double deliberately does less, testkit/apiserver/README.md says so.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeServerCertificate } from "../../testkit/tls.ts";
import { invalidSpecs } from "../api/invalidSpecs.ts";
import {
  differences,
  type Reply,
  type RequestStep,
  runScenario,
  type Scenario,
  type Seen,
  type Step,
  startTargets,
  startWebhook,
  type Target,
  type WebhookRecorder,
} from "./differentialHarness.ts";

const group = "stowage.dev/v1alpha1";
const mi = (ns: string, name = "", query = "") =>
  `/apis/${group}/namespaces/${ns}/modelimages${name ? `/${name}` : ""}${query ? `?${query}` : ""}`;
const cm = (ns: string, name = "") => `/api/v1/namespaces/${ns}/configmaps${name ? `/${name}` : ""}`;
const image = "ghcr.io/acme/llama:1.2";
const tableAccept = "application/json;as=Table;v=v1;g=meta.k8s.io";
const merge = "application/merge-patch+json";
const jsonPatch = "application/json-patch+json";
const strategic = "application/strategic-merge-patch+json";
const apply = "application/apply-patch+yaml";

function modelImage(name: string, spec: object = { image }, metadata: object = {}) {
  return { apiVersion: group, kind: "ModelImage", metadata: { name, ...metadata }, spec };
}

const rvOf = (id: string) => (seen: Seen) => String(seen(id).body.metadata.resourceVersion);

function namespace(ns: string): RequestStep {
  return {
    what: "create the scenario's namespace",
    method: "POST",
    path: "/api/v1/namespaces",
    body: { apiVersion: "v1", kind: "Namespace", metadata: { name: ns } },
    status: 201,
  };
}

function create(ns: string, name: string, spec?: object, metadata?: object, id = name): RequestStep {
  return {
    what: `create ModelImage ${name}`,
    id,
    method: "POST",
    path: mi(ns),
    body: modelImage(name, spec, metadata),
    status: 201,
  };
}

function mergePatch(what: string, path: string, body: unknown, status = 200, id?: string): RequestStep {
  return { what, id, method: "PATCH", path, body, contentType: merge, status };
}

const scenarios: Scenario[] = [
  {
    name: "create and get: defaults, generation, managedFields, generateName, AlreadyExists, NotFound, bad bodies",
    steps: (ns) => [
      namespace(ns),
      create(ns, "a", { image }, { labels: { tier: "gold" }, annotations: { note: "x" } }),
      { what: "get a", path: mi(ns, "a"), status: 200 },
      { what: "create a again", method: "POST", path: mi(ns), body: modelImage("a"), status: 409 },
      { what: "get a missing name", path: mi(ns, "missing"), status: 404 },
      {
        what: "create with generateName",
        method: "POST",
        path: mi(ns),
        body: { apiVersion: group, kind: "ModelImage", metadata: { generateName: "gen-" }, spec: { image } },
        status: 201,
      },
      {
        what: "create with neither name nor generateName",
        method: "POST",
        path: mi(ns),
        body: { apiVersion: group, kind: "ModelImage", metadata: {}, spec: { image } },
        status: 422,
      },
      {
        what: "create with an invalid name",
        method: "POST",
        path: mi(ns),
        body: modelImage("Bad_Name"),
        status: 422,
      },
      {
        what: "create with another namespace in the body",
        method: "POST",
        path: mi(ns),
        body: modelImage("b", { image }, { namespace: "elsewhere" }),
        status: 400,
      },
      {
        what: "create with the wrong kind",
        method: "POST",
        path: mi(ns),
        body: { ...modelImage("b"), kind: "NodeCache" },
        status: 422,
      },
      {
        what: "create in a namespace that does not exist",
        method: "POST",
        path: mi(`${ns}-missing`),
        body: modelImage("b"),
        status: 404,
      },
      { what: "create with a body that is not JSON", method: "POST", path: mi(ns), body: "{", status: 400 },
      {
        what: "create a status that is dropped (status subresource)",
        method: "POST",
        path: mi(ns),
        body: { ...modelImage("with-status"), status: { digest: "sha256:abc" } },
        status: 201,
      },
      { what: "list", path: mi(ns), status: 200 },
      {
        what: "create a ConfigMap (built-in)",
        method: "POST",
        path: cm(ns),
        body: { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "c" }, data: { k: "v" } },
        status: 201,
      },
    ],
  },
  {
    name: "update: generation, no-op writes keep the resourceVersion, stale resourceVersion is a Conflict",
    steps: (ns) => [
      namespace(ns),
      create(ns, "a"),
      {
        what: "update the spec",
        id: "spec",
        method: "PUT",
        path: mi(ns, "a"),
        body: (seen: Seen) => ({
          ...modelImage("a", { image, suspend: true }),
          metadata: { name: "a", resourceVersion: rvOf("a")(seen) },
        }),
        status: 200,
      },
      {
        what: "update with a stale resourceVersion",
        method: "PUT",
        path: mi(ns, "a"),
        body: (seen: Seen) => ({
          ...modelImage("a"),
          metadata: { name: "a", resourceVersion: rvOf("a")(seen) },
        }),
        status: 409,
      },
      {
        what: "update without a resourceVersion",
        method: "PUT",
        path: mi(ns, "a"),
        body: modelImage("a", { image, suspend: false }),
        status: 422,
      },
      {
        what: "update only labels (generation stays)",
        id: "labels",
        method: "PUT",
        path: mi(ns, "a"),
        body: (seen: Seen) => ({
          ...seen("spec").body,
          metadata: { ...seen("spec").body.metadata, labels: { tier: "gold" } },
        }),
        status: 200,
      },
      {
        what: "update with nothing changed (resourceVersion stays)",
        method: "PUT",
        path: mi(ns, "a"),
        body: (seen: Seen) => seen("labels").body,
        status: 200,
      },
      {
        what: "update with another name in the body",
        method: "PUT",
        path: mi(ns, "a"),
        body: modelImage("b"),
        status: 400,
      },
      {
        what: "update a missing object",
        method: "PUT",
        path: mi(ns, "missing"),
        body: modelImage("missing"),
        status: 404,
      },
      {
        what: "create a ConfigMap",
        method: "POST",
        path: cm(ns),
        body: { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "c" }, data: { k: "v" } },
        status: 201,
      },
      {
        what: "update a ConfigMap without a resourceVersion (allowed for built-ins)",
        method: "PUT",
        path: cm(ns, "c"),
        body: { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "c" }, data: { k: "w" } },
        status: 200,
      },
    ],
  },
  {
    name: "patch: merge, JSON and strategic merge patches, their errors and preconditions",
    steps: (ns) => [
      namespace(ns),
      create(ns, "a"),
      mergePatch("merge patch the spec", mi(ns, "a"), { spec: { suspend: true, sync: { interval: "1h" } } }),
      mergePatch("merge patch removes a field with null", mi(ns, "a"), { spec: { suspend: null } }),
      mergePatch(
        "merge patch with a stale resourceVersion",
        mi(ns, "a"),
        (seen: Seen) => ({ metadata: { resourceVersion: rvOf("a")(seen) } }),
        409,
      ),
      mergePatch("merge patch to an invalid value", mi(ns, "a"), { spec: { suspend: "yes" } }, 422),
      mergePatch("merge patch of a missing object", mi(ns, "missing"), { spec: { suspend: true } }, 404),
      {
        what: "JSON patch adds a label",
        method: "PATCH",
        path: mi(ns, "a"),
        contentType: jsonPatch,
        body: [{ op: "add", path: "/metadata/labels", value: { tier: "gold" } }],
        status: 200,
      },
      {
        what: "JSON patch whose test fails",
        method: "PATCH",
        path: mi(ns, "a"),
        contentType: jsonPatch,
        body: [{ op: "test", path: "/spec/image", value: "other" }],
        status: 422,
      },
      {
        what: "JSON patch removing a path that does not exist",
        method: "PATCH",
        path: mi(ns, "a"),
        contentType: jsonPatch,
        body: [{ op: "remove", path: "/spec/nothing" }],
        status: 422,
      },
      {
        what: "strategic merge patch of a custom resource",
        method: "PATCH",
        path: mi(ns, "a"),
        contentType: strategic,
        body: { spec: { suspend: false } },
        status: 415,
      },
      {
        what: "patch with an unknown content type",
        method: "PATCH",
        path: mi(ns, "a"),
        contentType: "text/plain",
        body: "suspend",
        status: 415,
      },
      {
        what: "merge patch that is not JSON",
        method: "PATCH",
        path: mi(ns, "a"),
        contentType: merge,
        body: "{",
        status: 400,
      },
      {
        what: "create a ConfigMap",
        method: "POST",
        path: cm(ns),
        body: {
          apiVersion: "v1",
          kind: "ConfigMap",
          metadata: { name: "c", finalizers: ["x/y"] },
          data: { k: "v" },
        },
        status: 201,
      },
      {
        what: "strategic merge patch of a ConfigMap (maps merge, finalizers merge as a set)",
        method: "PATCH",
        path: cm(ns, "c"),
        contentType: strategic,
        body: { metadata: { finalizers: ["x/z"] }, data: { other: "w" } },
        status: 200,
      },
      mergePatch("release the ConfigMap's finalizers", cm(ns, "c"), { metadata: { finalizers: null } }),
    ],
  },
  {
    name: "server-side apply: create, no-op, conflicts with causes, force, removal of fields a manager stops applying",
    steps: (ns) => {
      const applyAs = (
        what: string,
        manager: string,
        body: object,
        status: number,
        extra = "",
      ): RequestStep => ({
        what,
        method: "PATCH",
        path: mi(ns, "a", `fieldManager=${manager}${extra}`),
        contentType: apply,
        body: JSON.stringify(body),
        status,
      });
      return [
        namespace(ns),
        applyAs(
          "apply creates",
          "alice",
          modelImage("a", { image, suspend: true }, { labels: { owner: "alice" } }),
          201,
        ),
        applyAs(
          "apply the same again (nothing changes)",
          "alice",
          modelImage("a", { image, suspend: true }, { labels: { owner: "alice" } }),
          200,
        ),
        applyAs(
          "another manager applies a different value",
          "bob",
          modelImage("a", { image: "ghcr.io/acme/b:1" }),
          409,
        ),
        applyAs(
          "another manager forces it",
          "bob",
          modelImage("a", { image: "ghcr.io/acme/b:1" }),
          200,
          "&force=true",
        ),
        applyAs(
          "the first manager applies without suspend and the label",
          "alice",
          modelImage("a", { image: "ghcr.io/acme/b:1" }),
          200,
        ),
        {
          what: "apply without a fieldManager",
          method: "PATCH",
          path: mi(ns, "a"),
          contentType: apply,
          body: JSON.stringify(modelImage("a")),
          status: 422,
        },
        applyAs("apply with another kind", "alice", { ...modelImage("a"), kind: "NodeCache" }, 400),
        {
          what: "apply YAML to the status subresource",
          method: "PATCH",
          path: `${mi(ns, "a")}/status?fieldManager=status-writer`,
          contentType: apply,
          body: `apiVersion: ${group}\nkind: ModelImage\nmetadata:\n  name: a\nstatus:\n  digest: sha256:0f973b6045\n  nodes: 1/2\n`,
          status: 200,
        },
        applyAs(
          "apply to a name the body does not have",
          "alice",
          modelImage("other", { image: "ghcr.io/acme/b:1" }),
          400,
        ),
      ];
    },
  },
  {
    name: "status subresource: writes to the object keep status, writes to status keep the rest, generation follows spec",
    steps: (ns) => {
      const condition = (status: string) => ({
        type: "Ready",
        status,
        lastTransitionTime: "2026-01-01T00:00:00Z",
        reason: "Mirrored",
        message: "in the cache",
      });
      return [
        namespace(ns),
        create(ns, "a"),
        {
          what: "replace the status (spec changes in the body are ignored)",
          id: "status",
          method: "PUT",
          path: `${mi(ns, "a")}/status`,
          body: (seen: Seen) => ({
            ...seen("a").body,
            spec: { image: "ghcr.io/acme/ignored:1" },
            status: { observedGeneration: 1, conditions: [condition("True")], digest: "sha256:0f973b6045" },
          }),
          status: 200,
        },
        mergePatch("merge patch the object with a status (status is ignored)", mi(ns, "a"), {
          spec: { suspend: true },
          status: { digest: "ignored" },
        }),
        mergePatch("merge patch the status", `${mi(ns, "a")}/status`, { status: { nodes: "1/2" } }),
        mergePatch(
          "merge patch the status with an invalid condition",
          `${mi(ns, "a")}/status`,
          { status: { conditions: [condition("Maybe")] } },
          422,
        ),
        { what: "get the status subresource", path: `${mi(ns, "a")}/status`, status: 200 },
        mergePatch(
          "patch the status of a missing object",
          `${mi(ns, "missing")}/status`,
          { status: {} },
          404,
        ),
        {
          what: "create a ConfigMap",
          method: "POST",
          path: cm(ns),
          body: { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "c" } },
          status: 201,
        },
        mergePatch("patch the status of a kind without one", `${cm(ns, "c")}/status`, { status: {} }, 404),
      ];
    },
  },
  {
    name: "finalizers and deletion: deletionTimestamp, no new finalizers, removal deletes, preconditions",
    steps: (ns) => [
      namespace(ns),
      create(ns, "a", { image }, { finalizers: ["stowage.dev/hold"] }),
      { what: "delete an object with a finalizer", method: "DELETE", path: mi(ns, "a"), status: 200 },
      { what: "get it while it is being deleted", path: mi(ns, "a"), status: 200 },
      { what: "delete it again", method: "DELETE", path: mi(ns, "a"), status: 200 },
      mergePatch(
        "add a finalizer while it is being deleted",
        mi(ns, "a"),
        { metadata: { finalizers: ["stowage.dev/hold", "stowage.dev/more"] } },
        422,
      ),
      mergePatch("change a label while it is being deleted", mi(ns, "a"), {
        metadata: { labels: { x: "y" } },
      }),
      mergePatch("remove the last finalizer", mi(ns, "a"), { metadata: { finalizers: null } }),
      { what: "get it after its finalizer went", path: mi(ns, "a"), status: 404 },
      create(ns, "b"),
      {
        what: "delete with a uid precondition that does not match",
        method: "DELETE",
        path: mi(ns, "b"),
        body: { preconditions: { uid: "00000000-0000-0000-0000-000000000000" } },
        status: 409,
      },
      {
        what: "delete with a resourceVersion precondition that matches",
        method: "DELETE",
        path: mi(ns, "b"),
        body: (seen: Seen) => ({ preconditions: { resourceVersion: rvOf("b")(seen) } }),
        status: 200,
      },
      { what: "delete a missing object", method: "DELETE", path: mi(ns, "b"), status: 404 },
      {
        what: "create a ConfigMap",
        method: "POST",
        path: cm(ns),
        body: { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "c" } },
        status: 201,
      },
      { what: "delete a ConfigMap", method: "DELETE", path: cm(ns, "c"), status: 200 },
    ],
  },
  {
    name: "watch from a resourceVersion: the changes after it in order, bookmarks before the timeout",
    steps: (ns) => [
      namespace(ns),
      create(ns, "a"),
      {
        what: "watch from a's resourceVersion with bookmarks",
        watch: (seen: Seen) =>
          mi(
            ns,
            "",
            `watch=true&resourceVersion=${rvOf("a")(seen)}&allowWatchBookmarks=true&timeoutSeconds=5`,
          ),
        during: [
          mergePatch("patch a", mi(ns, "a"), { metadata: { labels: { tier: "gold" } } }),
          create(ns, "b"),
          { what: "delete a", method: "DELETE", path: mi(ns, "a"), status: 200 },
          mergePatch("patch b's status", `${mi(ns, "b")}/status`, { status: { nodes: "0/1" } }),
        ],
      },
      {
        what: "watch one object by name from the start",
        watch: (seen: Seen) =>
          mi(
            ns,
            "",
            `watch=true&fieldSelector=metadata.name%3Db&resourceVersion=${rvOf("a")(seen)}&timeoutSeconds=2`,
          ),
      },
    ],
  },
  {
    name: "watch without a resourceVersion, selector transitions, watch-list initial events",
    steps: (ns) => [
      namespace(ns),
      create(ns, "a", { image }, { labels: { tier: "gold" } }),
      create(ns, "b", { image }, { labels: { tier: "silver" } }),
      {
        what: "watch tier=gold without a resourceVersion",
        watch: mi(ns, "", "watch=true&labelSelector=tier%3Dgold&timeoutSeconds=3"),
        during: [
          mergePatch("b joins the selection", mi(ns, "b"), { metadata: { labels: { tier: "gold" } } }),
          mergePatch("a leaves the selection", mi(ns, "a"), { metadata: { labels: { tier: "bronze" } } }),
          mergePatch("a changes outside the selection", mi(ns, "a"), { spec: { suspend: true } }),
          { what: "delete b", method: "DELETE", path: mi(ns, "b"), status: 200 },
        ],
      },
      {
        what: "watch-list: initial events, then a bookmark marking their end",
        watch: mi(
          ns,
          "",
          "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=6",
        ),
        during: [create(ns, "c")],
        // the real watch cache sends the end-of-initial-events bookmark on its next one-second tick
        settleMs: 2_000,
      },
      {
        what: "watch-list without bookmarks",
        watch: mi(
          ns,
          "",
          "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1",
        ),
      },
      {
        what: "watch with a resourceVersion that is not a number",
        method: "GET",
        path: mi(ns, "", "watch=true&resourceVersion=abc&timeoutSeconds=1"),
        status: 500,
      },
    ],
  },
  {
    name: "410 Gone after compaction: exact list, continue token, watch; relist and the inconsistent continue work",
    steps: (ns) => [
      namespace(ns),
      create(ns, "a"),
      create(ns, "b"),
      { what: "list the first page", id: "page", path: mi(ns, "", "limit=1"), status: 200 },
      create(ns, "c"),
      { what: "compact", forgetHistory: { before: rvOf("a") } },
      {
        what: "list exactly at a compacted resourceVersion",
        path: (seen: Seen) => mi(ns, "", `resourceVersion=${rvOf("a")(seen)}&resourceVersionMatch=Exact`),
        status: 410,
      },
      {
        what: "continue a list from before the compaction",
        id: "expired",
        path: (seen: Seen) => mi(ns, "", `limit=1&continue=${seen("page").body.metadata.continue}`),
        status: 410,
      },
      {
        what: "continue with the token the 410 carried (the rest at the latest revision)",
        path: (seen: Seen) => mi(ns, "", `limit=1&continue=${seen("expired").body.metadata.continue}`),
        status: 200,
      },
      {
        what: "watch from a compacted resourceVersion",
        watch: (seen: Seen) => mi(ns, "", `watch=true&resourceVersion=${rvOf("a")(seen)}&timeoutSeconds=5`),
      },
      { what: "relist", id: "relist", path: mi(ns), status: 200 },
      {
        what: "watch from the relist",
        watch: (seen: Seen) =>
          mi(ns, "", `watch=true&resourceVersion=${rvOf("relist")(seen)}&timeoutSeconds=2`),
        during: [create(ns, "d")],
      },
    ],
  },
  {
    name: "label and field selectors on lists, and their errors",
    steps: (ns) => {
      const list = (what: string, query: string, status = 200): RequestStep => ({
        what,
        path: mi(ns, "", query),
        status,
      });
      return [
        namespace(ns),
        create(ns, "a", { image }, { labels: { tier: "gold", env: "prod" } }),
        create(ns, "b", { image }, { labels: { tier: "silver" } }),
        create(ns, "c"),
        list("tier=gold", "labelSelector=tier%3Dgold"),
        list("tier!=gold", "labelSelector=tier!%3Dgold"),
        list("tier in (gold,silver)", "labelSelector=tier%20in%20(gold%2Csilver)"),
        list("tier notin (gold)", "labelSelector=tier%20notin%20(gold)"),
        list("tier exists", "labelSelector=tier"),
        list("!tier", "labelSelector=!tier"),
        list("tier=gold,env=prod", "labelSelector=tier%3Dgold%2Cenv%3Dprod"),
        list("metadata.name=b", "fieldSelector=metadata.name%3Db"),
        list("metadata.name!=b", "fieldSelector=metadata.name!%3Db"),
        list("metadata.namespace", `fieldSelector=metadata.namespace%3D${ns}`),
        list("a field that is not selectable", "fieldSelector=spec.image%3Dx", 400),
        list("a malformed label selector", "labelSelector=tier%20in%20gold", 400),
        list("an invalid label value", "labelSelector=tier%3D-bad-", 400),
        {
          what: "all namespaces, one namespace by field",
          path: `/apis/${group}/modelimages?fieldSelector=metadata.namespace%3D${ns}&labelSelector=tier`,
          status: 200,
        },
        list("limit 2", "limit=2"),
      ];
    },
  },
  {
    name: "table output: ModelImage printer columns, single object, includeObject",
    steps: (ns) => [
      namespace(ns),
      create(ns, "a"),
      create(ns, "b", { variants: [{ name: "cuda", image }] }),
      mergePatch("give a a status", `${mi(ns, "a")}/status`, {
        status: {
          conditions: [
            {
              type: "Ready",
              status: "True",
              lastTransitionTime: "2026-01-01T00:00:00Z",
              reason: "Mirrored",
              message: "in the cache",
            },
          ],
          digest: "sha256:0f973b6045",
          nodes: "2/3",
          lagSince: "2026-01-01T00:00:00Z",
        },
      }),
      { what: "list as a Table", path: mi(ns), accept: tableAccept, status: 200 },
      { what: "get one as a Table", path: mi(ns, "a"), accept: tableAccept, status: 200 },
      {
        what: "list as a Table with includeObject=None",
        path: mi(ns, "", "includeObject=None"),
        accept: tableAccept,
        status: 200,
      },
      {
        what: "list as a Table with includeObject=Object",
        path: mi(ns, "", "includeObject=Object"),
        accept: tableAccept,
        status: 200,
      },
    ],
  },
  {
    name: "CRD schema and CEL: every invalid ModelImage of test/api/invalidSpecs.ts, type errors, unknown fields",
    steps: (ns) => [
      namespace(ns),
      ...invalidSpecs.map(
        (invalid, i): RequestStep => ({
          what: `refuse ${invalid.what}`,
          method: "POST",
          path: `${mi(ns)}?fieldValidation=Strict`,
          body: modelImage(`invalid-${i}`, invalid.spec),
          status: invalid.serverOnly ? 400 : 422,
        }),
      ),
      {
        what: "refuse a string where an integer belongs",
        method: "POST",
        path: mi(ns),
        body: modelImage("typed", { image, prewarm: { maxConcurrentNodes: "4" } }),
        status: 422,
      },
      {
        what: "refuse a ModelImage without a spec",
        method: "POST",
        path: mi(ns),
        body: { apiVersion: group, kind: "ModelImage", metadata: { name: "no-spec" } },
        status: 422,
      },
      {
        what: "refuse bounds errors and a CEL rule at once (bounds do not block rules)",
        method: "POST",
        path: mi(ns),
        body: modelImage("several", {
          image,
          variants: [{ name: "cuda", image }],
          prewarm: { maxConcurrentNodes: 0, minReadyNodes: -1 },
        }),
        status: 422,
      },
      {
        what: "prune an unknown field with a warning (fieldValidation=Warn, the default)",
        method: "POST",
        path: mi(ns),
        body: modelImage("pruned", { image, imagee: image }),
        status: 201,
      },
      {
        what: "prune an unknown field silently (fieldValidation=Ignore)",
        method: "POST",
        path: `${mi(ns)}?fieldValidation=Ignore`,
        body: modelImage("ignored", { image, imagee: image }),
        status: 201,
      },
      {
        what: "refuse an unknown fieldValidation",
        method: "POST",
        path: `${mi(ns)}?fieldValidation=Loud`,
        body: modelImage("loud"),
        status: 422,
      },
      create(ns, "valid"),
      mergePatch(
        "refuse an update that breaks a CEL rule",
        mi(ns, "valid"),
        { spec: { variants: [{ name: "x", image }] } },
        422,
      ),
    ],
  },
  {
    name: "RBAC: 403 bodies for a user without rights, a Role bound to a group, 401 for an unknown token",
    steps: (ns) => {
      const denied = (what: string, step: Omit<RequestStep, "what" | "status" | "as">): RequestStep => ({
        what,
        ...step,
        as: "nobody",
        status: 403,
      });
      return [
        namespace(ns),
        create(ns, "a"),
        denied("get", { path: mi(ns, "a") }),
        denied("get a missing object (403, not 404)", { path: mi(ns, "missing") }),
        denied("list", { path: mi(ns) }),
        denied("list in all namespaces", { path: `/apis/${group}/modelimages` }),
        denied("watch", { path: mi(ns, "", "watch=true") }),
        denied("create", { method: "POST", path: mi(ns), body: modelImage("b") }),
        denied("patch the status", {
          method: "PATCH",
          path: `${mi(ns, "a")}/status`,
          contentType: merge,
          body: { status: {} },
        }),
        denied("delete", { method: "DELETE", path: mi(ns, "a") }),
        denied("get a cluster-scoped object", { path: "/api/v1/namespaces/default" }),
        denied("list a cluster-scoped custom resource", { path: `/apis/${group}/nodecaches` }),
        {
          what: "grant get on modelimages",
          method: "POST",
          path: `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`,
          body: {
            apiVersion: "rbac.authorization.k8s.io/v1",
            kind: "Role",
            metadata: { name: "modelimage-reader" },
            rules: [{ apiGroups: ["stowage.dev"], resources: ["modelimages"], verbs: ["get"] }],
          },
          status: 201,
        },
        {
          what: "bind it to the readers group",
          method: "POST",
          path: `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`,
          body: {
            apiVersion: "rbac.authorization.k8s.io/v1",
            kind: "RoleBinding",
            metadata: { name: "modelimage-readers" },
            roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "modelimage-reader" },
            subjects: [
              { apiGroup: "rbac.authorization.k8s.io", kind: "Group", name: "differential-readers" },
            ],
          },
          status: 201,
        },
        {
          what: "a reader gets",
          path: mi(ns, "a"),
          as: "reader",
          status: 200,
          until: (reply: Reply) => reply.status === 200,
        },
        { what: "a reader may not list", path: mi(ns), as: "reader", status: 403 },
        {
          what: "a reader may not get in another namespace",
          path: mi("default", "a"),
          as: "reader",
          status: 403,
        },
        { what: "a reader may not get the status", path: `${mi(ns, "a")}/status`, as: "reader", status: 403 },
        { what: "an unknown token", path: mi(ns, "a"), as: "stranger", status: 401 },
      ];
    },
  },
  {
    name: "mutating webhook over clientConfig.url: the AdmissionReview it receives and the mutated object",
    steps: (ns, env) => {
      const webhookName = `${ns}.differential.stowage.dev`;
      const labelled = (name: string) =>
        modelImage(name, { image }, { labels: { "differential/webhook": "yes" } });
      return [
        namespace(ns),
        {
          what: "register the webhook",
          method: "POST",
          path: "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
          body: {
            apiVersion: "admissionregistration.k8s.io/v1",
            kind: "MutatingWebhookConfiguration",
            metadata: { name: ns },
            webhooks: [
              {
                name: webhookName,
                clientConfig: { url: env.webhookUrl, caBundle: env.webhookCaBundle },
                rules: [
                  {
                    operations: ["CREATE", "UPDATE"],
                    apiGroups: ["stowage.dev"],
                    apiVersions: ["v1alpha1"],
                    resources: ["modelimages"],
                  },
                ],
                namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": ns } },
                objectSelector: { matchLabels: { "differential/webhook": "yes" } },
                sideEffects: "None",
                admissionReviewVersions: ["v1"],
                failurePolicy: "Fail",
                timeoutSeconds: 10,
              },
            ],
          },
          status: 201,
        },
        {
          what: "a dry-run create once the webhook is active",
          method: "POST",
          path: `${mi(ns)}?dryRun=All`,
          body: labelled("probe"),
          status: 201,
          until: (reply) => reply.body?.metadata?.labels?.["differential/mutated"] === "yes",
        },
        { what: "forget the probes' reviews", webhookReviews: "drop" },
        { ...create(ns, "a"), body: labelled("a"), what: "create a labelled ModelImage" },
        { what: "the CREATE review", webhookReviews: "compare" },
        mergePatch("update it", mi(ns, "a"), { spec: { suspend: true } }),
        { what: "the UPDATE review", webhookReviews: "compare" },
        create(ns, "unlabelled"),
        { what: "no review for an object the objectSelector leaves out", webhookReviews: "compare" },
        {
          what: "remove the webhook",
          method: "DELETE",
          path: `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/${ns}`,
          status: 200,
        },
      ] satisfies Step[];
    },
  },
];

let double: Target;
let real: Target;
let webhook: WebhookRecorder;
let certDir: string;

beforeAll(async () => {
  certDir = await mkdtemp(join(tmpdir(), "stowage-differential-"));
  webhook = await startWebhook(await makeServerCertificate(certDir));
  ({ double, real } = await startTargets());
});

afterAll(async () => {
  await Promise.all([double?.close(), real?.close(), webhook?.close()]);
  if (certDir) await rm(certDir, { recursive: true, force: true });
});

describe("the API double answers like kube-apiserver v1.37", () => {
  scenarios.forEach((scenario, i) => {
    it(scenario.name, async () => {
      const ns = `differential-${i + 1}`;
      const [onDouble, onReal] = await Promise.all([
        runScenario(double, scenario, ns, webhook),
        runScenario(real, scenario, ns, webhook),
      ]);
      // the scenario does what it says on the real server, so agreement is about the intended answers
      const unintended = onReal.statuses
        .filter((s) => s.answered !== s.intended)
        .map((s) => `${s.step}: real answered ${s.answered}, the scenario means ${s.intended}`);
      expect(unintended, unintended.join("\n")).toEqual([]);
      const disagreements = differences(onDouble.views, onReal.views);
      expect(disagreements, disagreements.join("\n")).toEqual([]);
      expect(onDouble.views).toEqual(onReal.views);
    });
  });
});
