/**
 * The CRDs in `crds/`, read from disk, for tests, the API test double and the local sandbox
 * (the Helm chart ships the same files).
 */
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import type { KubeObject } from "../kube/client.ts";
import { StowageError } from "../util/errors.ts";

export const CRDS_DIR = fileURLToPath(new URL("../../crds/", import.meta.url));

/**
 * A CRD by file name (`stowage.dev_modelimages`, `.yaml` optional) or by its own name
 * (`modelimages.stowage.dev`).
 */
export function loadCrd(name: string): KubeObject & { spec: Record<string, unknown> } {
  const base = name.replace(/\.ya?ml$/, "");
  const dotted = /^([^.]+)\.(.+)$/.exec(base);
  const candidates = [base, ...(dotted ? [`${dotted[2]}_${dotted[1]}`] : [])];
  for (const candidate of candidates) {
    const file = crdFiles().find((f) => f.replace(/\.ya?ml$/, "") === candidate);
    if (file) return parse(readFileSync(`${CRDS_DIR}${file}`, "utf8"));
  }
  throw new StowageError("NotFound", `no CRD "${name}" in ${CRDS_DIR} (have: ${crdFiles().join(", ")})`);
}

/** Every CRD in `crds/`, in file name order. */
export function loadAllCrds(): (KubeObject & { spec: Record<string, unknown> })[] {
  return crdFiles().map((file) => parse(readFileSync(`${CRDS_DIR}${file}`, "utf8")));
}

function crdFiles(): string[] {
  return readdirSync(CRDS_DIR)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort();
}
