import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { root } from "../e2e/helpers.ts";
import { definedMetricNames, isDefined, metricNames, promtool } from "./promql.ts";

const rulesPath = join(root, "charts/stowage/files/prometheus-rules.yaml");
const rulesText = readFileSync(rulesPath, "utf8");
interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
const groups = (text: string) => (parse(text) as { groups: { name: string; rules: Rule[] }[] }).groups;
const rules = groups(rulesText).flatMap((g) => g.rules);
const dir = mkdtempSync(join(tmpdir(), "stowage-alerts-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** GitHub's anchor for a Markdown heading. */
const anchor = (heading: string) =>
  heading
    .trim()
    .toLowerCase()
    .replace(/[^\w\- ]/g, "")
    .replace(/ /g, "-");

describe("Stowage alert rules", () => {
  it("ship the alerts with the durations the issues ask for", () => {
    expect(Object.fromEntries(rules.map((r) => [r.alert, r.for]))).toEqual({
      StowageSyncLagHigh: "15m",
      StowageSyncFailing: "30m",
      StowagePrewarmIncomplete: "1h",
      StowageNodeAgentDown: "5m",
      StowageNodeImagesEvicted: "15m",
      StowageControllerDown: "5m",
      StowageCacheRegistryDown: "5m",
      StowageCacheFrontDown: "5m",
      StowageCacheServingStaleTags: "15m",
      StowageCacheUpstreamFetchFailing: "15m",
      StowageCacheMissRatioHigh: "1h",
      StowageCacheRegistryGcFailing: "5m",
      StowageCacheRegistryReadOnly: "2h",
    });
  });

  it("pass promtool check rules", async () => {
    const result = await promtool(["check", "rules", rulesPath]);
    expect(result.output).toContain("SUCCESS: 13 rules found");
    expect(result.code).toBe(0);
  });

  it("fire on series that should fire them and stay silent on those that should not (promtool test rules)", async () => {
    const result = await promtool(["test", "rules", join(root, "test/alerts/stowage-alerts.promtest.yaml")]);
    expect(result.output).toContain("SUCCESS");
    expect(result.code).toBe(0);
    const tested = readFileSync(join(root, "test/alerts/stowage-alerts.promtest.yaml"), "utf8");
    for (const rule of rules) expect(tested).toContain(`alertname: ${rule.alert}`);
  });

  it("have a summary, a description naming the object and a runbook section in docs/operations.md", () => {
    const docs = readFileSync(join(root, "docs/operations.md"), "utf8");
    const anchors = new Set([...docs.matchAll(/^#+ (.+)$/gm)].map((m) => anchor(m[1])));
    for (const rule of rules) {
      const { summary, description, runbook_url } = rule.annotations ?? {};
      expect(summary, rule.alert).toBeTruthy();
      expect(description, rule.alert).toBeTruthy();
      const section = rule.alert.toLowerCase();
      expect(runbook_url).toBe(`https://stowage.dev/docs/operations.md#${section}`);
      expect(anchors.has(section), `docs/operations.md has no section "${rule.alert}"`).toBe(true);
      if (/stowage_(modelimage|prewarm)/.test(rule.expr))
        expect(description).toContain("{{ $labels.namespace }}/{{ $labels.name }}");
      if (rule.expr.includes("heartbeat")) expect(description).toContain("{{ $labels.node }}");
    }
  });

  it("read only metrics the code defines", () => {
    const defined = definedMetricNames();
    const used = rules.flatMap((r) => metricNames(r.expr));
    expect(used).toContain("stowage_modelimage_sync_lag_seconds");
    expect(used.filter((name) => !isDefined(name, defined))).toEqual([]);
  });

  it("take the thresholds, job names and runbook URL the chart's template substitutes", async () => {
    const template = readFileSync(join(root, "charts/stowage/templates/prometheusrule.yaml"), "utf8");
    // the values a render with fullname "ml-cache" and non-default thresholds would produce
    const rendered: Record<string, string> = {
      "%d:syncLagThresholdSeconds": "7200",
      "%d:heartbeatStaleSeconds": "120",
      "%s:fullname": "ml-cache",
    };
    const substitutions = [
      ...template.matchAll(
        /replace "((?:[^"\\]|\\.)*)" (?:\(printf "((?:[^"\\]|\\.)*)" \(?(?:int )?([^)]*)\)?\)|(\.Values\.[\w.]+))/g,
      ),
    ].map((m) => {
      const unquote = (s: string) => s.replace(/\\"/g, '"');
      const from = unquote(m[1]);
      let to: string;
      if (m[4]) to = "https://docs.example.com/stowage/operations.md";
      else {
        const arg = m[3].includes("syncLag")
          ? rendered["%d:syncLagThresholdSeconds"]
          : m[3].includes("heartbeat")
            ? rendered["%d:heartbeatStaleSeconds"]
            : rendered["%s:fullname"];
        to = unquote(m[2]).replace(/%[ds]/, arg);
      }
      return { from, to };
    });
    expect(substitutions.length).toBe(8);
    const rulesOnly = rulesText
      .split("\n")
      .filter((line) => !line.trimStart().startsWith("#"))
      .join("\n");
    let out = rulesText;
    for (const { from, to } of substitutions) {
      expect(rulesOnly, `the rules file no longer contains ${from}`).toContain(from);
      out = out.replaceAll(from, to);
    }
    const file = join(dir, "rendered-rules.yaml");
    writeFileSync(file, out);
    expect((await promtool(["check", "rules", file])).code).toBe(0);
    const renderedRules = groups(out).flatMap((g) => g.rules);
    const byName = Object.fromEntries(renderedRules.map((r) => [r.alert, r]));
    expect(byName.StowageSyncLagHigh.expr).toBe(
      "max by (namespace, name, variant) (stowage_modelimage_sync_lag_seconds) > 7200",
    );
    expect(byName.StowageNodeAgentDown.expr).toBe(
      "max by (node) (stowage_nodecache_heartbeat_age_seconds) > 120",
    );
    expect(byName.StowageControllerDown.expr).toContain('job="ml-cache-controller-metrics"');
    expect(byName.StowageControllerDown.annotations?.description).toContain(
      "job ml-cache-controller-metrics",
    );
    expect(byName.StowageCacheRegistryDown.expr).toContain('job="ml-cache-cache"');
    expect(byName.StowageCacheFrontDown.expr).toContain('job="ml-cache-cache-front"');
    expect(byName.StowageCacheFrontDown.annotations?.description).toContain("job ml-cache-cache-front");
    for (const rule of renderedRules)
      expect(rule.annotations?.runbook_url).toMatch(
        /^https:\/\/docs\.example\.com\/stowage\/operations\.md#/,
      );
  });
});
