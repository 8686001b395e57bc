/**
 * A real node for tests: a real kubelet (v1.37, built from tools/k8s) with its own containerd,
 * registered with the real control plane (testkit/controlplane) as `system:node:<name>`, so
 * the scheduler places pods on it and the kubelet really runs them. Everything stays on
 * 127.0.0.1: pods must use `hostNetwork: true` (CNI is only the `loopback` plugin, which makes
 * CRI report NetworkReady without creating any interface), and images are imported into the
 * node's containerd beforehand (`importImage`, `BUSYBOX_IMAGE`); nothing is pulled from the
 * internet, the sandbox ("pause") image included. Several nodes can run at once: each has its
 * own root dir, ports and containerd, and the kubelet manages no cgroups of its own
 * (`cgroupsPerQOS: false`), so two kubelets never garbage-collect each other's.
 *
 * Host facts this leans on: the machine mounts cgroup v1, which kubelet ≥ 1.35 refuses unless
 * `failCgroupV1: false`; root lacks CAP_SYS_RESOURCE, so containerd clamps the sandbox's OOM
 * score (`restrictOomScoreAdj`); the kubelet refuses a loopback node IP, so the Node's address
 * is set for it (`setLoopbackAddress`); the kubelet sets kernel sysctls at start
 * (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops, ...), which `stop()` puts back.
 * Needs root. Test-only: production code never imports testkit/.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createWriteStream, readFileSync, type WriteStream, writeFileSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readFile, rm, rmdir, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { stringify } from "yaml";
import { type RunningContainerd, startContainerd } from "./containerd.ts";
import type { ControlPlane } from "./controlplane/index.ts";
import { k8sBin } from "./k8sTools.ts";
import { unmountUnder } from "./mounts.ts";
import { freePort } from "./ports.ts";

const run = promisify(execFile);

/** Debian's containernetworking-plugins (scripts/setup.sh installs it). */
const CNI_BIN_DIR = "/usr/lib/cni";
/** Debian's busybox-static: one static binary, so a FROM-scratch image of it runs. */
const BUSYBOX = "/bin/busybox";

/** The image every kubelet node has: busybox (`sh`, `echo`, `sleep`, ...) in `/bin`. */
export const BUSYBOX_IMAGE = "stowage.test/busybox:1";
/** The pod sandbox image: the same busybox layer, sleeping for ever. */
export const PAUSE_IMAGE = "stowage.test/pause:1";

export interface KubeletNodeOptions {
  /** labels the kubelet registers the Node with (`--node-labels`), e.g. `nvidia.com/gpu.present: "true"` */
  labels?: Record<string, string>;
  /** milliseconds to wait for the Node to be Ready (default 90 s) */
  readyTimeoutMs?: number;
  /**
   * taints the kubelet registers the Node with (`--register-with-taints`), as a node pool's
   * template sets them, e.g. `{ key: "stowage.dev/warming", value: "true", effect: "NoSchedule" }`
   */
  taints?: { key: string; value?: string; effect: "NoSchedule" | "PreferNoSchedule" | "NoExecute" }[];
}

export interface KubeletNode {
  name: string;
  containerd: RunningContainerd;
  /** the kubelet's temp dir: root dir, config, kubeconfig, log */
  dir: string;
  /** the kubelet API port on 127.0.0.1 (logs, exec) */
  port: number;
  /** the kubelet's log so far */
  log(): Promise<string>;
  /** the ids of the containers CRI knows on this node (namespace k8s.io), sandboxes included */
  containerIds(): Promise<string[]>;
  /** the container ids whose task (process) is running on this node */
  runningTaskIds(): Promise<string[]>;
  /** imports an OCI image archive into the node's containerd for CRI */
  importImage(archivePath: string): Promise<void>;
  /** stops the kubelet, removes every container, unmounts and deletes its dirs and containerd */
  stop(): Promise<void>;
}

// Kubelets still running when the test process exits are killed, not left running pods.
const running = new Set<ChildProcess>();
process.once("exit", () => {
  if (running.size === 0) return;
  for (const child of running) child.kill("SIGKILL");
  for (const [name, value] of tunablesBeforeKubelet ?? []) {
    try {
      writeFileSync(`/proc/sys/${name}`, value);
    } catch {
      // best effort on the way out
    }
  }
});

/** Sysctls the kubelet overwrites at start (container_manager_linux.go setupKernelTunables). */
const KERNEL_TUNABLES = [
  "vm/overcommit_memory",
  "vm/panic_on_oom",
  "kernel/panic",
  "kernel/panic_on_oops",
  "kernel/keys/root_maxkeys",
  "kernel/keys/root_maxbytes",
];
let tunablesBeforeKubelet: Map<string, string> | undefined;

function readTunables(): Map<string, string> {
  const values = new Map<string, string>();
  for (const name of KERNEL_TUNABLES) {
    try {
      values.set(name, readFileSync(`/proc/sys/${name}`, "utf8").trim());
    } catch {
      // absent in this kernel: the kubelet fails to set it too
    }
  }
  return values;
}

async function restoreTunables(): Promise<void> {
  if (!tunablesBeforeKubelet || running.size > 0) return;
  for (const [name, value] of tunablesBeforeKubelet) {
    await writeFile(`/proc/sys/${name}`, value).catch(() => {});
  }
}

/**
 * Starts containerd and a kubelet named `name` against `plane`, waits until its Node is Ready,
 * with the busybox and pause images imported. The apiserver reaches the kubelet (logs, exec) at
 * the Node's InternalIP only if started with `--kubelet-preferred-address-types=InternalIP`:
 * the Hostname address is the node name, which does not resolve.
 */
export async function startKubeletNode(
  plane: ControlPlane,
  name: string,
  options: KubeletNodeOptions = {},
): Promise<KubeletNode> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startKubeletNodeOnce(plane, name, options);
    } catch (err) {
      // Every kubelet binds /var/lib/kubelet/device-plugins/kubelet.sock whatever its root dir (a
      // constant in the kubelet): two starting at once on this machine, in this process or another
      // test file's, race for it and the loser exits. The winner keeps working; start again.
      if (attempt >= 4 || !DEVICE_PLUGIN_RACE.test(String(err))) throw err;
      await new Promise((resolve) => setTimeout(resolve, 200 + Math.random() * 800));
    }
  }
}

const DEVICE_PLUGIN_RACE = /device-plugins\/kubelet\.sock: bind: address already in use/;

async function startKubeletNodeOnce(
  plane: ControlPlane,
  name: string,
  options: KubeletNodeOptions,
): Promise<KubeletNode> {
  if (process.getuid?.() !== 0) throw new Error("a kubelet node needs root (mounts, containers)");
  tunablesBeforeKubelet ??= readTunables();
  const dir = await mkdtemp(join(tmpdir(), "kubelet-"));
  const rootDir = join(dir, "root");
  await mkdir(rootDir);
  const containerd = await startContainerd({
    cgroups: true,
    restrictOomScoreAdj: true,
    sandboxImage: PAUSE_IMAGE,
    cni: {
      binDir: CNI_BIN_DIR,
      // Only `loopback`: go-cni counts a loaded network and CRI says NetworkReady; hostNetwork
      // pods never call CNI, so no interface or address is ever created.
      conflists: {
        "10-loopback.conflist": {
          cniVersion: "0.4.0",
          name: "stowage-loopback",
          plugins: [{ type: "loopback" }],
        },
      },
    },
  });
  let child: ChildProcess | undefined;
  let logStream: WriteStream | undefined;
  const logPath = join(dir, "kubelet.log");
  const ctr = (args: string[]) =>
    run("ctr", ["--address", containerd.socketPath, "--namespace", "k8s.io", ...args], {
      maxBuffer: 16 * 1024 * 1024,
      timeout: 60_000,
    });

  const node: KubeletNode = {
    name,
    containerd,
    dir,
    port: 0,
    log: () => readFile(logPath, "utf8").catch(() => ""),
    containerIds: async () =>
      (await ctr(["containers", "list", "--quiet"])).stdout.split("\n").filter(Boolean),
    runningTaskIds: async () =>
      (await ctr(["tasks", "list"])).stdout
        .split("\n")
        .slice(1)
        .map((line) => line.trim().split(/\s+/))
        .filter((fields) => fields[2] === "RUNNING")
        .map((fields) => fields[0] ?? ""),
    importImage: async (archivePath) => {
      await ctr(["images", "import", "--snapshotter", containerd.snapshotter, archivePath]);
    },
    stop: async () => {
      const proc = child;
      child = undefined;
      if (proc && proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
        proc.kill("SIGTERM");
        const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
      logStream?.end();
      // The kubelet leaves its pods running when it stops, as on a real node; kill their tasks
      // and delete the containers so no process outlives the test.
      const ids = await node.containerIds().catch(() => []);
      for (const id of ids) {
        await ctr(["tasks", "kill", "--signal", "SIGKILL", id]).catch(() => {});
      }
      for (const id of ids) {
        for (let attempt = 0; attempt < 20; attempt++) {
          const deleted = await ctr(["tasks", "delete", id]).then(
            () => true,
            (err: { stderr?: string }) => /not found/.test(err.stderr ?? ""),
          );
          if (deleted) break;
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        await ctr(["containers", "delete", id]).catch(() => {});
      }
      await containerd.dispose();
      await removeEmptyCgroupParents();
      await unmountUnder(dir);
      await rm(dir, { recursive: true, force: true });
      await restoreTunables();
    },
  };

  try {
    await importBusyboxImages(node, dir);
    const [port, healthzPort] = await Promise.all([freePort(), freePort()]);
    node.port = port;
    const identity = await plane.kubeconfigForUser(`system:node:${name}`, ["system:nodes"]);
    const kubeconfigPath = join(dir, "kubelet.kubeconfig");
    await writeFile(kubeconfigPath, identity.kubeconfig);
    const resolvConf = join(dir, "resolv.conf");
    await writeFile(resolvConf, "nameserver 127.0.0.1\n");
    const configPath = join(dir, "kubelet-config.yaml");
    await writeFile(
      configPath,
      stringify(kubeletConfiguration({ port, healthzPort, resolvConf, dir, containerd })),
    );

    const labels = Object.entries(options.labels ?? {})
      .map(([key, value]) => `${key}=${value}`)
      .join(",");
    const taints = (options.taints ?? [])
      .map((t) => `${t.key}${t.value === undefined ? "" : `=${t.value}`}:${t.effect}`)
      .join(",");
    logStream = createWriteStream(logPath);
    const proc = spawn(
      k8sBin("kubelet"),
      [
        `--config=${configPath}`,
        `--kubeconfig=${kubeconfigPath}`,
        `--root-dir=${rootDir}`,
        `--cert-dir=${join(dir, "pki")}`,
        `--hostname-override=${name}`,
        "--node-ip=127.0.0.1",
        ...(labels ? [`--node-labels=${labels}`] : []),
        ...(taints ? [`--register-with-taints=${taints}`] : []),
        "--v=2",
      ],
      { stdio: ["ignore", "pipe", "pipe"], cwd: dir },
    );
    child = proc;
    running.add(proc);
    proc.once("exit", () => {
      running.delete(proc);
    });
    proc.stdout?.pipe(logStream, { end: false });
    proc.stderr?.pipe(logStream, { end: false });

    const deadline = Date.now() + (options.readyTimeoutMs ?? 90_000);
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null)
        throw new Error(`kubelet exited (${proc.exitCode ?? proc.signalCode})`);
      const got = await plane.request("GET", `/api/v1/nodes/${name}`).catch(() => undefined);
      if (got?.status === 200 && !got.body.status?.addresses?.length) await setLoopbackAddress(plane, name);
      const ready = (got?.body?.status?.conditions ?? []).some(
        (c: { type: string; status: string }) => c.type === "Ready" && c.status === "True",
      );
      if (ready) break;
      if (Date.now() > deadline)
        throw new Error(`Node ${name} was not Ready within ${options.readyTimeoutMs ?? 90_000} ms`);
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    return node;
  } catch (err) {
    const log = (await node.log()).split("\n").slice(-60).join("\n");
    await node.stop().catch(() => {});
    throw new Error(`kubelet node ${name} did not start: ${(err as Error).message}\n--- kubelet log\n${log}`);
  }
}

/**
 * The kubelet refuses a loopback node IP ("nodeIP can't be loopback address",
 * kubelet_node_status.go validateNodeIP) and then leaves the Node's addresses unset, so the admin
 * sets them once; the kubelet's later status patches leave fields it did not change alone.
 * hostNetwork pods get their IP from here, and the apiserver reaches the kubelet by it.
 */
async function setLoopbackAddress(plane: ControlPlane, name: string): Promise<void> {
  const patched = await plane.request(
    "PATCH",
    `/api/v1/nodes/${name}/status`,
    {
      status: {
        addresses: [
          { type: "InternalIP", address: "127.0.0.1" },
          { type: "Hostname", address: name },
        ],
      },
    },
    "application/merge-patch+json",
  );
  if (patched.status !== 200)
    throw new Error(`setting Node ${name}'s address: ${patched.status} ${JSON.stringify(patched.body)}`);
}

function kubeletConfiguration(params: {
  port: number;
  healthzPort: number;
  resolvConf: string;
  dir: string;
  containerd: RunningContainerd;
}): object {
  const noEviction = "0%"; // a 0% threshold is no threshold: a busy shared disk must not evict test pods
  return {
    apiVersion: "kubelet.config.k8s.io/v1beta1",
    kind: "KubeletConfiguration",
    // This host mounts cgroup v1 (hybrid); kubelet ≥ 1.35 refuses to start on it by default.
    failCgroupV1: false,
    cgroupDriver: "cgroupfs",
    // No kubepods hierarchy: two kubelets on one machine would share (and clean up) one.
    cgroupsPerQOS: false,
    enforceNodeAllocatable: [],
    containerRuntimeEndpoint: `unix://${params.containerd.socketPath}`,
    address: "127.0.0.1",
    port: params.port,
    readOnlyPort: 0,
    healthzBindAddress: "127.0.0.1",
    healthzPort: params.healthzPort,
    // The apiserver calls the kubelet without a client certificate (no --kubelet-client-*):
    // logs and exec work only anonymously. Loopback only, test only.
    authentication: { anonymous: { enabled: true }, webhook: { enabled: false } },
    authorization: { mode: "AlwaysAllow" },
    resolvConf: params.resolvConf,
    podLogsDir: join(params.dir, "pod-logs"),
    failSwapOn: false,
    evictionHard: {
      "memory.available": noEviction,
      "nodefs.available": noEviction,
      "nodefs.inodesFree": noEviction,
      "imagefs.available": noEviction,
      "imagefs.inodesFree": noEviction,
    },
    // Image garbage collection would delete the imported images when the disk is full enough.
    imageGCHighThresholdPercent: 100,
    imageGCLowThresholdPercent: 99,
    // Status reaches the apiserver quickly; tests wait on it.
    nodeStatusUpdateFrequency: "2s",
    syncFrequency: "5s",
    serializeImagePulls: false,
  };
}

/**
 * Builds a FROM-scratch OCI archive holding two images of one layer (busybox in /bin): the
 * busybox image and the pause image, and imports it into the node's containerd.
 */
async function importBusyboxImages(node: KubeletNode, dir: string): Promise<void> {
  const work = join(dir, "image");
  const rootfs = join(work, "rootfs");
  const layout = join(work, "layout");
  const blobs = join(layout, "blobs", "sha256");
  await mkdir(join(rootfs, "bin"), { recursive: true });
  await mkdir(blobs, { recursive: true });
  await copyFile(BUSYBOX, join(rootfs, "bin", "busybox"));
  for (const applet of ["sh", "echo", "sleep", "cat", "ls", "true"])
    await symlink("busybox", join(rootfs, "bin", applet));
  const layerPath = join(work, "layer.tar");
  await run("tar", ["--numeric-owner", "--owner=0", "--group=0", "-C", rootfs, "-cf", layerPath, "bin"]);

  const addBlob = async (bytes: Buffer) => {
    const hex = createHash("sha256").update(bytes).digest("hex");
    await writeFile(join(blobs, hex), bytes);
    return { digest: `sha256:${hex}`, size: bytes.length };
  };
  const layer = await addBlob(await readFile(layerPath));
  const image = async (ref: string, entrypoint: string[]) => {
    const config = await addBlob(
      Buffer.from(
        JSON.stringify({
          architecture: "amd64",
          os: "linux",
          config: { Entrypoint: entrypoint, Env: ["PATH=/bin"] },
          rootfs: { type: "layers", diff_ids: [layer.digest] },
        }),
      ),
    );
    const manifest = await addBlob(
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: "application/vnd.oci.image.manifest.v1+json",
          config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
          layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", ...layer }],
        }),
      ),
    );
    return {
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      ...manifest,
      annotations: { "io.containerd.image.name": ref },
    };
  };
  const manifests = [
    await image(BUSYBOX_IMAGE, ["/bin/sh"]),
    // PID 1 sleeps; CRI stops a sandbox with SIGKILL, so no signal handling is needed.
    await image(PAUSE_IMAGE, ["/bin/sleep", "2147483647"]),
  ];
  await writeFile(join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  await writeFile(join(layout, "index.json"), JSON.stringify({ schemaVersion: 2, manifests }));
  const archive = join(work, "images.tar");
  await run("tar", ["-C", layout, "-cf", archive, "oci-layout", "index.json", "blobs"]);
  await node.importImage(archive);
  await rm(work, { recursive: true, force: true });
}

/**
 * runc puts CRI's containers in `/k8s.io/<id>` of every cgroup v1 hierarchy and removes only
 * `<id>`; the parent goes once empty (rmdir refuses while another node's container is in it).
 */
async function removeEmptyCgroupParents(): Promise<void> {
  const hierarchies = readFileSync("/proc/self/mounts", "utf8")
    .split("\n")
    .map((line) => line.split(" "))
    .filter((fields) => fields[2] === "cgroup" || fields[2] === "cgroup2")
    .map((fields) => fields[1] ?? "");
  for (const hierarchy of hierarchies) await rmdir(join(hierarchy, "k8s.io")).catch(() => {});
}
