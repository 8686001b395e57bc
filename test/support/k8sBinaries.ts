import { k8sBinDir } from "../../testkit/k8sTools.ts";

/**
 * Global setup of the real-k8s test project: builds the pinned Kubernetes binaries the first time
 * (scripts/build-k8s.sh prints its progress), so no test file waits on the build inside its timeout.
 */
export default function buildKubernetesBinaries(): void {
  const dir = k8sBinDir();
  process.stderr.write(`real-k8s: Kubernetes binaries in ${dir}\n`);
}
