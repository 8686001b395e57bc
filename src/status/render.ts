/**
 * The status report as text: one block per ModelImage (conditions, variants, node × variant
 * matrix), ANSI-coloured only when asked (a TTY without NO_COLOR), or as JSON for scripts.
 */
import {
  FANOUT_CACHE_SOURCE,
  type FanoutSourceBytes,
  formatBytes,
  type PeerFailure,
} from "../api/nodeCache.ts";
import {
  type ConditionSummary,
  type ModelImageReport,
  type NodeCell,
  type NodeReport,
  type StatusReport,
  shortDigest,
} from "./model.ts";

export interface RenderOptions {
  colour: boolean;
}

type Paint = (text: string) => string;
const ansi =
  (code: number): Paint =>
  (text) =>
    `\u001b[${code}m${text}\u001b[0m`;
const palette = { green: ansi(32), yellow: ansi(33), red: ansi(31), grey: ansi(90), bold: ansi(1) };
const plain: typeof palette = {
  green: (t) => t,
  yellow: (t) => t,
  red: (t) => t,
  grey: (t) => t,
  bold: (t) => t,
};

export function renderJson(report: StatusReport): string {
  return `${JSON.stringify(report, null, 2)}\n`;
}

export function renderText(report: StatusReport, options: RenderOptions): string {
  const paint = options.colour ? palette : plain;
  if (report.modelImages.length === 0) return "No ModelImages found.\n";
  const context: BlockContext = {
    paint,
    failures: new Map((report.nodes ?? []).map((n: NodeReport) => [n.node, n.peerFailures])),
    takenAt: Date.parse(report.generatedAt),
  };
  return `${report.modelImages.map((mi) => renderModelImage(mi, context)).join("\n")}`;
}

interface BlockContext {
  paint: typeof palette;
  /** Peer failures by the node that reported them. */
  failures: ReadonlyMap<string, readonly PeerFailure[]>;
  takenAt: number;
}

function renderModelImage(mi: ModelImageReport, context: BlockContext): string {
  const { paint } = context;
  const lines: string[] = [];
  const lag = mi.lag ? `lagging ${formatAge(mi.lag.seconds)} (since ${mi.lag.since})` : "in sync";
  lines.push(
    `${paint.bold(`${mi.namespace}/${mi.name}`)}  Ready=${conditionText(mi.ready, paint)}  ` +
      `Synced=${mi.synced ? conditionText(mi.synced, paint) : "-"}  ` +
      `Prewarmed=${mi.prewarmed ? conditionText(mi.prewarmed, paint) : "-"}  nodes ${mi.nodes ?? "-"}  ${mi.lag ? paint.yellow(lag) : lag}`,
  );
  for (const [label, condition] of [
    ["stalled", mi.stalled],
    ["ready", mi.ready.status !== "True" ? mi.ready : undefined],
    ["synced", mi.synced?.status === "False" ? mi.synced : undefined],
  ] as const) {
    if (condition?.message) lines.push(`  ${label}: ${condition.reason}: ${condition.message}`);
  }
  lines.push(
    ...table(
      ["  VARIANT", "IMAGE", "UPSTREAM", "CACHE", "PLATFORMS", "SIZE", "NODES r/d (pull, fail, skip)"],
      mi.variants.map((v) => [
        `  ${v.name}`,
        v.image,
        v.sourceDigest ? shortDigest(v.sourceDigest) : "-",
        v.cacheDigest ? shortDigest(v.cacheDigest) : "-",
        v.platforms.length > 0 ? v.platforms.join(",") : "-",
        v.sizeBytes !== undefined ? formatBytes(v.sizeBytes) : "-",
        v.nodes
          ? `${v.nodes.ready}/${v.nodes.desired} (${v.nodes.pulling}, ${v.nodes.failed}, ${v.nodes.skipped})`
          : "-",
      ]),
    ),
  );
  if (mi.cells.length === 0) {
    lines.push("  no node holds or pulls these images yet");
  } else {
    const variantNames = mi.variants.map((v) => v.name);
    const nodes = [...new Set(mi.cells.map((c) => c.node))];
    const cellAt = (node: string, variant: string) =>
      mi.cells.find((c) => c.node === node && c.variant === variant);
    const rows = nodes.map((node) => [
      `  ${node}`,
      ...variantNames.map((variant) => {
        const cell = cellAt(node, variant);
        return cell ? cellText(cell) : "-";
      }),
    ]);
    // Colour after padding, so ANSI codes do not break the alignment.
    const colours = nodes.map((node) => [
      undefined,
      ...variantNames.map((variant) => {
        const cell = cellAt(node, variant);
        return cell ? stateColour(cell, paint) : undefined;
      }),
    ]);
    lines.push(...table(["  NODE", ...variantNames.map((v) => v.toUpperCase())], rows, colours));
    lines.push(...fanoutLines(mi.cells, nodes, context));
  }
  return `${lines.join("\n")}\n`;
}

/**
 * Fan-out (issue 15), only where there is some: where the present images' bytes came from, and the
 * peers the block's nodes stopped reading from (the controller plans around them until they expire).
 */
function fanoutLines(cells: readonly NodeCell[], nodes: readonly string[], context: BlockContext): string[] {
  const lines: string[] = [];
  const withSources = cells.filter((c) => c.sources && c.sources.length > 0);
  if (withSources.length > 0) {
    lines.push(
      ...table(
        ["  NODE", "VARIANT", "BYTES BY SOURCE"],
        withSources.map((c) => [`  ${c.node}`, c.variant, sourcesText(c.sources ?? [])]),
      ),
    );
  }
  const failures = nodes.flatMap((node) => (context.failures.get(node) ?? []).map((f) => ({ node, f })));
  if (failures.length > 0) {
    lines.push(
      ...table(
        ["  NODE", "PEER FAILED", "REASON", "SINCE"],
        failures.map(({ node, f }) => [`  ${node}`, f.node, f.reason, sinceText(f.since, context.takenAt)]),
        failures.map(({ f }) => [
          undefined,
          undefined,
          f.reason === "Failed" ? context.paint.red : context.paint.yellow,
        ]),
      ),
    );
  }
  return lines;
}

/** `cache 1.0 GiB, gpu-2 3.0 GiB`: the cache first, then the peers as the agent listed them. */
export function sourcesText(sources: readonly FanoutSourceBytes[]): string {
  const ordered = [
    ...sources.filter((s) => s.source === FANOUT_CACHE_SOURCE),
    ...sources.filter((s) => s.source !== FANOUT_CACHE_SOURCE),
  ];
  return ordered.map((s) => `${s.source} ${formatBytes(s.bytes)}`).join(", ");
}

function sinceText(since: string, takenAt: number): string {
  const at = Date.parse(since);
  if (Number.isNaN(at) || Number.isNaN(takenAt)) return since;
  return `${since} (${formatAge(Math.max(0, Math.round((takenAt - at) / 1000)))} ago)`;
}

function cellText(cell: NodeCell): string {
  // An image the kubelet's garbage collection removed is pulled again: say so, or the operator
  // sees a node go from present back to pulling with no reason.
  const evicted = cell.reason === "Evicted" ? " (evicted)" : "";
  switch (cell.state) {
    case "present":
      return "present";
    case "pulling":
      return `${cell.percent !== undefined ? `pulling ${cell.percent}%` : "pulling"}${evicted}`;
    case "pending":
      return `pending${evicted}`;
    case "removing":
      return "removing";
    case "failed":
    case "skipped":
      return `${cell.state} ${cell.reason ?? ""}`.trim();
  }
}

function stateColour(cell: NodeCell, paint: typeof palette): Paint {
  if (cell.state === "present") return paint.green;
  if (cell.state === "failed") return paint.red;
  if (cell.state === "skipped") return paint.grey;
  return paint.yellow;
}

function conditionText(condition: ConditionSummary, paint: typeof palette): string {
  const text = `${condition.status}(${condition.reason})`;
  if (condition.status === "True") return paint.green(text);
  if (condition.status === "False") return paint.red(text);
  return paint.yellow(text);
}

function table(header: string[], rows: string[][], colours: (Paint | undefined)[][] = []): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[], paints: (Paint | undefined)[] = []) =>
    cells
      .map((c, i) => {
        const padded = i === cells.length - 1 ? c : c.padEnd(widths[i]);
        const paint = paints[i];
        return paint ? paint(c) + padded.slice(c.length) : padded;
      })
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map((row, i) => line(row, colours[i]))];
}

/** kubectl-style age: 45s, 12m, 3h5m, 2d4h. */
export function formatAge(seconds: number): string {
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours}h${minutes % 60 ? `${minutes % 60}m` : ""}`;
  const days = Math.floor(hours / 24);
  return `${days}d${hours % 24 ? `${hours % 24}h` : ""}`;
}
