import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type KubeClient, Resources } from "../../src/kube/client.ts";
import { type Condition, setCondition } from "../../src/kube/conditions.ts";
import { EventRecorder } from "../../src/kube/events.ts";
import { ensureFinalizer, hasFinalizer, removeFinalizer } from "../../src/kube/finalizers.ts";
import { writeStatus } from "../../src/kube/status.ts";
import {
  createNamespace,
  createWidgetCrd,
  startCluster,
  type TestCluster,
  type Widget,
  WidgetType,
} from "./helpers.ts";

let cluster: TestCluster;
let client: KubeClient;

beforeAll(async () => {
  ({ cluster, client } = await startCluster());
  await createWidgetCrd(client);
  await createNamespace(client, "ml");
});

afterAll(async () => {
  await cluster?.stop();
});

const writes = async () =>
  (await cluster.requestLog()).filter(
    (r) => ["POST", "PUT", "PATCH", "DELETE"].includes(r.method) && r.path.includes("widgets"),
  );

describe("status writes", () => {
  it("writes status through /status and makes no API write when the status is unchanged", async () => {
    const widgets = client.resource<Widget>(WidgetType);
    const created = await widgets.create({
      metadata: { name: "steady", namespace: "ml" },
      spec: { size: 1 },
    });
    const now = Date.parse("2026-01-01T00:00:00Z");
    const statusOf = (w: Widget) => ({
      observedGeneration: w.metadata?.generation,
      conditions: setCondition(
        w.status?.conditions as Condition[] | undefined,
        {
          type: "Ready",
          status: "True",
          reason: "Ready",
          message: "ok",
          observedGeneration: w.metadata?.generation,
        },
        now,
      ),
    });
    await cluster.resetRequestLog();
    const first = await writeStatus(widgets, created, (_s, w) => statusOf(w));
    expect(first.written).toBe(true);
    expect((await writes()).map((r) => `${r.method} ${r.path}`)).toEqual([
      `PUT ${widgets.objectPath("steady", "ml", "status")}`,
    ]);
    expect(first.object.status?.observedGeneration).toBe(1);

    await cluster.resetRequestLog();
    const again = await writeStatus(widgets, first.object, (_s, w) => statusOf(w));
    const later = await writeStatus(widgets, again.object, (_s, w) => statusOf(w));
    expect([again.written, later.written]).toEqual([false, false]);
    expect(await writes()).toEqual([]);
  });

  it("writes nothing once its signal is aborted (a reconcile abandoned when the controller stopped or lost the lease)", async () => {
    const widgets = client.resource<Widget>(WidgetType);
    const created = await widgets.create({
      metadata: { name: "abandoned", namespace: "ml" },
      spec: { size: 1 },
    });
    await cluster.resetRequestLog();
    const stopped = new AbortController();
    stopped.abort(new Error("controller stopped"));
    const stale: Widget["status"] = { phase: "stale" };
    const refused = await writeStatus(widgets, created, () => stale, { signal: stopped.signal }).catch(
      (err: unknown) => err,
    );
    expect(refused).toMatchObject({ reason: "Aborted" });
    expect(await writes()).toEqual([]);
    expect((await widgets.get("abandoned", "ml")).status).toBeUndefined();
  });

  it("re-reads and re-applies the mutation when the status write hits a conflict", async () => {
    const widgets = client.resource<Widget>(WidgetType);
    const stale = await widgets.create({
      metadata: { name: "contested", namespace: "ml" },
      spec: { size: 1 },
    });
    // Someone else writes in between: our copy's resourceVersion is now stale.
    await widgets.patchStatus("contested", { status: { notes: ["theirs"] } }, "ml");
    await cluster.resetRequestLog();
    const result = await writeStatus<NonNullable<Widget["status"]>, Widget>(widgets, stale, (status) => ({
      ...status,
      notes: [...(status?.notes ?? []), "ours"],
    }));
    expect(result.written).toBe(true);
    expect(result.object.status?.notes).toEqual(["theirs", "ours"]);
    const statusCalls = (await cluster.requestLog()).filter((r) => r.path.includes("contested"));
    expect(statusCalls.map((r) => `${r.method} ${r.status}`)).toEqual(["PUT 409", "GET 200", "PUT 200"]);
    expect((await widgets.get("contested", "ml")).status?.notes).toEqual(["theirs", "ours"]);
  });
});

describe("finalizers", () => {
  it("adds and removes our finalizer without dropping one another controller added meanwhile", async () => {
    const widgets = client.resource<Widget>(WidgetType);
    const ours = "stowage.dev/cleanup";
    const created = await widgets.create({
      metadata: { name: "guarded", namespace: "ml", finalizers: ["other.io/keep"] },
    });
    // Another controller adds its finalizer after we read the object.
    await widgets.patch("guarded", [{ op: "add", path: "/metadata/finalizers/-", value: "late.io/also" }], {
      namespace: "ml",
    });
    const withOurs = await ensureFinalizer(widgets, created, ours);
    expect(withOurs.metadata?.finalizers).toEqual(["other.io/keep", "late.io/also", ours]);
    expect(hasFinalizer(withOurs, ours)).toBe(true);
    await cluster.resetRequestLog();
    expect((await ensureFinalizer(widgets, withOurs, ours)).metadata?.finalizers).toHaveLength(3);
    expect(await writes()).toEqual([]);

    // And another one after we added ours: our copy is stale again when we remove ours.
    await widgets.patch("guarded", [{ op: "add", path: "/metadata/finalizers/-", value: "later.io/x" }], {
      namespace: "ml",
    });
    const withoutOurs = await removeFinalizer(widgets, withOurs, ours);
    expect(withoutOurs.metadata?.finalizers).toEqual(["other.io/keep", "late.io/also", "later.io/x"]);
    expect((await widgets.get("guarded", "ml")).metadata?.finalizers).toEqual([
      "other.io/keep",
      "late.io/also",
      "later.io/x",
    ]);
  });
});

describe("event recorder", () => {
  it("bumps the series count of a repeated event instead of creating another Event", async () => {
    const widgets = client.resource<Widget>(WidgetType);
    const regarding = await widgets.create({ metadata: { name: "noisy", namespace: "ml" } });
    let now = Date.parse("2026-01-01T00:00:00Z");
    const recorder = new EventRecorder({
      client,
      reportingController: "stowage.dev/controller",
      reportingInstance: "controller-0",
      clock: { now: () => now, sleep: async () => {} },
    });
    const failed = {
      type: "Warning" as const,
      reason: "UpstreamUnavailable",
      action: "Sync",
      note: "503 from nvcr.io",
    };
    await recorder.event(regarding, failed);
    now += 1000;
    await recorder.event(regarding, failed);
    now += 1000;
    await recorder.event(regarding, failed);
    await recorder.event(regarding, {
      type: "Normal",
      reason: "Mirrored",
      action: "Sync",
      note: "copied 3 blobs",
    });

    const events = await client
      .resource<Widget & Record<string, never>>(Resources.Event)
      .list({ namespace: "ml" });
    // biome-ignore lint/suspicious/noExplicitAny: events.k8s.io fields are read as plain JSON here
    const items = events.items as any[];
    const warnings = items.filter((e) => e.reason === "UpstreamUnavailable");
    expect(warnings).toHaveLength(1);
    expect(warnings[0].series.count).toBe(3);
    expect(warnings[0].series.lastObservedTime).toBe("2026-01-01T00:00:02.000000Z");
    expect(warnings[0].regarding).toMatchObject({
      kind: "Widget",
      name: "noisy",
      uid: regarding.metadata?.uid,
    });
    expect(warnings[0]).toMatchObject({
      type: "Warning",
      action: "Sync",
      note: "503 from nvcr.io",
      reportingController: "stowage.dev/controller",
      reportingInstance: "controller-0",
    });
    expect(items.filter((e) => e.reason === "Mirrored")).toHaveLength(1);
  });
});
