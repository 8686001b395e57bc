/**
 * The CRDs in `crds/`, read from disk, for tests, the API test double and the local sandbox
 * (the Helm chart ships the same files).
 */
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import { StowageError } from "../util/errors.ts";

/** An apiextensions.k8s.io/v1 CustomResourceDefinition as read from YAML (a type alias, so it fits any object shape). */
export type CustomResourceDefinition = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; [key: string]: unknown };
  spec: Record<string, unknown>;
};

export const CRDS_DIR = fileURLToPath(new URL("../../crds/", import.meta.url));

/**
 * A CRD by file name (`stowage.dev_modelimages`, `.yaml` optional) or by its own name
 * (`modelimages.stowage.dev`).
 */
export function loadCrd(name: string): CustomResourceDefinition {
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
export function loadAllCrds(): CustomResourceDefinition[] {
  return crdFiles().map((file) => parse(readFileSync(`${CRDS_DIR}${file}`, "utf8")));
}

function crdFiles(): string[] {
  return readdirSync(CRDS_DIR)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort();
}
