/**
 * The PrometheusRule the chart renders holds only alerts for what the release deploys and
 * scrapes: an "is down" alert for a component that is not installed, or for a job no
 * ServiceMonitor creates, fires forever. Each values set is rendered by the real helm, and its
 * rules go through `promtool check rules` and `promtool test rules` with the hand-written
 * stowage-alerts.promtest.yaml: an alert the render keeps must fire and stay silent as that file
 * says, and one it leaves out must stay silent even on the series that fire it.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { chartDir, getObject, RELEASE, type RenderOptions, render } from "../chart/render.ts";
import { root } from "../support/run.ts";
import { promtool } from "./promql.ts";

const ALL = [
  "StowageSyncLagHigh",
  "StowageSyncFailing",
  "StowagePrewarmIncomplete",
  "StowageNodeAgentDown",
  "StowageNodeImagesEvicted",
  "StowageControllerDown",
  "StowageCacheRegistryDown",
  "StowageCacheFrontDown",
  "StowageCacheServingStaleTags",
  "StowageCacheUpstreamFetchFailing",
  "StowageCacheMissRatioHigh",
  "StowageCacheRegistryGcFailing",
  "StowageCacheRegistryReadOnly",
];
/** Alerts on eviction and the registry's garbage collection: only with cache.gc.enabled. */
const GC = ["StowageCacheMissRatioHigh", "StowageCacheRegistryGcFailing", "StowageCacheRegistryReadOnly"];
/** Alerts on the front's metrics: only when the chart runs the front. */
const FRONT = [
  "StowageCacheFrontDown",
  "StowageCacheServingStaleTags",
  "StowageCacheUpstreamFetchFailing",
  "StowageCacheMissRatioHigh",
];
const GC_ON = { cache: { gc: { enabled: true } } };
const MONITORING = ["monitoring.coreos.com/v1"];
/** A cluster that serves the PodMonitor kind too: the agents' own metrics are scraped. */
const POD_MONITOR = [...MONITORING, "monitoring.coreos.com/v1/PodMonitor"];
/** Alerts on the agents' own counters: only where the agents' PodMonitor is rendered. */
const AGENT = ["StowageNodeImagesEvicted"];
const without = (...names: string[]) => ALL.filter((name) => !names.includes(name));

const cases: { name: string; options: RenderOptions; alerts: string[] }[] = [
  {
    name: "the defaults on a cluster serving the Prometheus operator API",
    options: { apiVersions: MONITORING },
    alerts: without(...GC, ...AGENT),
  },
  {
    name: "cache.gc.enabled=true (eviction and the registry's garbage collection)",
    options: { apiVersions: POD_MONITOR, values: [GC_ON] },
    alerts: ALL,
  },
  {
    name: "cache.front.enabled=false (nodes pull from the registry)",
    options: {
      apiVersions: MONITORING,
      values: [{ cache: { front: { enabled: false }, gc: { enabled: true } } }],
    },
    alerts: without(...FRONT, ...AGENT),
  },
  {
    name: "ci/gitops-values.yaml (forced, external cache), default thresholds",
    options: {
      files: [join(chartDir, "ci/gitops-values.yaml")],
      values: [{ prometheusRule: { syncLagThresholdSeconds: 3600 } }],
    },
    alerts: without("StowageCacheRegistryDown", ...FRONT, ...GC, ...AGENT),
  },
  {
    name: "cache.enabled=false (an external registry)",
    options: {
      apiVersions: MONITORING,
      values: [
        { cache: { enabled: false, externalUrl: "https://registry.internal:5000", gc: { enabled: true } } },
      ],
    },
    alerts: without("StowageCacheRegistryDown", ...FRONT, ...GC, ...AGENT),
  },
  {
    name: "cache.metricsPort=0 (no registry metrics)",
    options: { apiVersions: MONITORING, values: [{ cache: { metricsPort: 0 } }] },
    alerts: without("StowageCacheRegistryDown", ...GC, ...AGENT),
  },
  {
    name: "metrics.service.enabled=false (no controller metrics Service)",
    options: { apiVersions: MONITORING, values: [{ metrics: { service: { enabled: false } } }] },
    alerts: without("StowageControllerDown", ...GC, ...AGENT),
  },
  {
    name: "metrics.serviceMonitor.enabled=false (nothing scraped by the chart)",
    options: { apiVersions: MONITORING, values: [{ metrics: { serviceMonitor: { enabled: false } } }] },
    alerts: without(
      "StowageControllerDown",
      "StowageCacheRegistryDown",
      "StowageCacheFrontDown",
      ...GC,
      ...AGENT,
    ),
  },
  {
    name: "agent.enabled=false (no node agents)",
    options: { apiVersions: MONITORING, values: [{ agent: { enabled: false } }] },
    alerts: without("StowageNodeAgentDown", "StowagePrewarmIncomplete", ...GC, ...AGENT),
  },
  {
    name: "agent.enabled=false on a cluster serving PodMonitor (no agents to scrape)",
    options: { apiVersions: POD_MONITOR, values: [{ agent: { enabled: false } }] },
    alerts: without("StowageNodeAgentDown", "StowagePrewarmIncomplete", ...GC, ...AGENT),
  },
  {
    name: "agent.podMonitor.enabled=false on a cluster serving PodMonitor",
    options: { apiVersions: POD_MONITOR, values: [{ agent: { podMonitor: { enabled: false } } }] },
    alerts: without(...GC, ...AGENT),
  },
  {
    name: "the defaults on a cluster serving PodMonitor (the agents are scraped)",
    options: { apiVersions: POD_MONITOR },
    alerts: without(...GC),
  },
];

interface PromTest {
  rule_files: string[];
  tests: { name: string; alert_rule_test?: { alertname: string; exp_alerts?: unknown[] }[] }[];
}

const handWritten = parse(
  readFileSync(join(root, "test/alerts/stowage-alerts.promtest.yaml"), "utf8"),
) as PromTest;
const dir = mkdtempSync(join(tmpdir(), "stowage-chart-rules-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.each(cases.map((c, i) => ({ ...c, i })))("the PrometheusRule rendered with $name", (rendered) => {
  it("holds exactly the alerts for what the release deploys and scrapes, and promtool checks and tests them", async () => {
    const objects = await render(rendered.options);
    const rule = getObject(objects, "PrometheusRule", RELEASE);
    const groups = rule.spec.groups as { name: string; rules: { alert: string }[] }[];
    const alerts = groups.flatMap((g) => g.rules.map((r) => r.alert));
    expect(alerts.sort()).toEqual([...rendered.alerts].sort());
    expect(groups.every((g) => g.rules.length > 0)).toBe(true);

    const rulesFile = join(dir, `rules-${rendered.i}.yaml`);
    writeFileSync(rulesFile, stringify({ groups }));
    const checked = await promtool(["check", "rules", rulesFile]);
    expect(checked.output).toContain(`SUCCESS: ${alerts.length} rules found`);
    expect(checked.code).toBe(0);

    // The same series and expectations, on the rendered rules; an alert left out fires never.
    const tests: PromTest = structuredClone(handWritten);
    tests.rule_files = [rulesFile];
    const silencedFiring = new Set<string>();
    for (const test of tests.tests)
      for (const expectation of test.alert_rule_test ?? [])
        if (!alerts.includes(expectation.alertname)) {
          if ((expectation.exp_alerts ?? []).length > 0) silencedFiring.add(expectation.alertname);
          expectation.exp_alerts = [];
        }
    // Every alert left out is tested on series that fire it where it exists.
    expect([...silencedFiring].sort()).toEqual(ALL.filter((a) => !alerts.includes(a)).sort());
    const testFile = join(dir, `rules-${rendered.i}.promtest.yaml`);
    writeFileSync(testFile, stringify(tests));
    const tested = await promtool(["test", "rules", testFile]);
    expect(tested.output).toContain("SUCCESS");
    expect(tested.code).toBe(0);
  });
});
