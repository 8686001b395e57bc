/**
 * The machinery of the differential test (test/real/differential.test.ts): one API double and one
 * real control plane started with the same CRDs and the same static-token users, a scenario's
 * steps sent to each, and what each server answered reduced to a view where only what
 * legitimately differs between two API servers is replaced (the list below says what and why).
 * Two views of the same step are then compared whole.
 */
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { Agent, request } from "undici";
import { loadAllCrds } from "../../src/api/crds.ts";
import { type KubeObject, startApiServer, type TestApiServer } from "../../testkit/apiserver/index.ts";
import { type ControlPlane, startControlPlane } from "../../testkit/controlplane/index.ts";
import type { ServerCertificate } from "../../testkit/tls.ts";

// biome-ignore lint/suspicious/noExplicitAny: JSON answered by an API server, shaped by the request
type Json = any;

/** Who sends a request: the same token string names the same user on both servers. */
export type Identity = "admin" | "nobody" | "reader" | "stranger";

export const users: Record<Identity, { name: string; groups: string[] }> = {
  admin: { name: "differential-admin", groups: ["system:masters"] },
  nobody: { name: "differential-nobody", groups: [] },
  reader: { name: "differential-reader", groups: ["differential-readers"] },
  // its token is given to neither server
  stranger: { name: "", groups: [] },
};

/**
 * What the comparison replaces before comparing, field by field, and why that difference is
 * legitimate. Everything else in a response is compared as answered.
 */
export const normalisedFields: { field: string; why: string }[] = [
  { field: "metadata.uid", why: "random on each server" },
  {
    field: "metadata.resourceVersion of objects",
    why: "each server counts its own revisions; replaced by the order in which the scenario first saw each value (rv1, rv2, …), so 'the same version' and 'a new version' still compare",
  },
  {
    field: "metadata.resourceVersion of lists, tables and bookmarks",
    why: "the real server's revision also moves with its own writes (leases), so it is compared as present",
  },
  {
    field: "metadata.creationTimestamp, metadata.deletionTimestamp, managedFields[].time",
    why: "wall clock; compared as present",
  },
  {
    field: "order of managedFields entries",
    why: "the real server orders them by their time (whole seconds), so two writes in the same or in adjacent seconds come in either order; compared sorted by manager, operation and subresource",
  },
  {
    field: "metadata.name of an object created with generateName",
    why: "random suffix; compared as the prefix plus five characters",
  },
  {
    field: 'managedFields[].fieldsV1 entries ".", "v:…" and "i:…"',
    why: "the double does not model them (testkit/apiserver/README.md, Simplifications); the fields each manager owns are compared",
  },
  { field: "metadata.continue of lists and Status", why: "opaque tokens each server encodes its own way" },
  { field: "Table cells of date columns (Age)", why: "wall clock" },
  {
    field: 'Status message "too old resource version: A (B)"',
    why: "A is mapped like an object's resourceVersion; B, where the server's history starts, is each server's own revision",
  },
  {
    field: "consecutive BOOKMARK watch events",
    why: "the real watch cache sends one or two bookmarks in the two seconds before a watch times out, timed by a jittered one-second ticker; compared as one",
  },
  { field: "AdmissionReview request.uid", why: "random per call" },
  { field: "Status details.uid, and uids in Status messages", why: "random on each server" },
  {
    field: "order of Status details.causes when there are several, and the message listing them",
    why: "the real server validates object properties in Go map order, which is random; causes are compared as a sorted list",
  },
  {
    field: "webhooks[].clientConfig.url of a MutatingWebhookConfiguration",
    why: "each server is given its own path on the recording webhook, so the AdmissionReviews can be told apart",
  },
];

export interface Reply {
  status: number;
  body: Json;
  warnings: string[];
}

/** Replies so far in a scenario on one server, by step id. */
export type Seen = (id: string) => Reply;

type Dynamic<T> = T | ((seen: Seen) => T);

export interface RequestStep {
  /** what the step checks, shown when the servers disagree */
  what: string;
  /** to refer to this reply in later steps */
  id?: string;
  method?: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  path: Dynamic<string>;
  body?: Dynamic<unknown>;
  contentType?: string;
  accept?: string;
  as?: Identity;
  /** the HTTP status both servers must answer */
  status: number;
  /**
   * Resend (up to 10 s) until the reply satisfies this: for what a real server applies a moment
   * after it is written (RBAC bindings, webhook configurations reach its informers asynchronously).
   */
  until?: (reply: Reply) => boolean;
}

export interface WatchStep {
  what: string;
  /** path and query of the watch; it should carry timeoutSeconds, the stream is read until the server ends it */
  watch: Dynamic<string>;
  as?: Identity;
  /** requests sent while the watch is open, compared like any step */
  during?: RequestStep[];
  /** milliseconds to wait after the watch opened before `during` (default none) */
  settleMs?: number;
}

/**
 * The server forgets its history up to now. Double: `compact()`. Real: etcd is compacted at its
 * current revision through its gRPC gateway (recorded under compact_rev_key, where the apiserver's
 * compactor looks), and the ModelImage watch cache is started afresh by a change to the CRD's
 * description, because the real watch cache keeps its own window of events regardless of etcd.
 */
export interface ForgetStep {
  what: string;
  forgetHistory: { before: (seen: Seen) => string };
}

/** The AdmissionReview requests the webhook received from this server since the last such step. */
export interface WebhookStep {
  what: string;
  /** "compare" the reviews, or "drop" them unseen (after probes whose count is timing) */
  webhookReviews: "compare" | "drop";
}

export type Step = RequestStep | WatchStep | ForgetStep | WebhookStep;

/** What a scenario's steps may differ in between the two servers. */
export interface ScenarioEnv {
  /** where this server reaches the recording webhook */
  webhookUrl: string;
  webhookCaBundle: string;
}

export interface Scenario {
  /** the test's name: what the scenario checks */
  name: string;
  steps(ns: string, env: ScenarioEnv): Step[];
}

export interface Target {
  name: "double" | "real";
  url: string;
  dispatcher: Agent;
  token(who: Identity): string;
  forgetHistory(before: string): Promise<void>;
  close(): Promise<void>;
}

/** One double and one real control plane with the Stowage CRDs and the same users. */
export async function startTargets(): Promise<{ double: Target; real: Target; api: TestApiServer }> {
  const tokens = Object.fromEntries(
    (Object.keys(users) as Identity[]).map((who) => [who, `${who}-${Math.random().toString(36).slice(2)}`]),
  ) as Record<Identity, string>;
  const known = (Object.keys(users) as Identity[]).filter((who) => who !== "stranger");
  const crds = loadAllCrds();
  const [plane, api] = await Promise.all([
    startControlPlane({
      crds,
      // nothing here needs controllers; without them nothing writes into the test namespaces
      controllerManager: false,
      scheduler: false,
      users: Object.fromEntries(known.map((who) => [tokens[who], users[who]])),
    }),
    startApiServer({
      crds: crds as KubeObject[],
      rbac: true,
      users: Object.fromEntries(
        // the token file gives each user a uid (its name, as startControlPlane writes it)
        known.map((who) => [
          tokens[who],
          { user: users[who].name, uid: users[who].name, groups: users[who].groups },
        ]),
      ),
      // the real watch cache's bookmark frequency (a minute)
      bookmarkIntervalMs: 60_000,
    }),
  ]);
  const doubleAgent = new Agent();
  const realAgent = new Agent({ connect: { ca: plane.caPem } });
  const double: Target = {
    name: "double",
    url: api.url,
    dispatcher: doubleAgent,
    token: (who) => tokens[who],
    async forgetHistory() {
      api.compact();
    },
    async close() {
      await doubleAgent.close();
      await api.stop();
    },
  };
  const real: Target = {
    name: "real",
    url: plane.url,
    dispatcher: realAgent,
    token: (who) => tokens[who],
    forgetHistory: (before) => forgetRealHistory(plane, realAgent, tokens.admin, before),
    async close() {
      await realAgent.close();
      await plane.stop();
    },
  };
  return { double, real, api };
}

const modelImagesCrd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/modelimages.stowage.dev";

async function forgetRealHistory(
  plane: ControlPlane,
  dispatcher: Agent,
  adminToken: string,
  before: string,
): Promise<void> {
  const etcd = async (path: string, body: object): Promise<Json> => {
    const res = await fetch(`${plane.etcdUrl}${path}`, {
      method: "POST",
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    if (!res.ok) throw new Error(`etcd ${path}: ${res.status} ${await res.text()}`);
    return res.json();
  };
  const b64 = (text: string) => Buffer.from(text).toString("base64");
  const revision = (await etcd("/v3/kv/range", { key: b64("compact_rev_key") })).header.revision as string;
  await etcd("/v3/kv/put", { key: b64("compact_rev_key"), value: b64(revision) });
  await etcd("/v3/kv/compaction", { revision, physical: true });
  const target: Pick<Target, "url" | "dispatcher" | "token"> = {
    url: plane.url,
    dispatcher,
    token: () => adminToken,
  };
  const touched = await send(target, {
    what: "restart the ModelImage watch cache",
    method: "PATCH",
    path: modelImagesCrd,
    contentType: "application/json-patch+json",
    body: [
      {
        op: "replace",
        path: "/spec/versions/0/schema/openAPIV3Schema/description",
        value: `Container images to keep mirrored (history forgotten at ${revision}).`,
      },
    ],
    status: 200,
  });
  if (touched.status !== 200)
    throw new Error(`touching the CRD: ${touched.status} ${JSON.stringify(touched.body)}`);
  // The CRD handler swaps the storage when its informer sees the change; until then the old watch
  // cache still answers. Bounded: a fresh cache answers within seconds.
  const deadline = Date.now() + 30_000;
  const path = `/apis/stowage.dev/v1alpha1/modelimages?watch=true&resourceVersion=${before}&timeoutSeconds=1`;
  while (Date.now() < deadline) {
    const opened = await openWatch(target, path, "admin");
    const events = await opened.events();
    if (events[0]?.type === "ERROR" && events[0].object?.code === 410) return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`the real watch cache still replays from ${before} 30 s after the CRD changed`);
}

function parseWarnings(header: string | string[] | undefined): string[] {
  const values = header === undefined ? [] : Array.isArray(header) ? header : [header];
  return values.flatMap((value) =>
    [...value.matchAll(/299 - "((?:[^"\\]|\\.)*)"/g)].map((m) => JSON.parse(`"${m[1]}"`) as string),
  );
}

async function send(
  target: Pick<Target, "url" | "dispatcher" | "token">,
  step: RequestStep,
  seen: Seen = () => {
    throw new Error("no earlier replies");
  },
): Promise<Reply> {
  const path = typeof step.path === "function" ? step.path(seen) : step.path;
  const body = typeof step.body === "function" ? step.body(seen) : step.body;
  const payload = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
  const res = await request(`${target.url}${path}`, {
    method: step.method ?? "GET",
    dispatcher: target.dispatcher,
    headers: {
      authorization: `Bearer ${target.token(step.as ?? "admin")}`,
      accept: step.accept ?? "application/json",
      ...(payload === undefined ? {} : { "content-type": step.contentType ?? "application/json" }),
    },
    body: payload,
    headersTimeout: 30_000,
    bodyTimeout: 30_000,
  });
  const text = await res.body.text();
  let parsed: Json = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: compared as text
  }
  return { status: res.statusCode, body: parsed, warnings: parseWarnings(res.headers.warning) };
}

interface WatchEvent {
  type: string;
  object: Json;
}

async function openWatch(
  target: Pick<Target, "url" | "dispatcher" | "token">,
  path: string,
  as: Identity,
): Promise<{ status: number; events(): Promise<WatchEvent[]> }> {
  const res = await request(`${target.url}${path}`, {
    method: "GET",
    dispatcher: target.dispatcher,
    headers: { authorization: `Bearer ${target.token(as)}`, accept: "application/json" },
    headersTimeout: 30_000,
    bodyTimeout: 30_000,
  });
  const events: WatchEvent[] = [];
  const read = (async () => {
    let buffered = "";
    for await (const chunk of res.body) {
      buffered += chunk.toString("utf8");
      let newline = buffered.indexOf("\n");
      while (newline >= 0) {
        const line = buffered.slice(0, newline).trim();
        buffered = buffered.slice(newline + 1);
        if (line) events.push(JSON.parse(line));
        newline = buffered.indexOf("\n");
      }
    }
    if (buffered.trim()) events.push(JSON.parse(buffered));
  })();
  return {
    status: res.statusCode,
    async events() {
      let timer: NodeJS.Timeout | undefined;
      const limit = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`watch ${path} did not end within 60 s`)), 60_000);
      });
      try {
        await Promise.race([read, limit]);
      } finally {
        clearTimeout(timer);
        res.body.destroy();
      }
      return events;
    },
  };
}

/** The mutating webhook both servers call: records each AdmissionReview by caller, adds a label. */
export interface WebhookRecorder {
  url(target: Target["name"]): string;
  caBundle: string;
  /** reviews received from `target` since the last call */
  take(target: Target["name"]): Json[];
  close(): Promise<void>;
}

export async function startWebhook(cert: ServerCertificate): Promise<WebhookRecorder> {
  const received: Record<string, Json[]> = { double: [], real: [] };
  const server: Server = createServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const review = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      const caller = new URL(req.url ?? "/", "https://localhost").pathname.split("/")[1] ?? "";
      received[caller]?.push(review);
      const labels = review.request?.object?.metadata?.labels;
      const patch = labels
        ? [{ op: "add", path: "/metadata/labels/differential~1mutated", value: "yes" }]
        : [{ op: "add", path: "/metadata/labels", value: { "differential/mutated": "yes" } }];
      const answer = {
        apiVersion: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: {
          uid: review.request?.uid,
          allowed: true,
          patchType: "JSONPatch",
          patch: Buffer.from(JSON.stringify(patch)).toString("base64"),
          warnings: ["differential webhook was here"],
        },
      };
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(answer));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: (target) => `https://127.0.0.1:${port}/${target}/mutate`,
    caBundle: Buffer.from(cert.caPem).toString("base64"),
    take(target) {
      const out = received[target];
      received[target] = [];
      return out;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const uuid = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;

/** Replaces, in one server's replies within one scenario, what legitimately differs (see normalisedFields). */
class Normaliser {
  private readonly versions = new Map<string, string>();

  version(rv: unknown): unknown {
    if (typeof rv !== "string" || rv === "") return rv;
    let ordinal = this.versions.get(rv);
    if (!ordinal) {
      ordinal = `rv${this.versions.size + 1}`;
      this.versions.set(rv, ordinal);
    }
    return ordinal;
  }

  body(body: Json): Json {
    if (typeof body !== "object" || body === null || Array.isArray(body)) return body;
    if (body.kind === "Status") return this.status(body);
    if (body.kind === "Table") return this.table(body);
    if (Array.isArray(body.items)) {
      return {
        ...body,
        metadata: this.listMeta(body.metadata),
        items: body.items.map((item: Json) => this.object(item)),
      };
    }
    return this.object(body);
  }

  listMeta(meta: Json): Json {
    if (typeof meta !== "object" || meta === null) return meta;
    const out = { ...meta };
    if (out.resourceVersion !== undefined) out.resourceVersion = "<list-rv>";
    if (out.continue) out.continue = "<continue>";
    return out;
  }

  status(status: Json): Json {
    const out = { ...status };
    if (typeof out.message === "string") {
      out.message = out.message
        .replace(
          /too old resource version: (\d+) \((\d+)\)/,
          (_: string, asked: string) => `too old resource version: ${this.version(asked)} (<rv>)`,
        )
        .replace(uuid, "<uid>");
    }
    if (out.metadata) out.metadata = this.listMeta(out.metadata);
    if (out.details?.uid) out.details = { ...out.details, uid: "<uid>" };
    const causes = out.details?.causes;
    if (Array.isArray(causes) && causes.length > 1) {
      const key = (c: Json) => `${c.field}\u0000${c.reason}\u0000${c.message}`;
      out.details = { ...out.details, causes: [...causes].sort((a, b) => key(a).localeCompare(key(b))) };
      if (typeof out.message === "string")
        out.message = out.message.replace(/ is invalid: \[.*\]$/s, " is invalid: [<each cause>]");
    }
    return out;
  }

  table(table: Json): Json {
    const dateColumns = new Set<number>();
    (table.columnDefinitions ?? []).forEach((column: Json, i: number) => {
      if (column.type === "date" || column.name === "Age") dateColumns.add(i);
    });
    return {
      ...table,
      metadata: this.listMeta(table.metadata),
      rows: (table.rows ?? []).map((row: Json) => ({
        ...row,
        cells: row.cells.map((cell: Json, i: number) => (dateColumns.has(i) && cell ? "<age>" : cell)),
        ...(row.object ? { object: this.object(row.object) } : {}),
      })),
    };
  }

  object(obj: Json): Json {
    if (typeof obj !== "object" || obj === null || typeof obj.metadata !== "object") return obj;
    const meta = { ...obj.metadata };
    if (meta.uid !== undefined) meta.uid = "<uid>";
    if (meta.resourceVersion !== undefined) meta.resourceVersion = this.version(meta.resourceVersion);
    for (const key of ["creationTimestamp", "deletionTimestamp"])
      if (meta[key] !== undefined && meta[key] !== null) meta[key] = "<time>";
    if (typeof meta.generateName === "string" && typeof meta.name === "string") {
      const suffix = meta.name.slice(meta.generateName.length);
      if (meta.name.startsWith(meta.generateName) && /^[a-z0-9]{5}$/.test(suffix))
        meta.name = `${meta.generateName}<suffix>`;
    }
    if (Array.isArray(meta.managedFields)) {
      const key = (entry: Json) => `${entry.manager}|${entry.operation}|${entry.subresource ?? ""}`;
      meta.managedFields = meta.managedFields
        .map((entry: Json) => ({
          ...entry,
          ...(entry.time ? { time: "<time>" } : {}),
          fieldsV1: ownedFields(entry.fieldsV1),
        }))
        .sort((a: Json, b: Json) => key(a).localeCompare(key(b)));
    }
    const out = { ...obj, metadata: meta };
    if (Array.isArray(obj.webhooks))
      out.webhooks = obj.webhooks.map((webhook: Json) =>
        webhook?.clientConfig?.url
          ? { ...webhook, clientConfig: { ...webhook.clientConfig, url: "<webhook-url>" } }
          : webhook,
      );
    return out;
  }

  event(event: WatchEvent): WatchEvent {
    if (event.type === "BOOKMARK") {
      const object = { ...event.object, metadata: { ...event.object.metadata } };
      if (object.metadata.resourceVersion !== undefined) object.metadata.resourceVersion = "<bookmark-rv>";
      return { type: event.type, object };
    }
    return { type: event.type, object: this.body(event.object) };
  }

  review(review: Json): Json {
    const req = { ...review.request };
    if (req.uid) req.uid = "<uid>";
    if (req.object) req.object = this.object(req.object);
    if (req.oldObject) req.oldObject = this.object(req.oldObject);
    return { ...review, request: req };
  }
}

/** fieldsV1 without the entries the double does not model: "." (the field itself) and set/positional items. */
function ownedFields(fields: Json): Json {
  if (typeof fields !== "object" || fields === null) return fields;
  const out: Json = {};
  for (const [key, value] of Object.entries(fields)) {
    if (key === "." || key.startsWith("v:") || key.startsWith("i:")) continue;
    out[key] = ownedFields(value);
  }
  return out;
}

/** What one step answered on one server, normalised: the unit the test compares. */
export type View =
  | { step: string; status: number; body: Json; warnings: string[] }
  | { step: string; status: number; events: WatchEvent[] }
  | { step: string; reviews: Json[] }
  | { step: string; dropped: true }
  | { step: string; forgot: true };

export interface ScenarioRun {
  /** one per step, watch `during` steps included */
  views: View[];
  /** each request's (and watch's) status: what the server answered, and what the step meant to get */
  statuses: { step: string; answered: number; intended: number }[];
}

/** Runs a scenario's steps in order against one server. */
export async function runScenario(
  target: Target,
  scenario: Scenario,
  ns: string,
  webhook: WebhookRecorder,
): Promise<ScenarioRun> {
  const replies = new Map<string, Reply>();
  const seen: Seen = (id) => {
    const reply = replies.get(id);
    if (!reply) throw new Error(`step "${id}" has not run (or has no id)`);
    return reply;
  };
  const normaliser = new Normaliser();
  const views: View[] = [];
  const statuses: ScenarioRun["statuses"] = [];
  const runRequest = async (step: RequestStep) => {
    let reply = await send(target, step, seen);
    const deadline = Date.now() + 10_000;
    while (step.until && !step.until(reply) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      reply = await send(target, step, seen);
    }
    if (step.id) replies.set(step.id, reply);
    statuses.push({ step: step.what, answered: reply.status, intended: step.status });
    views.push({
      step: step.what,
      status: reply.status,
      body: normaliser.body(reply.body),
      warnings: reply.warnings,
    });
  };
  const env: ScenarioEnv = { webhookUrl: webhook.url(target.name), webhookCaBundle: webhook.caBundle };
  for (const step of scenario.steps(ns, env)) {
    if ("path" in step) await runRequest(step);
    else if ("watch" in step) {
      const path = typeof step.watch === "function" ? step.watch(seen) : step.watch;
      const opened = await openWatch(target, path, step.as ?? "admin");
      const view: View = { step: step.what, status: opened.status, events: [] };
      views.push(view);
      statuses.push({ step: step.what, answered: opened.status, intended: 200 });
      if (step.settleMs) await new Promise((resolve) => setTimeout(resolve, step.settleMs));
      for (const inner of step.during ?? []) await runRequest(inner);
      const events = (await opened.events()).map((event) => normaliser.event(event));
      view.events = events.filter(
        (event, i) => !(event.type === "BOOKMARK" && events[i - 1]?.type === "BOOKMARK"),
      );
    } else if ("forgetHistory" in step) {
      await target.forgetHistory(step.forgetHistory.before(seen));
      views.push({ step: step.what, forgot: true });
    } else {
      const reviews = webhook.take(target.name);
      if (step.webhookReviews === "drop") views.push({ step: step.what, dropped: true });
      else views.push({ step: step.what, reviews: reviews.map((r) => normaliser.review(r)) });
    }
  }
  return { views, statuses };
}

/**
 * Where two runs of a scenario differ, one line per differing value: the step, the JSON path in its
 * view, and each server's value. Empty when the views are equal.
 */
export function differences(double: View[], real: View[]): string[] {
  const out: string[] = [];
  const show = (value: unknown) => (value === undefined ? "(absent)" : JSON.stringify(value));
  const walk = (a: unknown, b: unknown, path: string, step: string) => {
    if (typeof a === "object" && a !== null && typeof b === "object" && b !== null) {
      const [kindA, kindB] = [(a as { kind?: unknown }).kind, (b as { kind?: unknown }).kind];
      if (typeof kindA === "string" && typeof kindB === "string" && kindA !== kindB) {
        // a Status where the other answered an object: one line, not one per field
        out.push(`${step} › ${path}: double ${show(a).slice(0, 400)}, real ${show(b).slice(0, 400)}`);
        return;
      }
      if (Array.isArray(a) !== Array.isArray(b)) {
        out.push(`${step} › ${path}: double ${show(a)}, real ${show(b)}`);
        return;
      }
      const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
      for (const key of keys) {
        const child = Array.isArray(a) ? `${path}[${key}]` : path ? `${path}.${key}` : key;
        walk((a as Record<string, unknown>)[key], (b as Record<string, unknown>)[key], child, step);
      }
      return;
    }
    if (a !== b) out.push(`${step} › ${path}: double ${show(a)}, real ${show(b)}`);
  };
  for (let i = 0; i < Math.max(double.length, real.length); i++) {
    const step = real[i]?.step ?? double[i]?.step ?? `step ${i}`;
    walk(double[i], real[i], "", step);
  }
  return out;
}
