/**
 * Helpers for test/e2e/prewarm.test.ts: the built kubectl against the sandbox, polling, and CRI
 * look-ups on a node's containerd. Nodes themselves start through testkit/agentNode.ts.
 */
import { CriClient } from "../../src/agent/cri.ts";
import { type KubectlRun, kubectl as runKubectl } from "../../testkit/kubectl.ts";
import { eventually } from "../support/eventually.ts";

export type { KubectlRun };

/** The built kubectl against the sandbox's API, HOME and discovery cache in `home`. */
export function kubectl(kubeconfig: string, home: string, args: string[]): Promise<KubectlRun> {
  return runKubectl(args, { kubeconfig, dir: home, timeoutMs: 60_000 });
}

/** Polls `probe` until it returns a value (not undefined/false); containerd pulls get 90 s by default. */
export function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 90_000,
  intervalMs = 250,
): Promise<T> {
  return eventually(what, probe, timeoutMs, intervalMs);
}

/** Whether containerd at `socket` holds `ref` (CRI ImageStatus). */
export async function criHas(socket: string, ref: string): Promise<boolean> {
  const cri = new CriClient(socket);
  try {
    return (await cri.imageStatus(ref)) !== undefined;
  } finally {
    cri.close();
  }
}

/** Every repo digest containerd at `socket` holds (CRI ListImages). */
export async function criRepoDigests(socket: string): Promise<string[]> {
  const cri = new CriClient(socket);
  try {
    return (await cri.listImages()).flatMap((i) => i.repoDigests);
  } finally {
    cri.close();
  }
}
