/**
 * The product as users install it, on real nodes: `helm install` of the chart onto the real
 * control plane with a real kubelet (its own containerd), running the Stowage image this test
 * builds from the Dockerfile (scripts/build-image.sh on a private Docker engine) and a CNCF
 * distribution image built from Debian's binary (testkit/registryImage.ts), both imported into
 * the node's containerd: nothing is pulled from outside. The controller Deployment, the agent
 * DaemonSet and the cache StatefulSet run as real pods; a ModelImage applied with kubectl is
 * mirrored into the cache pod, the agent pod pre-pulls it through the node's CRI, and a user pod
 * is held by the webhook's scheduling gate, released, scheduled and started.
 *
 * What this machine lacks and the values say instead: no kube-proxy and no cluster DNS, and every
 * address is on loopback (the EndpointSlice API refuses 127.0.0.0/8 endpoints), so the pods run
 * on the host network (chart `hostNetwork`), reach the API server at its loopback address
 * (KUBERNETES_SERVICE_HOST/PORT in `extraEnv`, which the kubelet's own service variables yield
 * to), the API server calls the webhook by URL (`webhook.url`) and the controller pushes to the
 * cache at its node address (`cache.controllerEndpoint`). Ports are free ones picked here.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { CriClient } from "../../src/agent/cri.ts";
import { ContainerdPinner } from "../../src/agent/pin.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type ControlPlane, startControlPlane } from "../../testkit/controlplane/index.ts";
import { dockerUnavailableHere, startDocker } from "../../testkit/docker.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
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
const execFileAsync = promisify(execFile);

const whyNoDocker = dockerUnavailableHere();
const root = resolve(import.meta.dirname, "../..");
const STOWAGE_IMAGE = "stowage.test/stowage:chart-on-kubelet";
const RELEASE = "stowage";
const NAMESPACE = "stowage-system";
const GPU_LABELS = {
  "nvidia.com/gpu.present": "true",
  "nvidia.com/cuda.driver.major": "12",
  "nvidia.com/cuda.driver.minor": "4",
};

let dir: string;
let plane: ControlPlane;
let node: KubeletNode;
let upstream: RunningRegistry;
/** The upstream as the controller and the node see it: behind a proxy that can slow it down. */
let upstreamProxy: FaultProxy;
let cachePort: number;
let modelRef: string;
let modelDigest: string;

const run = (args: string[]) => kubectl(args, { kubeconfig: plane.kubeconfigPath, dir });

/** The Pods of one chart component, as the API server has them. */
async function podsOf(component: string): Promise<Json[]> {
  const got = await plane.request(
    "GET",
    `/api/v1/namespaces/${NAMESPACE}/pods?labelSelector=${encodeURIComponent(`app.kubernetes.io/component=${component}`)}`,
  );
  return got.body.items ?? [];
}

describe.runIf(whyNoDocker === undefined)("the chart installed by helm onto a real kubelet node", () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "chart-on-kubelet-"));
    const docker = await startDocker();
    let archives: ChartImageArchives;
    try {
      archives = await buildChartImageArchives(docker, dir, STOWAGE_IMAGE);
    } finally {
      await docker.dispose();
    }
    plane = await startControlPlane({ apiserverFlags: ["--kubelet-preferred-address-types=InternalIP"] });
    node = await startKubeletNode(plane, "gpu-node-1", { labels: GPU_LABELS });
    await node.importImage(archives.stowage);
    await node.importImage(archives.registry);

    upstream = await startRegistry();
    upstreamProxy = await startFaultProxy(upstream.url);
    const image = await runnableImage({ seed: "chart-on-kubelet", dataLayerSizes: [3 * 1024 * 1024] });
    const upstreamHost = new URL(upstream.url).host;
    const client = new RegistryClient({ insecureHosts: [upstreamHost] });
    modelDigest = await pushImage(client, { registry: upstreamHost, repository: "ml/model" }, image, "v1");
    modelRef = `${new URL(upstreamProxy.url).host}/ml/model:v1`;

    cachePort = await freePort();
    const [cacheMetricsPort, controllerPort, webhookPort, agentPort, frontPort, frontHealthPort] =
      await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort(), freePort()]);
    const apiServer = new URL(plane.url);
    // The kubelet gives every container KUBERNETES_SERVICE_HOST/PORT for the `kubernetes`
    // Service's ClusterIP, which nothing routes here; a container's own env wins over those.
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
        insecureRegistries: [new URL(upstreamProxy.url).host],
        logLevel: "debug",
        extraEnv: apiEnv,
      },
      agent: {
        hostNetwork: true,
        healthPort: agentPort,
        criSocket: node.containerd.socketPath,
        containerdConfigPath: node.containerd.certsDir,
        containerdRoot: join(node.containerd.dir, "root"),
        // no containerdConfigFile: the chart's default mounts none and the agent asks containerd
        // through CRI Status; and the health server on the pod's IP only (the kubelet expands it)
        healthBindAddress: "podIP",
        extraEnv: apiEnv,
      },
      cache: {
        image: { repository: cacheRepository, tag: cacheTag, pullPolicy: "Never" },
        hostNetwork: true,
        port: cachePort,
        metricsPort: cacheMetricsPort,
        persistence: { enabled: false },
        controllerEndpoint: cacheUrl,
        nodeEndpoint: cacheUrl,
        // On the host network too: never the chart's fixed default ports.
        front: { port: frontPort, healthPort: frontHealthPort },
      },
      webhook: { enabled: true, port: webhookPort, url: `https://127.0.0.1:${webhookPort}/mutate-pods` },
      metrics: { serviceMonitor: { enabled: false } },
      prometheusRule: { enabled: false },
    };
    const valuesFile = join(dir, "values.yaml");
    await writeFile(valuesFile, stringify(values));
    await helmOk(
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
    ).catch(async (err) => {
      const pods = await run(["get", "pods", "-A", "-o", "wide"]);
      const events = await run(["get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"]);
      throw new Error(
        `${(err as Error).message}\n${pods.stdout}\n${events.stdout}\n--- kubelet\n${(await node.log()).split("\n").slice(-40).join("\n")}`,
      );
    });
  }, 1_200_000);

  afterAll(async () => {
    await node?.stop();
    await plane?.stop();
    await upstreamProxy?.stop();
    await upstream?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 180_000);

  it("runs the controller, the agent and the cache as ready pods of the built images on the node", async () => {
    for (const [component, image] of [
      ["controller", STOWAGE_IMAGE],
      ["agent", STOWAGE_IMAGE],
      ["cache", undefined],
    ] as const) {
      const pods = await podsOf(component);
      expect(pods, component).toHaveLength(1);
      const [pod] = pods;
      expect(pod.spec.nodeName).toBe(node.name);
      expect(pod.status.phase).toBe("Running");
      expect(pod.status.containerStatuses[0]).toMatchObject({ ready: true, started: true, restartCount: 0 });
      if (image) expect(pod.status.containerStatuses[0].image).toContain(image);
      // Really running on this node's containerd, not only reported.
      const id = String(pod.status.containerStatuses[0].containerID).replace("containerd://", "");
      expect(await node.runningTaskIds()).toContain(id);
    }
    // The controller runs as the image's non-root user under the chart's restricted context.
    const [controller] = await podsOf("controller");
    expect(controller.spec.securityContext.runAsNonRoot).toBe(true);
    // The agent runs as root, not privileged and with no capability, and works: ready above,
    // MirrorConfigured from containerd's own CRI Status, its health server on the pod IP.
    const [agent] = await podsOf("agent");
    expect(agent.spec.containers[0].securityContext).toMatchObject({
      privileged: false,
      runAsUser: 0,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ["ALL"] },
    });
    expect(agent.spec.containers[0].args).toContain("--health-bind-address=$(POD_IP)");
    expect(agent.spec.volumes.map((v: Json) => v.name)).not.toContain("containerd-config");
    // Its metrics, where the PodMonitor scrapes them: the http-metrics port on the pod's IP.
    const metricsPort = agent.spec.containers[0].ports.find(
      (p: Json) => p.name === "http-metrics",
    ).containerPort;
    const metrics = await (await fetch(`http://${agent.status.podIP}:${metricsPort}/metrics`)).text();
    expect(metrics).toMatch(/^stowage_agent_images_evicted_total 0$/m);
  }, 300_000);

  it("mirrors a ModelImage applied with kubectl into the cache pod, pre-pulls it on the node, and holds a user pod until then", async () => {
    // The upstream answers the layer only after a while: the pod below is created while the
    // ModelImage is still syncing, as it is when a team applies both at once.
    upstreamProxy.addRule({
      match: { method: "GET", path: /\/blobs\/sha256:/ },
      times: 1,
      action: { kind: "delay", ms: 8000 },
    });
    const manifest = {
      apiVersion: "stowage.dev/v1alpha1",
      kind: "ModelImage",
      metadata: { name: "model", namespace: "ml" },
      spec: {
        variants: [{ name: "cuda", image: modelRef, nodeSelector: { "nvidia.com/gpu.present": "true" } }],
        prewarm: { enabled: true, holdPods: true, holdTimeout: "10m" },
      },
    };
    await writeFile(join(dir, "model.yaml"), stringify(manifest));
    expect((await run(["create", "namespace", "ml"])).code).toBe(0);
    const applied = await run(["apply", "-f", join(dir, "model.yaml")]);
    expect(applied.code, applied.stderr).toBe(0);
    // The controller (whose webhook shares its ModelImage cache) has seen it once it writes status.
    await eventually("the controller's first status on the ModelImage", async () => {
      const got = await plane.request("GET", "/apis/stowage.dev/v1alpha1/namespaces/ml/modelimages/model");
      return got.body.status?.conditions?.length ? true : undefined;
    });

    const userPod = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "inference", namespace: "ml" },
      spec: {
        hostNetwork: true,
        automountServiceAccountToken: false,
        terminationGracePeriodSeconds: 5,
        nodeSelector: { "nvidia.com/gpu.present": "true" },
        containers: [{ name: "server", image: modelRef, imagePullPolicy: "IfNotPresent" }],
      },
    };
    const created = await plane.request("POST", "/api/v1/namespaces/ml/pods", userPod);
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    // Held: the webhook added the gate, so the scheduler has not placed it.
    expect(created.body.spec.schedulingGates).toEqual([{ name: "stowage.dev/prewarm" }]);
    expect(created.body.spec.nodeName).toBeUndefined();

    const running = await eventually(
      "the user pod released, scheduled and running",
      async () => {
        const got = await plane.request("GET", "/api/v1/namespaces/ml/pods/inference");
        return got.body.status?.phase === "Running" ? got.body : undefined;
      },
      180_000,
    );
    expect(running.spec.schedulingGates ?? []).toEqual([]);
    expect(running.spec.nodeName).toBe(node.name);
    expect(running.status.containerStatuses[0]).toMatchObject({ name: "server", ready: true });

    const mi = (await plane.request("GET", "/apis/stowage.dev/v1alpha1/namespaces/ml/modelimages/model"))
      .body;
    const condition = (type: string) => mi.status.conditions.find((c: Json) => c.type === type);
    expect(condition("Ready")).toMatchObject({ status: "True" });
    expect(condition("Prewarmed")).toMatchObject({ status: "True" });
    // The digest the ModelImage reports is the one pushed upstream, mirrored into the cache pod.
    expect(JSON.stringify(mi.status.variants)).toContain(modelDigest);
    const cached = await fetch(
      `http://127.0.0.1:${cachePort}/v2/${new URL(upstreamProxy.url).host.replace(":", "_")}/ml/model/manifests/${modelDigest}`,
      {
        method: "HEAD",
        headers: { accept: "application/vnd.oci.image.manifest.v1+json" },
      },
    );
    expect(cached.status).toBe(200);

    const nodeCache = (await plane.request("GET", `/apis/stowage.dev/v1alpha1/nodecaches/${node.name}`)).body;
    expect(nodeCache.status.images).toContainEqual(
      expect.objectContaining({ digest: modelDigest, state: "Present" }),
    );
    // The agent pod pulled it into this node's containerd before the pod ran: the kubelet found it there.
    const events = await run([
      "get",
      "events",
      "-n",
      "ml",
      "--field-selector",
      "involvedObject.name=inference",
      "-o",
      "json",
    ]);
    const messages = JSON.parse(events.stdout).items.map((e: Json) => `${e.reason}: ${e.message}`);
    expect(messages.join("\n")).toMatch(/already present on machine/);
    expect(messages.join("\n")).not.toMatch(/^Pulling:/m);
    // The unprivileged agent pod labelled the image pinned through containerd's images API; the
    // status says what the runtime makes of it (1.6, Debian's: nothing; 1.7+: CRI pinned).
    const pinner = new ContainerdPinner(node.containerd.socketPath);
    try {
      expect(await pinner.isLabelled(modelRef)).toBe(true);
    } finally {
      pinner.close();
    }
    const criView = new CriClient(node.containerd.socketPath);
    try {
      const runtimePinned = (await criView.imageStatus(modelRef))?.pinned;
      expect(runtimePinned).toBe(!/^v?1\.[0-6]\./.test((await criView.version()).runtimeVersion));
      expect(nodeCache.status.images).toContainEqual(
        expect.objectContaining({ digest: modelDigest, pinned: runtimePinned }),
      );
    } finally {
      criView.close();
    }
    // The unprivileged agent pod wrote containerd's mirror config on the host, and says so.
    expect(nodeCache.status.conditions).toContainEqual(
      expect.objectContaining({ type: "MirrorConfigured", status: "True", reason: "Configured" }),
    );
    const hostsToml = await readFile(
      join(node.containerd.certsDir, new URL(upstreamProxy.url).host, "hosts.toml"),
      "utf8",
    );
    expect(hostsToml).toContain(`http://127.0.0.1:${cachePort}/v2/`);
  }, 300_000);

  it("pulls an image nobody declared through the cache front on the kubelet's own pull, and a second pull after the node forgot it from the front's storage", async () => {
    const upstreamHost = new URL(upstreamProxy.url).host;
    const undeclared = await runnableImage({
      seed: "chart-on-kubelet/undeclared",
      dataLayerSizes: [2 * 1024 * 1024],
    });
    const pushClient = new RegistryClient({ insecureHosts: [new URL(upstream.url).host] });
    const undeclaredDigest = await pushImage(
      pushClient,
      { registry: new URL(upstream.url).host, repository: "ml/undeclared" },
      undeclared,
      "v1",
    );
    await pushClient.close();
    const undeclaredRef = `${upstreamHost}/ml/undeclared:v1`;

    // The front fetches from this test's upstream (not one of the chart's default hosts) on
    // free ports, and nodes pull from it. The controller holds host ports on the host network,
    // so a surge pod could not start beside it: it goes first and the upgrade brings it back.
    const [frontPort, frontHealthPort] = await Promise.all([freePort(), freePort()]);
    const frontUrl = `http://127.0.0.1:${frontPort}`;
    const scaled = await run(["-n", NAMESPACE, "scale", `deployment/${RELEASE}-controller`, "--replicas=0"]);
    expect(scaled.code, scaled.stderr).toBe(0);
    await eventually("the controller pod gone", async () =>
      (await podsOf("controller")).length === 0 ? true : undefined,
    );
    await helmOk(
      [
        "upgrade",
        RELEASE,
        join(root, "charts/stowage"),
        "--namespace",
        NAMESPACE,
        "--reuse-values",
        "--set",
        `cache.front.upstreamHosts={${upstreamHost}}`,
        "--set",
        `cache.front.port=${frontPort}`,
        "--set",
        `cache.front.healthPort=${frontHealthPort}`,
        "--set",
        `cache.nodeEndpoint=${frontUrl}`,
        "--wait",
        "--timeout",
        "4m",
      ],
      { dir, kubeconfig: plane.kubeconfigPath, timeoutMs: 300_000 },
    );
    const [cachePod] = await podsOf("cache");
    expect(cachePod.status.containerStatuses.map((c: Json) => [c.name, c.ready])).toEqual([
      ["front", true],
      ["registry", true],
    ]);
    // The planner points the node at the front and lists the upstream host, the agent writes it.
    await eventually("the node's NodeCache and hosts.toml naming the front", async () => {
      const nc = (await plane.request("GET", `/apis/stowage.dev/v1alpha1/nodecaches/${node.name}`)).body;
      if (nc.spec?.cacheEndpoint !== frontUrl || !nc.spec?.mirrorHosts?.includes(upstreamHost))
        return undefined;
      const hostsToml = await readFile(
        join(node.containerd.certsDir, upstreamHost, "hosts.toml"),
        "utf8",
      ).catch(() => "");
      return hostsToml.includes(`${frontUrl}/v2/`) ? true : undefined;
    });

    /** Upstream blob GETs of the undeclared image, by digest. */
    const upstreamBlobGets = () =>
      upstreamProxy
        .seen()
        .filter((seen) => seen.method === "GET" && seen.path.includes("/ml/undeclared/blobs/"))
        .map((seen) => seen.path.split("/blobs/")[1].split("?")[0]);
    // Its busybox layer is the model image's too, which the node holds: containerd asks for
    // the config and the data layer only.
    const modelLayers = new Set(
      (await runnableImage({ seed: "chart-on-kubelet", dataLayerSizes: [3 * 1024 * 1024] })).layers.map(
        (l) => l.descriptor.digest,
      ),
    );
    const fresh = undeclared.blobs
      .map((b) => b.descriptor.digest)
      .filter((digest) => !modelLayers.has(digest));
    expect(fresh.length).toBeGreaterThanOrEqual(2);
    const frontBlobHits = async () => {
      const text = await (await fetch(`http://127.0.0.1:${frontHealthPort}/metrics`)).text();
      return text
        .split("\n")
        .filter((line) => line.startsWith("stowage_cache_hits_total{") && line.includes('kind="blob"'))
        .reduce((sum, line) => sum + Number(line.split(" ").at(-1)), 0);
    };
    const runPod = async (name: string) => {
      const pod = {
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name, namespace: "ml" },
        spec: {
          hostNetwork: true,
          automountServiceAccountToken: false,
          terminationGracePeriodSeconds: 1,
          nodeSelector: { "nvidia.com/gpu.present": "true" },
          containers: [{ name: "main", image: undeclaredRef, imagePullPolicy: "IfNotPresent" }],
        },
      };
      const created = await plane.request("POST", "/api/v1/namespaces/ml/pods", pod);
      expect(created.status, JSON.stringify(created.body)).toBe(201);
      // Nobody declared it: not held.
      expect(created.body.spec.schedulingGates ?? []).toEqual([]);
      return eventually(
        `pod ${name} running`,
        async () => {
          const got = await plane.request("GET", `/api/v1/namespaces/ml/pods/${name}`);
          return got.body.status?.phase === "Running" ? got.body : undefined;
        },
        180_000,
      );
    };

    const before = upstreamBlobGets().length;
    const hitsBefore = await frontBlobHits();
    const first = await runPod("undeclared-1");
    expect(first.status.containerStatuses[0].imageID).toContain(undeclaredDigest);
    // The kubelet's pull went through the front, which read each blob upstream once.
    const firstReads = upstreamBlobGets().slice(before);
    expect([...firstReads].sort()).toEqual([...fresh].sort());

    // The node forgets the image; the next pull is served from the front's storage.
    expect((await run(["-n", "ml", "delete", "pod", "undeclared-1", "--wait=true"])).code).toBe(0);
    // The kubelet removes a deleted pod's dead container on its own schedule: at once on most
    // runs, at its next container GC (a minute) otherwise. Until then the container holds the
    // image's unpacked layer, and containerd's re-pull skips fetching a layer whose snapshot
    // exists. Wait for the container to go, so the node has truly forgotten the image.
    const ctr = (...args: string[]) =>
      execFileAsync("ctr", ["--address", node.containerd.socketPath, "-n", "k8s.io", ...args]);
    await eventually(
      "the deleted pod's container removed from the node's containerd",
      async () => {
        const { stdout } = await ctr(
          "containers",
          "ls",
          "-q",
          'labels."io.kubernetes.pod.name"==undeclared-1',
        );
        return stdout.trim() === "" ? true : undefined;
      },
      150_000,
    );
    const runtime = new CriClient(node.containerd.socketPath);
    try {
      await runtime.removeImage(undeclaredRef);
      expect(await runtime.imageStatus(undeclaredRef)).toBeUndefined();
    } finally {
      runtime.close();
    }
    // The runtime's removal collects the image's content at once; checked, not assumed.
    const { stdout: content } = await ctr("content", "ls", "-q");
    expect(fresh.filter((digest) => content.includes(digest))).toEqual([]);
    const hitsAfterFirst = await frontBlobHits();
    const second = await runPod("undeclared-2");
    expect(second.status.containerStatuses[0].imageID).toContain(undeclaredDigest);
    // Nothing more from the upstream: the front served every blob from its storage.
    expect(upstreamBlobGets().slice(before)).toEqual(firstReads);
    expect(await frontBlobHits()).toBeGreaterThanOrEqual(hitsAfterFirst + fresh.length);
    expect(hitsAfterFirst).toBeGreaterThanOrEqual(hitsBefore);
  }, 600_000);

  it("helm uninstall runs the pre-delete hook: the node loses the hosts.toml files, warm labels and warming taint Stowage put there", async () => {
    const certsDir = node.containerd.certsDir;
    const { readdir } = await import("node:fs/promises");
    const nodePath = `/api/v1/nodes/${node.name}`;
    // What the release left on the node: the agent's hosts.toml files and the planner's warm label;
    // and a warming taint, as an autoscaler's node template adds it.
    expect((await readdir(certsDir)).length).toBeGreaterThan(0);
    const before = (await plane.request("GET", nodePath)).body;
    expect(Object.keys(before.metadata.labels)).toContain("warm.stowage.dev/ml.model");
    const tainted = await plane.request(
      "PATCH",
      nodePath,
      {
        spec: {
          taints: [...(before.spec.taints ?? []), { key: "stowage.dev/warming", effect: "NoSchedule" }],
        },
      },
      "application/merge-patch+json",
    );
    expect(tainted.status, JSON.stringify(tainted.body)).toBe(200);

    await helmOk(["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "4m"], {
      dir,
      kubeconfig: plane.kubeconfigPath,
      timeoutMs: 300_000,
    });

    expect(await readdir(certsDir)).toEqual([]);
    const after = (await plane.request("GET", nodePath)).body;
    expect(
      Object.keys(after.metadata.labels).filter((k: string) => k.startsWith("warm.stowage.dev/")),
    ).toEqual([]);
    expect((after.spec.taints ?? []).map((t: Json) => t.key)).not.toContain("stowage.dev/warming");
    // The agent said so before it went, and the hook's Job and RBAC are gone with the release.
    const nc = (await plane.request("GET", `/apis/stowage.dev/v1alpha1/nodecaches/${node.name}`)).body;
    expect(nc.status.conditions).toContainEqual(
      expect.objectContaining({ type: "MirrorConfigured", status: "False", reason: "Uninstalled" }),
    );
    const jobs = await plane.request("GET", `/apis/batch/v1/namespaces/${NAMESPACE}/jobs`);
    expect(jobs.body.items ?? []).toEqual([]);
  }, 600_000);
});

describe.runIf(whyNoDocker !== undefined)("the chart on a real kubelet (no Docker engine here)", () => {
  it("cannot build the images it runs", () => {
    throw new Error(
      `building the Stowage image needs a Docker engine it can start: ${whyNoDocker}; run scripts/setup.sh as root`,
    );
  }, 300_000);
});
