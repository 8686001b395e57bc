/**
 * `stowage status`: what Stowage is doing in a cluster, per ModelImage, for people (a table,
 * coloured on a TTY) and scripts (`-o json`). Also runs as a kubectl plugin (`kubectl stowage
 * status`, via bin/kubectl-stowage). Exit codes: 0 printed, 1 could not read the cluster, 2 bad usage.
 */

import { parseArgs } from "node:util";
import { KubeClient } from "../kube/client.ts";
import { asStowageError } from "../util/errors.ts";
import { stowageVersion } from "../util/version.ts";
import { gatherSnapshot } from "./gather.ts";
import { buildReport } from "./model.ts";
import { renderJson, renderText } from "./render.ts";

export const statusHelp = `Usage: stowage status [flags]
       kubectl stowage status [flags]

Show every ModelImage: its variants, digests, sync state and lag, and which nodes hold,
pull, failed or skipped each variant.

Flags:
  --kubeconfig FILE      kubeconfig (default: KUBECONFIG, in-cluster, ~/.kube/config)
  --context NAME         kubeconfig context to use
  -n, --namespace NS     only this namespace
  -A, --all-namespaces   every namespace (the default)
  -o, --output FORMAT    text (default) or json (a stable shape, see README "stowage status")
  --color WHEN           auto (default: on a TTY unless NO_COLOR is set), always, never
  -h, --help             show this help
`;

export interface StatusIo {
  stdout: { write(text: string): unknown; isTTY?: boolean };
  stderr: { write(text: string): unknown };
  env: Record<string, string | undefined>;
}

export async function runStatus(
  args: string[],
  io: StatusIo = { stdout: process.stdout, stderr: process.stderr, env: process.env },
): Promise<number> {
  let values: {
    kubeconfig?: string;
    context?: string;
    namespace?: string;
    "all-namespaces"?: boolean;
    output?: string;
    color?: string;
    help?: boolean;
  };
  try {
    values = parseArgs({
      args,
      options: {
        kubeconfig: { type: "string" },
        context: { type: "string" },
        namespace: { type: "string", short: "n" },
        "all-namespaces": { type: "boolean", short: "A" },
        output: { type: "string", short: "o", default: "text" },
        color: { type: "string", default: "auto" },
        help: { type: "boolean", short: "h" },
      },
      allowPositionals: false,
    }).values;
  } catch (err) {
    io.stderr.write(`stowage status: ${(err as Error).message}\n`);
    return 2;
  }
  if (values.help) {
    io.stdout.write(statusHelp);
    return 0;
  }
  const output = values.output ?? "text";
  if (output !== "text" && output !== "json" && output !== "wide") {
    io.stderr.write(`stowage status: --output must be text or json, not "${output}"\n`);
    return 2;
  }
  const color = values.color ?? "auto";
  if (!["auto", "always", "never"].includes(color)) {
    io.stderr.write(`stowage status: --color must be auto, always or never, not "${color}"\n`);
    return 2;
  }
  const namespace = values["all-namespaces"] ? undefined : values.namespace;
  let client: KubeClient | undefined;
  try {
    client = KubeClient.load({
      path: values.kubeconfig,
      context: values.context,
      userAgent: `stowage-status/${stowageVersion()}`,
    });
    const report = buildReport(await gatherSnapshot(client, { namespace }));
    if (output === "json") io.stdout.write(renderJson(report));
    else {
      const colour = color === "always" || (color === "auto" && io.stdout.isTTY === true && !io.env.NO_COLOR);
      io.stdout.write(renderText(report, { colour }));
    }
    return 0;
  } catch (err) {
    io.stderr.write(`stowage status: ${asStowageError(err).message.replace(/\s*\n\s*/g, " ")}\n`);
    return 1;
  } finally {
    client?.close();
  }
}
