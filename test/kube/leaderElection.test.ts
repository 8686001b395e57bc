import { spawn } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type KubeClient, Resources } from "../../src/kube/client.ts";
import { done } from "../../src/kube/controller.ts";
import { Informer } from "../../src/kube/informer.ts";
import type { Lease } from "../../src/kube/leaderElection.ts";
import { Manager } from "../../src/kube/manager.ts";
import { formatMicroTime } from "../../src/kube/time.ts";
import { createRuntimeMetrics } from "../../src/metrics.ts";
import { startRefusingWebhook } from "./apiFaults.ts";
import { createNamespace, eventually, metricSum, startCluster, type TestCluster } from "./helpers.ts";

let cluster: TestCluster;
let client: KubeClient;
const running: Manager[] = [];
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  ({ cluster, client } = await startCluster());
});

afterAll(async () => {
  await Promise.all(running.map((m) => m.stop()));
  for (const cleanup of cleanups) await cleanup();
  await cluster?.stop();
});

// Short enough to keep the takeovers quick, long enough that a renewal slowed by a busy machine
// (a lease PUT through the real apiserver) does not lose the lease by accident.
const timing = { leaseDurationMs: 3000, renewDeadlineMs: 2000, retryPeriodMs: 300 };

/** A manager whose reconciler records which replica reconciled what. */
function replica(
  namespace: string,
  identity: string,
  calls: string[],
  options: { releaseOnCancel?: boolean } = {},
) {
  const manager = new Manager({
    client,
    metrics: createRuntimeMetrics(),
    leaderElection: { namespace, name: "stowage-controller", identity, ...timing, ...options },
    shutdownDeadlineMs: 2000,
  });
  const configMaps = manager.addInformer({ type: Resources.ConfigMap, namespace });
  manager
    .addController({
      name: "recorder",
      reconcile: async (key) => {
        calls.push(`${identity} ${key}`);
        return done();
      },
    })
    .watches(configMaps);
  running.push(manager);
  return manager;
}

async function holder(namespace: string): Promise<Lease["spec"]> {
  return (await client.resource<Lease>(Resources.Lease).get("stowage-controller", namespace)).spec;
}

/** Every holderIdentity written to the namespace's Lease, in order (watched from before it exists). */
async function recordHolders(namespace: string): Promise<string[]> {
  const holders: string[] = [];
  const leases = new Informer<Lease>({
    client,
    type: Resources.Lease,
    namespace,
    fieldSelector: "metadata.name=stowage-controller",
    metrics: createRuntimeMetrics(),
  });
  const record = (lease: Lease) => {
    const next = lease.spec?.holderIdentity ?? "";
    if (holders.at(-1) !== next) holders.push(next);
  };
  leases.addEventHandler({ add: record, update: (_old, lease) => record(lease) });
  leases.start();
  await leases.waitForSync();
  cleanups.push(() => leases.stop());
  return holders;
}

async function createConfigMap(namespace: string, name: string) {
  await client.resource(Resources.ConfigMap).create({ metadata: { name, namespace } });
}

describe("leader election", () => {
  it("runs the reconciler only on the leader, and the other replica takes over after the leader dies without releasing", async () => {
    const ns = "le-crash";
    await createNamespace(client, ns);
    await createConfigMap(ns, "one");
    const calls: string[] = [];
    const holders = await recordHolders(ns);
    const a = replica(ns, "replica-a", calls, { releaseOnCancel: false });
    await a.start();
    await eventually("replica-a leads", () => a.isLeader() && calls.includes(`replica-a ${ns}/one`));
    const b = replica(ns, "replica-b", calls);
    await b.start();
    await b.waitForSync();
    await createConfigMap(ns, "two");
    await eventually("the leader reconciles two", () => calls.includes(`replica-a ${ns}/two`));
    // Several retry periods pass with both replicas running: the follower never reconciles.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(calls.filter((c) => c.startsWith("replica-b"))).toEqual([]);
    expect(b.isLeader()).toBe(false);
    expect(await metricSum(a.metrics, "leader_election_master_status", { name: "stowage-controller" })).toBe(
      1,
    );
    expect(await metricSum(b.metrics, "leader_election_master_status", { name: "stowage-controller" })).toBe(
      0,
    );

    await a.stop(); // like a crash: the lease is left to expire
    expect((await holder(ns))?.holderIdentity).toBe("replica-a");
    await eventually("replica-b takes over", () => b.isLeader(), 3 * timing.leaseDurationMs + 5000);
    await eventually("replica-b reconciles", () => calls.includes(`replica-b ${ns}/one`));
    const lease = await holder(ns);
    expect(lease?.holderIdentity).toBe("replica-b");
    expect(lease?.leaseTransitions).toBe(1);
    expect(lease?.renewTime).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    // The holders are recorded from a watch, which sees the takeover a moment after it happened.
    await eventually("the lease watch saw replica-b", () => holders.at(-1) === "replica-b");
    expect(holders).toEqual(["replica-a", "replica-b"]);
    await b.stop();
  });

  it("releases the lease on a graceful stop so the other replica takes over without waiting for expiry", async () => {
    const ns = "le-release";
    await createNamespace(client, ns);
    await createConfigMap(ns, "one");
    const calls: string[] = [];
    const holders = await recordHolders(ns);
    const a = replica(ns, "replica-a", calls);
    await a.start();
    await eventually("replica-a leads", () => a.isLeader());
    const b = replica(ns, "replica-b", calls);
    await b.start();
    await a.stop();
    expect(a.isLeader()).toBe(false);
    await eventually("replica-b takes over", () => b.isLeader());
    await eventually("replica-b reconciles", () => calls.includes(`replica-b ${ns}/one`));
    // The handover went through an empty holder: released, not expired. The holders come from a
    // watch, which sees the takeover a moment after it happened (a loaded CI run read it first).
    await eventually("the lease watch saw replica-b", () => holders.at(-1) === "replica-b");
    expect(holders).toEqual(["replica-a", "", "replica-b"]);
    await b.stop();
    expect((await holder(ns))?.holderIdentity).toBe("");
    expect((await holder(ns))?.leaseDurationSeconds).toBe(1);
  });

  it("stops its reconcilers when it cannot renew the lease within the renew deadline", async () => {
    const ns = "le-lost";
    await createNamespace(client, ns);
    await createConfigMap(ns, "one");
    const calls: string[] = [];
    // An admission webhook that refuses the namespace's Lease writes while the test says so.
    const leaseWrites = await startRefusingWebhook(client, {
      name: "refuse-lease-writes",
      rules: [
        {
          operations: ["CREATE", "UPDATE"],
          apiGroups: ["coordination.k8s.io"],
          apiVersions: ["v1"],
          resources: ["leases"],
        },
      ],
      namespace: ns,
      message: "lease writes refused by the test",
      probe: () =>
        client.request("POST", `/apis/coordination.k8s.io/v1/namespaces/${ns}/leases`, {
          query: { dryRun: "All" },
          body: { apiVersion: "coordination.k8s.io/v1", kind: "Lease", metadata: { name: "probe" } },
        }),
    });
    cleanups.push(() => leaseWrites.stop());
    const a = replica(ns, "replica-a", calls);
    await a.start();
    await eventually("replica-a leads", () => a.isLeader());
    leaseWrites.refusing = true;
    await eventually("replica-a steps down", () => !a.isLeader(), 10_000);
    expect(await metricSum(a.metrics, "leader_election_master_status", { name: "stowage-controller" })).toBe(
      0,
    );
    const reconcilesAfterLoss = calls.length;
    await createConfigMap(ns, "while-not-leading");
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(calls.length).toBe(reconcilesAfterLoss);
    // Once the API accepts writes again it campaigns, wins, and reconciles what it missed.
    leaseWrites.refusing = false;
    await eventually("replica-a leads again", () => a.isLeader(), 10_000);
    await eventually("the missed object is reconciled", () =>
      calls.includes(`replica-a ${ns}/while-not-leading`),
    );
    await a.stop();
  });

  it("aborts reconciles in flight at once when another replica takes the lease, not after the shutdown deadline", async () => {
    const ns = "le-stolen";
    await createNamespace(client, ns);
    await createConfigMap(ns, "busy");
    let started = false;
    let abortedAfterLoss = false;
    const manager = new Manager({
      client,
      metrics: createRuntimeMetrics(),
      leaderElection: { namespace: ns, name: "stowage-controller", identity: "replica-a", ...timing },
      shutdownDeadlineMs: 120_000, // were the loss handled like a shutdown, the test would time out
    });
    const configMaps = manager.addInformer({ type: Resources.ConfigMap, namespace: ns });
    manager
      .addController({
        name: "busy",
        reconcile: async (key, ctx) => {
          if (key !== `${ns}/busy`) return done();
          started = true;
          await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve()));
          abortedAfterLoss = !manager.isLeader();
          return done();
        },
      })
      .watches(configMaps);
    running.push(manager);
    await manager.start();
    await eventually("replica-a leads and reconciles", () => manager.isLeader() && started);
    // Another replica takes the lease (as after a partition longer than the lease).
    const lease = await client.resource<Lease>(Resources.Lease).get("stowage-controller", ns);
    const now = formatMicroTime(Date.now());
    await client.resource<Lease>(Resources.Lease).update({
      ...lease,
      spec: {
        ...lease.spec,
        holderIdentity: "replica-b",
        leaseDurationSeconds: 60,
        acquireTime: now,
        renewTime: now,
      },
    });
    await eventually("the reconcile in flight is aborted", () => abortedAfterLoss, 15_000);
    expect((await holder(ns))?.holderIdentity).toBe("replica-b");
  });

  it("releases the lease when a controller process gets SIGTERM", async () => {
    const ns = "le-sigterm";
    await createNamespace(client, ns);
    const script = fileURLToPath(new URL("./fixtures/managerProcess.ts", import.meta.url));
    const child = spawn(process.execPath, [script, cluster.kubeconfigPath, ns, "replica-proc"], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let output = "";
    child.stdout.on("data", (chunk) => {
      output += chunk;
    });
    const exited = once(child, "exit");
    await eventually("the child leads", () => output.includes("leading"), 20_000);
    expect((await holder(ns))?.holderIdentity).toBe("replica-proc");
    child.kill("SIGTERM");
    const [code] = await exited;
    expect(code).toBe(0);
    expect(output).toContain("stopped");
    expect((await holder(ns))?.holderIdentity).toBe("");
  });
});
