/**
 * The registry's garbage collection as the chart wires it, on the real control plane with a real
 * kubelet (as test/real/chart-on-kubelet.test.ts: the Stowage image built from the Dockerfile, a
 * distribution image from Debian's binary, both imported into the node's containerd, pods on the
 * host network on free ports). The cache keeps its blobs on a volume claim (hostPath volume, so
 * the test can look at the registry's storage on disk), `cache.gc` is on with a one-byte budget:
 * an image pulled through the front by nobody's declaration is evicted, and the controller's
 * leader holds the registry read-only (rollout), runs `registry garbage-collect` in a Job pinned
 * to the claim's node, and makes the registry writable again (rollout).
 *
 * This control plane runs no PersistentVolume binder (testkit/controlplane's controller list), so
 * the test binds the StatefulSet's claim to its hostPath volume itself, as the binder would.
 */
import { createHash } from "node:crypto";
import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { ClusterRegistryGc } from "../../src/controller/cachegc/cluster.ts";
import { collectWhilePaused } from "../../src/controller/cachegc/collect.ts";
import { KubeClient } from "../../src/kube/client.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { systemClock } from "../../src/util/clock.ts";
import { silentLogger } from "../../src/util/log.ts";
import { type ControlPlane, startControlPlane } from "../../testkit/controlplane/index.ts";
import { dockerUnavailableHere, startDocker } from "../../testkit/docker.ts";
import { helmOk } from "../../testkit/helm.ts";
import { pushImage } from "../../testkit/images.ts";
import { kubectl } from "../../testkit/kubectl.ts";
import { type KubeletNode, startKubeletNode } from "../../testkit/kubeletNode.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { buildChartImageArchives, type ChartImageArchives } from "../../testkit/registryImage.ts";
import { runnableImage } from "../../testkit/runnableImage.ts";
import { eventually } from "../support/eventually.ts";

// biome-ignore lint/suspicious/noExplicitAny: objects read back as free-form JSON
type Json = any;

const whyNoDocker = dockerUnavailableHere();
const root = resolve(import.meta.dirname, "../..");
const STOWAGE_IMAGE = "stowage.test/stowage:cache-gc-on-kubelet";
const RELEASE = "stowage";
const NAMESPACE = "stowage-system";
const CLAIM = `data-${RELEASE}-cache-0`;
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";

let dir: string;
let volume: string;
let plane: ControlPlane;
let node: KubeletNode;
let upstream: RunningRegistry;
let upstreamHost: string;
let cachePort: number;
let frontPort: number;
let controllerPort: number;
let declaredDigest: string;
let declaredBlobs: string[];
let undeclaredDigest: string;
/** Blobs of the undeclared image no declared image shares. */
let undeclaredOnly: string[];

const run = (args: string[]) => kubectl(args, { kubeconfig: plane.kubeconfigPath, dir });

/** The blob's data file in the registry's filesystem storage (the claim's hostPath). */
const blobFile = (digest: string) => {
  const hex = digest.replace("sha256:", "");
  return join(volume, "docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data");
};
const onDisk = async (digest: string) =>
  stat(blobFile(digest)).then(
    () => true,
    () => false,
  );

/**
 * Plays the PersistentVolume binder this control plane does not run: the StatefulSet's claim,
 * made here before the install (the StatefulSet uses a claim of its name that exists, and the
 * scheduler never sees it unbound), bound to our hostPath volume.
 */
async function bindClaim(): Promise<void> {
  const namespace = await plane.request("POST", "/api/v1/namespaces", {
    apiVersion: "v1",
    kind: "Namespace",
    metadata: { name: NAMESPACE },
  });
  expect(namespace.status, JSON.stringify(namespace.body)).toBe(201);
  // a class for statically provisioned volumes: the scheduler looks the claim's class up
  const storageClass = await plane.request("POST", "/apis/storage.k8s.io/v1/storageclasses", {
    apiVersion: "storage.k8s.io/v1",
    kind: "StorageClass",
    metadata: { name: "manual" },
    provisioner: "kubernetes.io/no-provisioner",
    volumeBindingMode: "Immediate",
  });
  expect(storageClass.status, JSON.stringify(storageClass.body)).toBe(201);
  const made = await plane.request("POST", `/api/v1/namespaces/${NAMESPACE}/persistentvolumeclaims`, {
    apiVersion: "v1",
    kind: "PersistentVolumeClaim",
    metadata: { name: CLAIM },
    spec: {
      accessModes: ["ReadWriteOnce"],
      storageClassName: "manual",
      resources: { requests: { storage: "1Gi" } },
    },
  });
  expect(made.status, JSON.stringify(made.body)).toBe(201);
  const claim = made.body;
  const pv = {
    apiVersion: "v1",
    kind: "PersistentVolume",
    metadata: { name: "stowage-cache-data" },
    spec: {
      capacity: { storage: "1Gi" },
      accessModes: ["ReadWriteOnce"],
      persistentVolumeReclaimPolicy: "Retain",
      storageClassName: "manual",
      hostPath: { path: volume, type: "Directory" },
      claimRef: {
        apiVersion: "v1",
        kind: "PersistentVolumeClaim",
        namespace: NAMESPACE,
        name: CLAIM,
        uid: claim.metadata.uid,
      },
    },
  };
  const created = await plane.request("POST", "/api/v1/persistentvolumes", pv);
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  const bound = await plane.request(
    "PATCH",
    "/api/v1/persistentvolumes/stowage-cache-data/status",
    {
      status: { phase: "Bound" },
    },
    "application/merge-patch+json",
  );
  expect(bound.status, JSON.stringify(bound.body)).toBe(200);
  const named = await plane.request(
    "PATCH",
    `/api/v1/namespaces/${NAMESPACE}/persistentvolumeclaims/${CLAIM}`,
    {
      // what the binder writes; the scheduler counts a claim bound only with the annotation
      metadata: { annotations: { "pv.kubernetes.io/bind-completed": "yes" } },
      spec: { volumeName: "stowage-cache-data" },
    },
    "application/merge-patch+json",
  );
  expect(named.status, JSON.stringify(named.body)).toBe(200);
  const claimBound = await plane.request(
    "PATCH",
    `/api/v1/namespaces/${NAMESPACE}/persistentvolumeclaims/${CLAIM}/status`,
    {
      status: { phase: "Bound", accessModes: ["ReadWriteOnce"], capacity: { storage: "1Gi" } },
    },
    "application/merge-patch+json",
  );
  expect(claimBound.status, JSON.stringify(claimBound.body)).toBe(200);
}

/** Every blob of an image, read through `base` and checked against its digest. */
async function pullAll(base: string, repository: string, reference: string): Promise<string[]> {
  const manifestResponse = await fetch(`${base}/v2/${repository}/manifests/${reference}`, {
    headers: { accept: OCI_MANIFEST },
  });
  expect(manifestResponse.status, `${base} ${repository}:${reference}`).toBe(200);
  const manifest = (await manifestResponse.json()) as Json;
  const digests: string[] = [manifest.config.digest, ...manifest.layers.map((l: Json) => l.digest)];
  for (const digest of digests) {
    const blob = await fetch(`${base}/v2/${repository}/blobs/${digest}`);
    expect(blob.status, `${base} blob ${digest}`).toBe(200);
    const bytes = Buffer.from(await blob.arrayBuffer());
    expect(`sha256:${createHash("sha256").update(bytes).digest("hex")}`).toBe(digest);
  }
  return digests;
}

async function controllerMetric(name: string): Promise<number> {
  const text = await fetch(`http://127.0.0.1:${controllerPort}/metrics`).then(
    (r) => r.text(),
    () => "",
  );
  return text
    .split("\n")
    .filter((line) => line.startsWith(name))
    .reduce((sum, line) => sum + Number(line.split(" ").at(-1)), 0);
}

/** Answers the registry an upload now (202 writable, 405 read-only)? */
async function uploadStatus(): Promise<number> {
  const response = await fetch(`http://127.0.0.1:${cachePort}/v2/probe/writes/blobs/uploads/`, {
    method: "POST",
  });
  await response.body?.cancel();
  return response.status;
}

async function statefulSetPaused(): Promise<boolean> {
  const sts = (
    await plane.request("GET", `/apis/apps/v1/namespaces/${NAMESPACE}/statefulsets/${RELEASE}-cache`)
  ).body;
  const registry = sts.spec.template.spec.containers.find((c: Json) => c.name === "registry");
  return (
    (registry.env ?? []).some((e: Json) => e.name === "REGISTRY_STORAGE_MAINTENANCE_READONLY") ||
    sts.metadata.annotations?.["stowage.dev/registry-gc-paused-since"] !== undefined
  );
}

async function controllerPods(): Promise<Json[]> {
  const got = await plane.request(
    "GET",
    `/api/v1/namespaces/${NAMESPACE}/pods?labelSelector=${encodeURIComponent("app.kubernetes.io/component=controller")}`,
  );
  return got.body.items ?? [];
}

describe.runIf(whyNoDocker === undefined)(
  "the registry's garbage collection the chart runs on a real kubelet node",
  () => {
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "cache-gc-on-kubelet-"));
      volume = join(dir, "cache-volume");
      await mkdir(volume);
      // the registry runs as a non-root user; a hostPath is not chowned by fsGroup
      await chmod(volume, 0o777);
      const docker = await startDocker();
      let archives: ChartImageArchives;
      try {
        archives = await buildChartImageArchives(docker, dir, STOWAGE_IMAGE);
      } finally {
        await docker.dispose();
      }
      plane = await startControlPlane({ apiserverFlags: ["--kubelet-preferred-address-types=InternalIP"] });
      node = await startKubeletNode(plane, "cache-node-1");
      await node.importImage(archives.stowage);
      await node.importImage(archives.registry);

      upstream = await startRegistry();
      upstreamHost = new URL(upstream.url).host;
      const client = new RegistryClient({ insecureHosts: [upstreamHost] });
      const declared = await runnableImage({ seed: "cache-gc/declared", dataLayerSizes: [2 * 1024 * 1024] });
      declaredDigest = await pushImage(
        client,
        { registry: upstreamHost, repository: "ml/model" },
        declared,
        "v1",
      );
      declaredBlobs = declared.blobs.map((b) => b.descriptor.digest);
      const undeclared = await runnableImage({
        seed: "cache-gc/undeclared",
        dataLayerSizes: [2 * 1024 * 1024],
      });
      undeclaredDigest = await pushImage(
        client,
        { registry: upstreamHost, repository: "ml/undeclared" },
        undeclared,
        "v1",
      );
      undeclaredOnly = undeclared.blobs
        .map((b) => b.descriptor.digest)
        .filter((d) => !declaredBlobs.includes(d));
      await client.close();
      expect(undeclaredOnly.length).toBeGreaterThanOrEqual(2);

      cachePort = await freePort();
      const [cacheMetricsPort, frontHealthPort] = await Promise.all([freePort(), freePort()]);
      [frontPort, controllerPort] = await Promise.all([freePort(), freePort()]);
      const apiServer = new URL(plane.url);
      const apiEnv = [
        { name: "KUBERNETES_SERVICE_HOST", value: apiServer.hostname },
        { name: "KUBERNETES_SERVICE_PORT", value: apiServer.port },
      ];
      const cacheUrl = `http://127.0.0.1:${cachePort}`;
      const [repository, tag] = STOWAGE_IMAGE.split(":");
      const [cacheRepository, cacheTag] = archives.registryTag.split(":");
      const values = {
        image: { repository, tag, pullPolicy: "Never" },
        controller: {
          replicas: 1,
          hostNetwork: true,
          healthPort: controllerPort,
          insecureRegistries: [upstreamHost],
          logLevel: "debug",
          extraEnv: apiEnv,
        },
        agent: { enabled: false },
        cache: {
          image: { repository: cacheRepository, tag: cacheTag, pullPolicy: "Never" },
          hostNetwork: true,
          port: cachePort,
          metricsPort: cacheMetricsPort,
          persistence: { enabled: true, storageClass: "manual", size: "1Gi" },
          controllerEndpoint: cacheUrl,
          nodeEndpoint: cacheUrl,
          front: { port: frontPort, healthPort: frontHealthPort, upstreamHosts: [upstreamHost] },
          // every undeclared byte is over budget; collections only after evictions
          gc: {
            enabled: true,
            sizeBudget: "1",
            evictionInterval: "3s",
            collectInterval: "0",
            collectTimeout: "5m",
          },
        },
        metrics: { serviceMonitor: { enabled: false } },
        prometheusRule: { enabled: false },
      };
      const valuesFile = join(dir, "values.yaml");
      await writeFile(valuesFile, stringify(values));
      await bindClaim();
      const installed = helmOk(
        [
          "install",
          RELEASE,
          join(root, "charts/stowage"),
          "--namespace",
          NAMESPACE,
          "--create-namespace",
          "--values",
          valuesFile,
          "--wait",
          "--timeout",
          "5m",
        ],
        { dir, kubeconfig: plane.kubeconfigPath, timeoutMs: 360_000 },
      );
      await installed.catch(async (err) => {
        const pods = await run(["get", "pods,pvc,pv", "-A", "-o", "wide"]);
        const events = await run(["get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"]);
        throw new Error(
          `${(err as Error).message}\n${pods.stdout}\n${events.stdout}\n--- kubelet\n${(await node.log()).split("\n").slice(-40).join("\n")}`,
        );
      });
    }, 1_200_000);

    afterAll(async () => {
      await node?.stop();
      await plane?.stop();
      await upstream?.stop();
      if (dir) await rm(dir, { recursive: true, force: true });
    }, 180_000);

    it("frees the blobs of an evicted undeclared image from the volume, keeps the declared image pullable, and takes writes again", async () => {
      // A declared image, mirrored by the controller: tagged in the cache, pinned.
      const manifest = {
        apiVersion: "stowage.dev/v1alpha1",
        kind: "ModelImage",
        metadata: { name: "model", namespace: "ml" },
        spec: {
          variants: [{ name: "default", image: `${upstreamHost}/ml/model:v1` }],
          prewarm: { enabled: false },
        },
      };
      await writeFile(join(dir, "model.yaml"), stringify(manifest));
      expect((await run(["create", "namespace", "ml"])).code).toBe(0);
      const applied = await run(["apply", "-f", join(dir, "model.yaml")]);
      expect(applied.code, applied.stderr).toBe(0);
      await eventually(
        "the declared ModelImage Ready",
        async () => {
          const got = await plane.request(
            "GET",
            "/apis/stowage.dev/v1alpha1/namespaces/ml/modelimages/model",
          );
          return got.body.status?.conditions?.some((c: Json) => c.type === "Ready" && c.status === "True")
            ? true
            : undefined;
        },
        240_000,
      );
      const cacheRepo = `${upstreamHost.replace(":", "_")}/ml`;
      for (const digest of declaredBlobs) expect(await onDisk(digest), digest).toBe(true);

      // An image nobody declared, pulled through the front as a node would: stored on the volume.
      const runsBefore = await controllerMetric('stowage_cache_registry_gc_runs_total{result="ok"}');
      const pulled = await pullAll(`http://127.0.0.1:${frontPort}`, `${cacheRepo}/undeclared`, "v1");
      expect(pulled).toEqual(expect.arrayContaining(undeclaredOnly));
      await eventually("the undeclared image's blobs on the volume", async () =>
        (await Promise.all(undeclaredOnly.map(onDisk))).every(Boolean) ? true : undefined,
      );

      // Evicted (over the one-byte budget), then collected: the blobs leave the volume.
      await eventually(
        "a registry garbage collection that succeeded",
        async () =>
          (await controllerMetric('stowage_cache_registry_gc_runs_total{result="ok"}')) > runsBefore
            ? true
            : undefined,
        600_000,
        1000,
      );
      for (const digest of undeclaredOnly) expect(await onDisk(digest), `${digest} freed`).toBe(false);
      expect(await controllerMetric("stowage_cache_evictions_total")).toBeGreaterThanOrEqual(1);
      // for the record (not asserted: timings belong in bench/): pause, Job and resume together
      console.info(
        `registry garbage collection on the kubelet: ${(await controllerMetric("stowage_cache_registry_gc_duration_seconds_sum")).toFixed(1)} s (two rollouts and the Job)`,
      );
      expect(await controllerMetric('stowage_cache_registry_gc_runs_total{result="failed"}')).toBe(0);

      // The declared image's blobs stayed, and it is pullable from the registry and through the front.
      for (const digest of declaredBlobs) expect(await onDisk(digest), `${digest} kept`).toBe(true);
      await pullAll(`http://127.0.0.1:${cachePort}`, `${cacheRepo}/model`, declaredDigest);
      await pullAll(`http://127.0.0.1:${frontPort}`, `${cacheRepo}/model`, "v1");

      // Writable again: the StatefulSet carries no read-only setting, the Job is gone, a push lands.
      const sts = (
        await plane.request("GET", `/apis/apps/v1/namespaces/${NAMESPACE}/statefulsets/${RELEASE}-cache`)
      ).body;
      const registry = sts.spec.template.spec.containers.find((c: Json) => c.name === "registry");
      expect((registry.env ?? []).map((e: Json) => e.name)).not.toContain(
        "REGISTRY_STORAGE_MAINTENANCE_READONLY",
      );
      expect(sts.metadata.annotations?.["stowage.dev/registry-gc-paused-since"]).toBeUndefined();
      await eventually("the collection Job gone", async () => {
        const job = await plane.request(
          "GET",
          `/apis/batch/v1/namespaces/${NAMESPACE}/jobs/${RELEASE}-cache-gc`,
        );
        return job.status === 404 ? true : undefined;
      });
      expect(await controllerMetric("stowage_cache_registry_read_only")).toBe(0);
      const pushClient = new RegistryClient({ insecureHosts: [`127.0.0.1:${cachePort}`] });
      try {
        const after = await runnableImage({ seed: "cache-gc/after", dataLayerSizes: [256 * 1024] });
        const pushed = await pushImage(
          pushClient,
          { registry: `127.0.0.1:${cachePort}`, repository: "after/gc" },
          after,
          "v1",
        );
        expect(pushed).toMatch(/^sha256:/);
      } finally {
        await pushClient.close();
      }
      // The front fetches the collected image again on the next pull, and serves it whole.
      await pullAll(`http://127.0.0.1:${frontPort}`, `${cacheRepo}/undeclared`, undeclaredDigest);
    }, 900_000);

    it("resumes writes when the collection Job fails, and a new leader undoes a pause a stopped one left", async () => {
      // The controller stands aside: this test drives the same collection with a Job that fails.
      const scaled = await run([
        "-n",
        NAMESPACE,
        "scale",
        `deployment/${RELEASE}-controller`,
        "--replicas=0",
      ]);
      expect(scaled.code, scaled.stderr).toBe(0);
      await eventually(
        "the controller pod gone",
        async () => ((await controllerPods()).length === 0 ? true : undefined),
        120_000,
      );
      const client = KubeClient.load({ path: plane.kubeconfigPath });
      const gc = new ClusterRegistryGc({
        client,
        namespace: NAMESPACE,
        statefulSet: `${RELEASE}-cache`,
        // no such config in the registry image: `registry garbage-collect` exits non-zero
        configPath: "/etc/docker/registry/missing.yml",
        rolloutTimeoutMs: 300_000,
        jobTimeoutMs: 180_000,
        clock: systemClock,
        logger: silentLogger(),
      });
      try {
        const failure = await collectWhilePaused(gc, () => gc.collect()).then(
          () => undefined,
          (err: Error) => err,
        );
        expect(failure?.message).toMatch(/garbage-collect Job stowage-system\/stowage-cache-gc failed/);
        expect(await statefulSetPaused()).toBe(false);
        const job = await plane.request(
          "GET",
          `/apis/batch/v1/namespaces/${NAMESPACE}/jobs/${RELEASE}-cache-gc`,
        );
        expect(job.status).toBe(404);
        expect(await uploadStatus()).toBe(202);
        await pullAll(
          `http://127.0.0.1:${cachePort}`,
          `${upstreamHost.replace(":", "_")}/ml/model`,
          declaredDigest,
        );

        // A leader stopped during a collection leaves the registry read-only...
        await gc.pause();
        expect(await statefulSetPaused()).toBe(true);
        expect(await uploadStatus()).toBe(405);
      } finally {
        client.close();
      }
      // ...and the next leader makes it writable again.
      const back = await run(["-n", NAMESPACE, "scale", `deployment/${RELEASE}-controller`, "--replicas=1"]);
      expect(back.code, back.stderr).toBe(0);
      await eventually(
        "the new leader resumed writes",
        async () => ((await statefulSetPaused()) ? undefined : true),
        300_000,
        1000,
      );
      await eventually(
        "the registry taking uploads again",
        async () => ((await uploadStatus()) === 202 ? true : undefined),
        300_000,
        1000,
      );
      await pullAll(
        `http://127.0.0.1:${cachePort}`,
        `${upstreamHost.replace(":", "_")}/ml/model`,
        declaredDigest,
      );
    }, 900_000);
  },
);

describe.runIf(whyNoDocker !== undefined)(
  "the registry's garbage collection on a real kubelet (no Docker engine here)",
  () => {
    it("cannot build the images it runs", () => {
      throw new Error(
        `building the Stowage image needs a Docker engine it can start: ${whyNoDocker}; run scripts/setup.sh as root`,
      );
    }, 300_000);
  },
);
