/**
 * `npm run demo`: the whole of Stowage on one machine (testkit/sandbox.ts): the API test double,
 * an upstream registry with a synthetic model image (CUDA amd64 + CPU arm64), the cache registry,
 * the controller, and containerd "nodes" with their agents when containerd can run here. It
 * applies examples/modelimage-llama.yaml (a temp copy pointing at the sandbox upstream) with the
 * real kubectl, shows the ModelImage going from Syncing to Ready and each node warming, and ends
 * with a summary and the commands to explore further.
 *
 *   --ci             headless: exit 0 only when the ModelImage is Ready and every sandbox node
 *                    holds its variant (mirror-only without containerd: the cache must hold the
 *                    image, and the output says loudly that no node was pre-warmed)
 *   --require-nodes  fail instead of falling back to mirror-only when nodes cannot run here
 *   --no-nodes       mirror-only on purpose
 *   --keep           leave the sandbox running after the summary, until Ctrl-C
 *   --api real       run on the real kube-apiserver, controller-manager and scheduler built by
 *                    scripts/build-k8s.sh instead of the API test double (the default)
 */
import { spawn } from "node:child_process";
import { constants } from "node:fs";
import { access, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { parseAllDocuments, stringify } from "yaml";
import { shortDigest } from "../src/api/modelImage.ts";
import { formatBytes } from "../src/api/nodeCache.ts";
import { cacheRepository, parseReference } from "../src/oci/reference.ts";
import { RegistryClient } from "../src/oci/registry.ts";
import { gatherSnapshot } from "../src/status/gather.ts";
import { buildReport, type ModelImageReport, type NodeCell } from "../src/status/model.ts";
import { builtK8sBinDir } from "./k8sTools.ts";
import { type Sandbox, startSandbox } from "./sandbox.ts";

const EXAMPLE = fileURLToPath(new URL("../examples/modelimage-llama.yaml", import.meta.url));
const NAMESPACE = "ml";
const NAME = "llama3-serve";
/** The whole run must fit the CI budget of 3 minutes, sandbox start included. */
const WATCH_TIMEOUT_MS = 150_000;
/** Without a NodeCache this long after Synced, the controller runs no pre-warm planner. */
const PLANNER_GRACE_MS = 30_000;

const tty = process.stdout.isTTY === true && !process.env.NO_COLOR;

function say(line = ""): void {
  process.stdout.write(`${line}\n`);
}

/**
 * The kubectl the demo applies with: the one scripts/setup.sh built at the tested release when it
 * is there (the demo never starts a Go build), else the first on PATH.
 */
async function findKubectl(): Promise<string | undefined> {
  const built = builtK8sBinDir();
  const candidates = [
    ...(built ? [join(built, "kubectl")] : []),
    ...(process.env.PATH ?? "")
      .split(":")
      .filter(Boolean)
      .map((dir) => join(dir, "kubectl")),
  ];
  for (const candidate of candidates) {
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // try the next
    }
  }
  return undefined;
}

function run(command: string, args: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (c) => {
      output += c;
    });
    child.stderr.on("data", (c) => {
      output += c;
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, output }));
  });
}

/** The example, pointed at the sandbox upstream: same variants and selectors, no pull secret. */
async function exampleFor(sandbox: Sandbox): Promise<string> {
  const docs = parseAllDocuments(await readFile(EXAMPLE, "utf8")).map((d) => d.toJS());
  for (const doc of docs) {
    if (doc?.kind !== "ModelImage") continue;
    for (const variant of doc.spec.variants) {
      const image = sandbox.images.find((i) => i.variant === variant.name);
      if (!image) throw new Error(`the sandbox has no image for variant ${variant.name} of ${EXAMPLE}`);
      variant.image = image.reference;
    }
    // The sandbox upstream is anonymous; the example's NGC secret does not exist here.
    delete doc.spec.pullSecrets;
    doc.spec.sync.interval = "30s";
  }
  const file = join(sandbox.dir, "modelimage-llama.yaml");
  await writeFile(file, docs.map((d) => stringify(d)).join("---\n"));
  return file;
}

interface Progress {
  report?: ModelImageReport;
  syncedAt?: number;
  readyAt?: number;
  nodeCachesSeen: boolean;
}

function cellFor(report: ModelImageReport | undefined, node: string): NodeCell | undefined {
  return report?.cells.find((c) => c.node === node);
}

function frame(sandbox: Sandbox, progress: Progress, started: number): string[] {
  const mi = progress.report;
  const seconds = ((Date.now() - started) / 1000).toFixed(0).padStart(3);
  const lines: string[] = [];
  if (!mi) return [`[${seconds}s] ${NAMESPACE}/${NAME}: not created yet`];
  const synced = mi.synced ? `${mi.synced.status === "True" ? "Synced" : mi.synced.reason}` : "Pending";
  const ready = mi.ready.status === "True" ? "Ready" : `not Ready (${mi.ready.reason})`;
  lines.push(`[${seconds}s] ${NAMESPACE}/${NAME}: ${synced}, ${ready}, nodes ${mi.nodes ?? "-"}`);
  for (const node of sandbox.nodes) {
    const cell = cellFor(mi, node.name);
    let state = "waiting for the planner";
    if (cell) {
      state =
        cell.state === "pulling" && cell.percent !== undefined
          ? `pulling ${cell.percent}%`
          : `${cell.state}${cell.reason ? ` (${cell.reason})` : ""}`;
    }
    const variant = cell?.variant ?? node.expectedVariant ?? "-";
    lines.push(`        ${node.name.padEnd(15)} ${node.arch.padEnd(6)} ${variant.padEnd(5)} ${state}`);
  }
  return lines;
}

/** Live view: a compact redraw on a TTY, one line per change otherwise. */
function createView() {
  let drawn = 0;
  const last = new Map<string, string>();
  return (lines: string[]) => {
    if (tty) {
      if (drawn > 0) process.stdout.write(`\u001b[${drawn}A`);
      for (const line of lines) process.stdout.write(`\u001b[2K${line}\n`);
      drawn = lines.length;
      return;
    }
    // One line per change, each with the elapsed time, so a log reads in order.
    const stamp = /^\[\s*\d+s\]/.exec(lines[0])?.[0] ?? "";
    lines.forEach((line, i) => {
      const body = line.replace(/^\[\s*\d+s\] /, "").trim();
      if (last.get(String(i)) === body) return;
      last.set(String(i), body);
      say(`${stamp} ${body}`);
    });
  };
}

function nodesDone(sandbox: Sandbox, report: ModelImageReport | undefined): boolean {
  return sandbox.nodes.every((node) => {
    const cell = cellFor(report, node.name);
    if (node.expectedVariant) return cell?.state === "present" && cell.variant === node.expectedVariant;
    return cell?.state === "skipped";
  });
}

async function watch(sandbox: Sandbox, progress: Progress, started: number): Promise<void> {
  const view = createView();
  const deadline = Date.now() + WATCH_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const snapshot = await gatherSnapshot(sandbox.client, { namespace: NAMESPACE });
    progress.report = buildReport(snapshot).modelImages.find((m) => m.name === NAME);
    progress.nodeCachesSeen ||= snapshot.nodeCaches.length > 0;
    if (progress.report?.synced?.status === "True") progress.syncedAt ??= Date.now();
    if (progress.report?.ready.status === "True") progress.readyAt ??= Date.now();
    view(frame(sandbox, progress, started));
    const ready = progress.readyAt !== undefined;
    if (ready && nodesDone(sandbox, progress.report)) return;
    if (
      sandbox.nodes.length > 0 &&
      !progress.nodeCachesSeen &&
      progress.syncedAt !== undefined &&
      Date.now() - progress.syncedAt > PLANNER_GRACE_MS
    ) {
      return; // the controller runs no pre-warm planner: nothing will reach the nodes
    }
    if (ready && sandbox.nodes.length === 0) return;
    await new Promise((resolve) => setTimeout(resolve, tty ? 300 : 1000));
  }
}

async function transferredBytes(sandbox: Sandbox): Promise<number | undefined> {
  try {
    const { body } = await sandbox.controller.health("/metrics");
    const line = body.split("\n").find((l) => l.startsWith('stowage_sync_bytes_total{kind="transferred"}'));
    return line ? Number(line.split(" ").pop()) : undefined;
  } catch {
    return undefined;
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      ci: { type: "boolean", default: false },
      keep: { type: "boolean", default: false },
      "no-nodes": { type: "boolean", default: false },
      "require-nodes": { type: "boolean", default: false },
      api: { type: "string", default: "double" },
    },
  });
  if (values["no-nodes"] && values["require-nodes"]) {
    process.stderr.write("demo: --no-nodes and --require-nodes exclude each other\n");
    return 2;
  }
  if (values.api !== "double" && values.api !== "real") {
    process.stderr.write(
      `demo: --api must be "double" (the API test double) or "real" (kube-apiserver built by scripts/build-k8s.sh), not "${values.api}"\n`,
    );
    return 2;
  }
  try {
    await access("/usr/bin/docker-registry");
  } catch {
    process.stderr.write("demo: /usr/bin/docker-registry is missing; run `bash scripts/setup.sh` first\n");
    return 1;
  }
  const kubectlBinary = await findKubectl();
  if (!kubectlBinary) {
    process.stderr.write(
      "demo: no kubectl (neither built by scripts/build-k8s.sh nor on PATH); run `bash scripts/setup.sh` first\n",
    );
    return 1;
  }

  say("Stowage sandbox: API server, upstream and cache registries, controller, nodes");
  const starting = startSandbox({
    containerd: values["no-nodes"] ? false : values["require-nodes"] ? true : "auto",
    apiServer: values.api,
    say: (line) => say(`  ${line}`),
  });
  let stopping: Promise<void> | undefined;
  // Stops the sandbox even when Ctrl-C comes while it is still starting (then once it is up).
  const stopAll = () => {
    stopping ??= starting.then(
      (started) => started.stop(),
      () => {},
    );
    return stopping;
  };
  process.once("SIGINT", () => {
    say("\nstopping the sandbox and removing its temporary state…");
    void stopAll().then(() => process.exit(130));
  });

  let sandbox: Sandbox;
  try {
    sandbox = await starting;
    if (stopping) return 130;
  } catch (err) {
    process.stderr.write(`demo: ${(err as Error).message}\n`);
    return 1;
  }
  try {
    const kubectl = ["--kubeconfig", sandbox.kubeconfigPath];
    const manifest = await exampleFor(sandbox);
    say(
      `\nkubectl apply -f examples/modelimage-llama.yaml (copy: ${manifest}, images on ${sandbox.upstream.host})`,
    );
    const applied = await run(kubectlBinary, [...kubectl, "apply", "-f", manifest]);
    for (const line of applied.output.trimEnd().split("\n")) say(`  ${line}`);
    if (applied.code !== 0) return 1;

    say("");
    const started = Date.now();
    const progress: Progress = { nodeCachesSeen: false };
    await watch(sandbox, progress, started);
    const report = progress.report;

    // The cache must hold every variant at the digest status reports (the upstream index filtered
    // to the platforms its nodes need, so a new digest unless every platform is kept).
    const registry = new RegistryClient({ insecureHosts: [sandbox.cache.host] });
    const held: { variant: string; platforms: string[]; upstream?: string; cache?: string; ok: boolean }[] =
      [];
    for (const variant of report?.variants ?? []) {
      const repo = {
        registry: sandbox.cache.host,
        repository: cacheRepository(parseReference(variant.image)),
      };
      const found = variant.cacheDigest ? await registry.headManifest(repo, variant.cacheDigest) : undefined;
      held.push({
        variant: variant.name,
        platforms: variant.platforms,
        upstream: variant.sourceDigest,
        cache: variant.cacheDigest,
        ok: found?.digest === variant.cacheDigest,
      });
    }
    await registry.close();
    const cacheOk = held.length > 0 && held.every((h) => h.ok);
    const ready = report?.ready.status === "True";
    const nodesOk = sandbox.nodes.length === 0 || nodesDone(sandbox, report);
    const plannerMissing = sandbox.nodes.length > 0 && !progress.nodeCachesSeen;

    say("\nsummary");
    const bytes = await transferredBytes(sandbox);
    say(
      `  bytes mirrored   ${bytes !== undefined ? formatBytes(bytes) : "(no metric)"} into ${sandbox.cache.url}`,
    );
    for (const h of held) {
      say(
        `  variant ${h.variant.padEnd(8)} upstream ${h.upstream ? shortDigest(h.upstream) : "-"} → cache ${h.cache ? shortDigest(h.cache) : "-"} ` +
          `(${h.platforms.join(", ") || "-"}) ${h.ok ? "held by the cache" : "MISSING from the cache"}`,
      );
    }
    say(
      `  time to Synced   ${progress.syncedAt ? `${((progress.syncedAt - started) / 1000).toFixed(1)} s` : "(not synced)"}`,
    );
    say(
      `  time to Ready    ${progress.readyAt ? `${((progress.readyAt - started) / 1000).toFixed(1)} s` : `(not Ready: ${report?.ready.reason ?? "no status"} ${report?.ready.message ?? ""})`}`,
    );
    if (sandbox.nodes.length === 0) {
      say(`  nodes            NONE: ${sandbox.runtime.why} — MIRROR-ONLY run, nothing was pre-warmed`);
    } else {
      say("  where            (node, arch: variant, state)");
      for (const node of sandbox.nodes) {
        const cell = cellFor(report, node.name);
        const what = cell
          ? `${cell.variant}: ${cell.state}${cell.reason ? ` (${cell.reason}${cell.message ? `: ${cell.message}` : ""})` : ""}`
          : "nothing planned";
        say(`    ${node.name.padEnd(15)} ${node.arch.padEnd(6)} ${what}`);
      }
      if (plannerMissing) {
        say(
          "  NOTE: no NodeCache was ever written: this controller build does not run the pre-warm planner,",
        );
        say("        so the nodes stay cold (the planner is src/controller/prewarm; see README).");
      }
    }
    const ok = cacheOk && ready && nodesOk;
    say(
      `  result           ${ok ? (sandbox.nodes.length > 0 ? "Ready, and every node holds its variant" : "Ready (MIRROR-ONLY, no nodes): the cache holds every variant; pre-warm was not shown") : "FAILED"}`,
    );
    if (sandbox.nodes.length === 0 && values["no-nodes"] === false)
      say("  for the full demo with nodes: run as root with containerd installed (bash scripts/setup.sh)");

    if (values.keep || !values.ci) {
      say(
        values.keep
          ? "\nexplore (the sandbox keeps running):"
          : "\nexplore: rerun with `npm run demo -- --keep` to keep the sandbox, then (paths change per run):",
      );
      say(`  kubectl --kubeconfig ${sandbox.kubeconfigPath} get mi -n ${NAMESPACE}`);
      say(`  kubectl --kubeconfig ${sandbox.kubeconfigPath} describe mi -n ${NAMESPACE} ${NAME}`);
      if (sandbox.nodes.length > 0) say(`  kubectl --kubeconfig ${sandbox.kubeconfigPath} get nodecaches`);
      say(`  npx stowage status --kubeconfig ${sandbox.kubeconfigPath}`);
      say(`  PATH=$PWD/bin:$PATH kubectl stowage status --kubeconfig ${sandbox.kubeconfigPath}`);
      say(`  curl -s http://127.0.0.1:${sandbox.controller.healthPort}/metrics | grep ^stowage_`);
      say(`  curl -s ${sandbox.cache.url}/v2/_catalog`);
      say(`  logs: ${sandbox.logsDir}`);
    }
    if (values.keep) {
      say("\nthe sandbox keeps running; Ctrl-C stops everything and removes its temp state");
      await new Promise(() => {});
    }
    return ok ? 0 : 1;
  } catch (err) {
    // After Ctrl-C the sandbox goes away under the watch loop: that is not an error to report.
    if (!stopping) process.stderr.write(`demo: ${(err as Error).message}\n`);
    return 1;
  } finally {
    if (!values.keep) await stopAll();
  }
}

process.exitCode = await main();
