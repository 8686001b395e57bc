/**
 * `npm run sim:fanout [-- options]`: run the fan-out strategies on one scenario, print one table
 * and whether issue 15's goals are met, write the warm-nodes-over-time plot as SVG.
 * The entry point is main.ts; this module is imported by the tests.
 */
import { writeFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { StowageError } from "../../src/util/errors.ts";
import {
  defaultScenario,
  GB,
  Gbps,
  mlImageLayers,
  type RunResult,
  type Scenario,
  type Strategy,
  simulate,
} from "./sim.ts";
import { warmCurvesSvg } from "./svg.ts";

const MiB = 2 ** 20;

/** The rows the CLI can run. */
export const Modes = ["star", "random", "layers", "pieces", "wired"] as const;
export type Mode = (typeof Modes)[number];

export const USAGE = `usage: npm run sim:fanout -- [options]
  --nodes N              nodes pre-warming the image (default 1000; 10 to 10000 is the intended range)
  --image-gb G           image size in GB (default 20), split like an ML image into 16 layers
  --piece-mib M          planned mode moves pieces of M MiB (default 64; 0: whole layers only)
  --nic-gbps G           node NIC, each direction (default 25)
  --cache-nic-gbps G     cache registry NIC (default: the node NIC)
  --disk-gbs G           node disk write, GB/s (default 4)
  --zones Z              zones the nodes are spread over (default 3)
  --peer-slots K         planner: nodes each node feeds per layer/piece (default 3)
  --cache-slots C        planner: nodes the cache feeds per layer/piece, i.e. its copies (default 1)
  --fail-at F            fail the busiest node at F x the planned all-warm time, in the piece mode and in the
                         tree-per-blob mode (default 0.3; 0: no failure run)
  --modes LIST           comma-separated, of ${Modes.join(",")} (default all); "pieces" is the planner
                         given every piece as a digest, "wired" one tree per blob with pieces in order as
                         the controller and agents run it
  --join N@S             N more nodes join at S seconds (repeatable)
  --quantum-ms Q         time step: transfers within Q ms of their end complete together (default: the
                         larger of 5 ms and 0.1% of the elapsed time, fast but optimistic by about a
                         quantum per piece on a node's critical path; use 0.5 or less for 64 MiB pieces
                         and smaller, it runs many times longer)
  --svg PATH             where to write the plot (default fanout.svg)
  --seed S               seed of the random-peer strategy (default 1)`;

export const WIRED_LABEL = "planned tree per blob, pieces in order (first wiring)";

export interface Row {
  mode: Mode;
  label: string;
  result: RunResult;
}

export interface FailureOutcome {
  failedNode: string;
  atS: number;
  /** (node, piece) pairs planned from the failed node and not yet complete when it failed. */
  fedByFailed: number;
  replanned: number;
  outsideSubtree: number;
  result: RunResult;
  /** The same run without the failure. */
  baseline: RunResult;
}

export interface Goal {
  text: string;
  met: boolean;
  detail: string;
}

/** Issue 15's goals judged on one planned row. */
export interface Verdict {
  mode: Mode;
  label: string;
  /** What the row stands for, printed in the heading. */
  role: string;
  failure?: FailureOutcome;
  goals: Goal[];
}

export interface Comparison {
  scenario: Scenario;
  alone: RunResult;
  rows: Row[];
  /** One per planned row judged: the piece mode (what runs) and the tree-per-blob mode (the first wiring). */
  verdicts: Verdict[];
}

/** Run the selected strategies on the scenario, a failure run of each judged planned row when asked. */
export function compareStrategies(
  scenario: Scenario,
  failAtFraction: number,
  progress: (line: string) => void = () => {},
  modes: readonly Mode[] = Modes,
): Comparison {
  const alone = simulate({ ...scenario, nodes: 1, joins: [], failures: [], startJitterS: 0 }, "star");
  const rows: Row[] = [];
  const pieced = scenario.pieceBytes > 0;
  const plans: Record<Mode, { label: string; scenario: Scenario; strategy: Strategy }> = {
    star: { label: "star: every node from the cache (today)", scenario, strategy: "star" },
    random: { label: "random peer, whole layers (Spegel-like)", scenario, strategy: "random" },
    layers: {
      label: "planned tree, whole layers",
      scenario: { ...scenario, pieceBytes: 0 },
      strategy: "planned",
    },
    pieces: {
      label: `planned tree, ${(scenario.pieceBytes / MiB).toFixed(0)} MiB pieces`,
      scenario,
      strategy: "planned",
    },
    wired: { label: WIRED_LABEL, scenario, strategy: "wired" },
  };
  for (const mode of Modes) {
    if (!modes.includes(mode) || (mode === "pieces" && !pieced)) continue;
    const plan = plans[mode];
    progress(`running ${plan.label}`);
    rows.push({ mode, label: plan.label, result: simulate(plan.scenario, plan.strategy) });
  }
  // The goals are judged on the piece mode (what the controller and agents run) and on the
  // tree-per-blob mode (the first wiring, kept for comparison); on whole layers only when neither ran.
  const judged = rows.filter((row) => row.mode === "pieces" || row.mode === "wired");
  if (judged.length === 0) judged.push(...rows.filter((row) => row.mode === "layers"));
  const verdicts = judged.map((row) => judge(row, plans[row.mode], alone, failAtFraction, progress));
  return { scenario, alone, rows, verdicts };
}

const ROLES: Partial<Record<Mode, string>> = {
  pieces: "what the controller and agents run: a tree per piece, pieces fetched in any order into a spool",
  wired: "the first wiring: a tree per blob, each blob one stream in order",
  layers: "whole layers",
};

function judge(
  row: Row,
  plan: { scenario: Scenario; strategy: Strategy },
  alone: RunResult,
  failAtFraction: number,
  progress: (line: string) => void,
): Verdict {
  const planned = row.result;
  let failure: FailureOutcome | undefined;
  if (failAtFraction > 0 && Number.isFinite(planned.allWarmS)) {
    const atS = planned.allWarmS * failAtFraction;
    progress(`running ${row.label} with the busiest node failing at ${atS.toFixed(2)} s`);
    const result = simulate({ ...plan.scenario, failures: [{ node: "busiest", atS }] }, plan.strategy);
    const replan = result.failureReplans[0];
    failure = {
      failedNode: replan?.node ?? "none",
      atS,
      fedByFailed: replan?.fedByFailed ?? 0,
      replanned: replan?.replanned ?? 0,
      outsideSubtree: replan?.outsideSubtree ?? 0,
      result,
      baseline: planned,
    };
  }
  const ratio = planned.allWarmS / alone.allWarmS;
  const copies = planned.cacheEgressBytes / planned.imageBytes;
  const pairs =
    row.mode === "wired" ? "(node, blob)" : row.mode === "pieces" ? "(node, piece)" : "(node, layer)";
  const goals: Goal[] = [
    {
      text: "all nodes warm within 1.5x one node pulling alone",
      met: ratio <= 1.5,
      detail: `${planned.allWarmS.toFixed(2)} s vs ${alone.allWarmS.toFixed(2)} s alone = ${ratio.toFixed(2)}x`,
    },
    { text: "cache egress at most 3 image copies", met: copies <= 3, detail: `${copies.toFixed(2)} copies` },
  ];
  if (failure) {
    const survivorsWarm = Number.isFinite(failure.result.allWarmS);
    goals.push({
      text: "a node failure mid fan-out costs no more than one re-planned subtree",
      met: replanWasLocal(failure) && survivorsWarm,
      detail:
        `${failure.failedNode} failed at ${failure.atS.toFixed(2)} s feeding ${failure.fedByFailed} ${pairs} pairs; ` +
        `re-planned ${failure.replanned}, ${failure.outsideSubtree} outside its subtree; ` +
        `all surviving nodes warm at ${failure.result.allWarmS.toFixed(2)} s ` +
        `(+${(failure.result.allWarmS - failure.baseline.allWarmS).toFixed(2)} s), cache egress ` +
        `${(failure.result.cacheEgressBytes / failure.result.imageBytes).toFixed(2)} copies`,
    });
  }
  return { mode: row.mode, label: row.label, role: ROLES[row.mode] ?? "", failure, goals };
}

/** A failure that fed nobody proves nothing: it counts as not met. */
function replanWasLocal(failure: FailureOutcome): boolean {
  return failure.fedByFailed > 0 && failure.outsideSubtree === 0 && failure.replanned <= failure.fedByFailed;
}

function pad(text: string, width: number, right = false): string {
  return right ? text.padStart(width) : text.padEnd(width);
}

export function formatComparison(c: Comparison): string[] {
  const s = c.scenario;
  const lines = [
    `${s.nodes} nodes in ${s.zones} zones, ${(c.rows[0].result.imageBytes / GB).toFixed(1)} GB image in ${s.layerBytes.length} layers, ` +
      `node NIC ${(s.nodeDownBps / Gbps).toFixed(0)} Gb/s, cache NIC ${(s.cacheNicBps / Gbps).toFixed(0)} Gb/s, ` +
      `disk ${(s.nodeDiskWriteBps / GB).toFixed(1)} GB/s, k=${s.peerSlots}, cache slots=${s.cacheSlots}` +
      (s.pieceBytes > 0 ? `, pieces ${(s.pieceBytes / MiB).toFixed(0)} MiB` : ""),
    `one node alone: ${c.alone.allWarmS.toFixed(2)} s`,
    "",
  ];
  const header = ["strategy", "all warm", "x alone", "p50 node", "p99 node", "cache egress", "cross-zone"];
  const widths = [50, 11, 8, 10, 10, 13, 11];
  lines.push(header.map((h, i) => pad(h, widths[i], i > 0)).join(" "));
  for (const { label, result } of c.rows) {
    const cells = [
      label,
      `${result.allWarmS.toFixed(1)} s`,
      (result.allWarmS / c.alone.allWarmS).toFixed(2),
      `${result.p50S.toFixed(1)} s`,
      `${result.p99S.toFixed(1)} s`,
      `${(result.cacheEgressBytes / result.imageBytes).toFixed(2)} copies`,
      `${(result.crossZoneBytes / result.imageBytes).toFixed(1)} copies`,
    ];
    lines.push(cells.map((cell, i) => pad(cell, widths[i], i > 0)).join(" "));
  }
  for (const verdict of c.verdicts) {
    lines.push("", `goals (issue 15), ${verdict.label}${verdict.role ? `: ${verdict.role}` : ""}:`);
    for (const goal of verdict.goals)
      lines.push(`  ${goal.met ? "MET    " : "NOT MET"} ${goal.text}: ${goal.detail}`);
  }
  const wired = c.rows.find((row) => row.mode === "wired");
  if (wired) {
    lines.push(
      "",
      `tree per blob, the longest a blob stream waited for its next piece: ${wired.result.longestPieceWaitS.toFixed(2)} s ` +
        "(the agent's mirror gives up on a source after 30 s; the simulator does not model that limit)",
    );
  }
  return lines;
}

function number(value: string | undefined, name: string, fallback: number, min = 0): number {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed < min) {
    throw new StowageError(
      "InvalidArgument",
      `--${name} must be a number of at least ${min}, got "${value}"`,
    );
  }
  return parsed;
}

export function scenarioFromArgs(argv: string[]): {
  scenario: Scenario;
  failAt: number;
  svgPath: string;
  modes: Mode[];
} {
  const { values } = parseArgs({
    args: argv,
    options: {
      nodes: { type: "string" },
      "image-gb": { type: "string" },
      "piece-mib": { type: "string" },
      "nic-gbps": { type: "string" },
      "cache-nic-gbps": { type: "string" },
      "disk-gbs": { type: "string" },
      zones: { type: "string" },
      "peer-slots": { type: "string" },
      "cache-slots": { type: "string" },
      "fail-at": { type: "string" },
      join: { type: "string", multiple: true },
      svg: { type: "string" },
      seed: { type: "string" },
      modes: { type: "string" },
      "quantum-ms": { type: "string" },
    },
    strict: true,
  });
  const base = defaultScenario();
  const nodes = number(values.nodes, "nodes", base.nodes, 1);
  if (!Number.isInteger(nodes) || nodes > 100_000) {
    throw new StowageError(
      "InvalidArgument",
      `--nodes must be a whole number up to 100000, got "${values.nodes}"`,
    );
  }
  const nic = number(values["nic-gbps"], "nic-gbps", base.nodeDownBps / Gbps, 0.001) * Gbps;
  const joins = (values.join ?? []).map((text) => {
    const match = /^(\d+)@(\d+(?:\.\d+)?)$/.exec(text);
    if (!match)
      throw new StowageError(
        "InvalidArgument",
        `--join must look like COUNT@SECONDS (e.g. 50@3), got "${text}"`,
      );
    return { count: Number(match[1]), atS: Number(match[2]) };
  });
  const scenario: Scenario = {
    ...base,
    nodes,
    layerBytes: mlImageLayers(number(values["image-gb"], "image-gb", 20, 0.001) * GB),
    pieceBytes: number(values["piece-mib"], "piece-mib", 64) * MiB,
    nodeDownBps: nic,
    nodeUpBps: nic,
    cacheNicBps: number(values["cache-nic-gbps"], "cache-nic-gbps", nic / Gbps, 0.001) * Gbps,
    nodeDiskWriteBps: number(values["disk-gbs"], "disk-gbs", base.nodeDiskWriteBps / GB, 0.001) * GB,
    zones: number(values.zones, "zones", base.zones, 1),
    peerSlots: number(values["peer-slots"], "peer-slots", base.peerSlots),
    cacheSlots: number(values["cache-slots"], "cache-slots", base.cacheSlots, 1),
    seed: number(values.seed, "seed", base.seed),
    joins,
    ...(values["quantum-ms"] === undefined
      ? {}
      : { quantumS: number(values["quantum-ms"], "quantum-ms", 0) / 1000, quantumRelative: 0 }),
  };
  const modes = values.modes === undefined ? [...Modes] : values.modes.split(",").map((m) => m.trim());
  const unknown = modes.filter((m) => !(Modes as readonly string[]).includes(m));
  if (modes.length === 0 || unknown.length > 0) {
    throw new StowageError(
      "InvalidArgument",
      `--modes must list some of ${Modes.join(",")}, got "${values.modes}"`,
    );
  }
  return {
    scenario,
    failAt: number(values["fail-at"], "fail-at", 0.3),
    svgPath: values.svg ?? "fanout.svg",
    modes: modes as Mode[],
  };
}

export async function runCli(argv: string[], write: (line: string) => void): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    write(USAGE);
    return 0;
  }
  let parsed: ReturnType<typeof scenarioFromArgs>;
  try {
    parsed = scenarioFromArgs(argv);
  } catch (err) {
    write(`sim:fanout: ${(err as Error).message}`);
    write(USAGE);
    return 2;
  }
  const comparison = compareStrategies(
    parsed.scenario,
    parsed.failAt,
    (line) => write(`.. ${line}`),
    parsed.modes,
  );
  for (const line of formatComparison(comparison)) write(line);
  const curves = comparison.rows.map((row) => ({ label: row.label, points: row.result.warmCurve }));
  for (const verdict of comparison.verdicts) {
    if (!verdict.failure) continue;
    const which =
      verdict.mode === "wired" ? "tree per blob" : verdict.mode === "pieces" ? "pieces" : "planned";
    curves.push({ label: `${which}, busiest node fails`, points: verdict.failure.result.warmCurve });
  }
  const total = parsed.scenario.nodes + parsed.scenario.joins.reduce((sum, join) => sum + join.count, 0);
  await writeFile(
    parsed.svgPath,
    warmCurvesSvg(
      `Nodes warm over time: ${parsed.scenario.nodes} nodes, ${(comparison.rows[0].result.imageBytes / GB).toFixed(0)} GB`,
      curves,
      total,
    ),
  );
  write(`plot: ${parsed.svgPath}`);
  return 0;
}
