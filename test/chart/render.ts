/**
 * `helm template` of charts/stowage with the real helm (testkit/k8sTools.ts), and the few lookups
 * the chart tests make in what it renders.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseAllDocuments, stringify } from "yaml";
import { k8sBin } from "../../testkit/k8sTools.ts";
import { root, run } from "../support/run.ts";

export const chartDir = join(root, "charts/stowage");
/** The release every render uses: fullname "stowage", so job names match files/prometheus-rules.yaml. */
export const RELEASE = "stowage";
export const NAMESPACE = "stowage-system";

export type Values = Record<string, unknown>;

export interface RenderedObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; annotations?: Record<string, string> };
  // biome-ignore lint/suspicious/noExplicitAny: a rendered manifest of any kind; tests read the fields they check
  [field: string]: any;
}

export interface Render {
  code: number;
  stdout: string;
  stderr: string;
  objects: RenderedObject[];
}

// helm keeps its cache and config under HOME unless told otherwise: keep them out of the user's.
const helmHome = mkdtempSync(join(tmpdir(), "stowage-helm-"));
const helmEnv = {
  HELM_CACHE_HOME: join(helmHome, "cache"),
  HELM_CONFIG_HOME: join(helmHome, "config"),
  HELM_DATA_HOME: join(helmHome, "data"),
};

export interface RenderOptions {
  /** Values files, in order (e.g. charts/stowage/ci/*.yaml). */
  files?: string[];
  /** Values objects, after the files, in order. */
  values?: Values[];
  /** `--api-versions`, e.g. monitoring.coreos.com/v1. */
  apiVersions?: string[];
}

/** `helm template stowage charts/stowage -n stowage-system ...`; objects parsed when it succeeded. */
export async function helmTemplate(options: RenderOptions = {}): Promise<Render> {
  const dir = mkdtempSync(join(helmHome, "values-"));
  const args = ["template", RELEASE, chartDir, "--namespace", NAMESPACE];
  for (const file of options.files ?? []) args.push("-f", file);
  (options.values ?? []).forEach((values, i) => {
    const file = join(dir, `values-${i}.yaml`);
    writeFileSync(file, stringify(values));
    args.push("-f", file);
  });
  for (const api of options.apiVersions ?? []) args.push("--api-versions", api);
  const result = await run(k8sBin("helm"), args, helmEnv);
  const objects =
    result.code === 0
      ? parseAllDocuments(result.stdout)
          .map((doc) => doc.toJS() as RenderedObject | null)
          .filter((obj): obj is RenderedObject => obj !== null)
      : [];
  return { ...result, objects };
}

/** A render that must succeed: throws with helm's stderr otherwise. */
export async function render(options: RenderOptions = {}): Promise<RenderedObject[]> {
  const result = await helmTemplate(options);
  if (result.code !== 0) throw new Error(`helm template failed (${result.code}): ${result.stderr}`);
  return result.objects;
}

export function findObject(
  objects: RenderedObject[],
  kind: string,
  name: string,
): RenderedObject | undefined {
  return objects.find((o) => o.kind === kind && o.metadata.name === name);
}

export function getObject(objects: RenderedObject[], kind: string, name: string): RenderedObject {
  const found = findObject(objects, kind, name);
  if (!found)
    throw new Error(
      `no ${kind} ${name} rendered; got ${objects.map((o) => `${o.kind}/${o.metadata.name}`).join(", ")}`,
    );
  return found;
}

export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    fieldRef?: { fieldPath: string };
    secretKeyRef?: { name: string; key: string; optional?: boolean };
    configMapKeyRef?: { name: string; key: string };
  };
}

export interface Container {
  name: string;
  args?: string[];
  env?: EnvVar[];
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
}

export interface Volume {
  name: string;
  secret?: { secretName: string; items?: { key: string; path: string }[]; optional?: boolean };
  configMap?: { name: string };
  hostPath?: { path: string };
  emptyDir?: object;
}

/** A workload's pod template: its containers and volumes. */
export function podOf(workload: RenderedObject): { containers: Container[]; volumes: Volume[] } {
  const spec = workload.spec.template.spec;
  return { containers: spec.containers ?? [], volumes: spec.volumes ?? [] };
}

export function containerOf(workload: RenderedObject, name: string): Container {
  const found = podOf(workload).containers.find((c) => c.name === name);
  if (!found) throw new Error(`${workload.kind} ${workload.metadata.name} has no container ${name}`);
  return found;
}

/** `--name=value` arguments as a map (repeatable flags keep every value). */
export function flagValues(args: string[]): Map<string, string[]> {
  const flags = new Map<string, string[]>();
  for (const arg of args) {
    const match = /^--([a-z0-9-]+)=(.*)$/.exec(arg);
    if (match) flags.set(match[1], [...(flags.get(match[1]) ?? []), match[2]]);
  }
  return flags;
}

/**
 * The volume behind `path` in `container`: the mount at that path or the deepest one holding it,
 * and the file's name inside that mount ("" for the mount itself).
 */
export function volumeFor(
  workload: RenderedObject,
  container: Container,
  path: string,
): { volume: Volume; mountPath: string; file: string } | undefined {
  const trim = (p: string) => p.replace(/\/+$/, "");
  const mount = (container.volumeMounts ?? [])
    .filter((m) => trim(path) === trim(m.mountPath) || path.startsWith(`${trim(m.mountPath)}/`))
    .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
  if (!mount) return undefined;
  const volume = podOf(workload).volumes.find((v) => v.name === mount.name);
  if (!volume) return undefined;
  return { volume, mountPath: mount.mountPath, file: trim(path).slice(trim(mount.mountPath).length + 1) };
}
