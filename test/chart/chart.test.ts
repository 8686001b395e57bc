/**
 * The Helm chart without helm (no binary here): values against the schema, CRD copies, the RBAC
 * rule files the templates include, and the templates' references to values, files and flags.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Ajv, type ValidateFunction } from "ajv";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { agentHelp } from "../../src/agent/command.ts";
import { controllerHelp } from "../../src/controller/command.ts";
import { root } from "../e2e/helpers.ts";

const chart = join(root, "charts/stowage");
const read = (path: string) => readFileSync(join(chart, path), "utf8");
type Values = Record<string, unknown>;
interface SchemaNode {
  type?: string;
  properties?: Record<string, SchemaNode>;
  additionalProperties?: boolean | SchemaNode;
}

const schema = JSON.parse(read("values.schema.json")) as SchemaNode;
const defaults = parse(read("values.yaml")) as Values;
const validate: ValidateFunction = new Ajv({ allErrors: true, strict: false }).compile(schema);

function isObject(value: unknown): value is Values {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Helm's coalescing of a values file over values.yaml: maps merge, everything else replaces. */
function coalesce(base: Values, override: Values): Values {
  const out: Values = { ...base };
  for (const [key, value] of Object.entries(override)) {
    out[key] = isObject(value) && isObject(base[key]) ? coalesce(base[key] as Values, value) : value;
  }
  return out;
}

function errorsFor(values: Values): string[] {
  return validate(values) ? [] : (validate.errors ?? []).map((e) => `${e.instancePath} ${e.message}`);
}

const templateFiles = readdirSync(join(chart, "templates")).filter((f) => /\.(ya?ml|tpl|txt)$/.test(f));
const templates = templateFiles.map((file) => ({ file, text: read(`templates/${file}`) }));

describe("chart values", () => {
  it("accepts values.yaml and every ci/*.yaml values file", () => {
    expect(errorsFor(defaults)).toEqual([]);
    const ciFiles = readdirSync(join(chart, "ci")).filter((f) => f.endsWith(".yaml"));
    expect(ciFiles.length).toBeGreaterThanOrEqual(3);
    for (const file of ciFiles) {
      const values = coalesce(defaults, (parse(read(`ci/${file}`)) ?? {}) as Values);
      expect({ file, errors: errorsFor(values) }).toEqual({ file, errors: [] });
    }
  });

  it("rejects every bad values file, naming the offending value", () => {
    const fixtures = join(root, "test/chart/fixtures");
    const expected: Record<string, RegExp> = {
      "bad-unknown-key.yaml": /\/controller must NOT have additional properties/,
      "bad-wrong-type.yaml": /\/controller\/replicas must be integer/,
      "bad-failure-policy.yaml": /\/webhook\/failurePolicy must be equal to one of the allowed values/,
      "bad-s3-without-bucket.yaml": /\/cache\/s3\/bucket must NOT have fewer than 1 characters/,
      "bad-external-cache-without-url.yaml": /\/cache\/externalUrl must NOT have fewer than 1 characters/,
      "bad-duration.yaml": /\/agent\/stallTimeout must match pattern/,
      "bad-cache-replicas-without-s3.yaml": /\/cache\/replicas must be <= 1/,
    };
    const files = readdirSync(fixtures).filter((f) => f.startsWith("bad-"));
    expect(files.sort()).toEqual(Object.keys(expected).sort());
    for (const file of files) {
      const values = coalesce(defaults, parse(readFileSync(join(fixtures, file), "utf8")) as Values);
      const errors = errorsFor(values);
      expect(
        errors.some((e) => expected[file].test(e)),
        `${file}: ${errors.join("; ")}`,
      ).toBe(true);
    }
  });

  it("refuses unknown keys at every level the chart defines", () => {
    const objectPaths: string[][] = [];
    const walk = (node: SchemaNode, path: string[]) => {
      if (!node.properties) return;
      objectPaths.push(path);
      expect({ path: path.join("."), additionalProperties: node.additionalProperties }).toEqual({
        path: path.join("."),
        additionalProperties: false,
      });
      for (const [key, child] of Object.entries(node.properties)) walk(child, [...path, key]);
    };
    walk(schema, []);
    expect(objectPaths.length).toBeGreaterThan(20);
  });

  it("documents every value in values.yaml with a comment above it", () => {
    const lines = read("values.yaml").split("\n");
    // a comment above a key documents everything below it (e.g. resources: requests/limits)
    const stack: { indent: number; key: string; documented: boolean }[] = [];
    const undocumented: string[] = [];
    let inSequenceBelow = -1;
    for (let i = 0; i < lines.length; i++) {
      const match = /^(\s*)([A-Za-z][\w.-]*):/.exec(lines[i]);
      if (!match || lines[i].trimStart().startsWith("#")) continue;
      const indent = match[1].length;
      if (inSequenceBelow >= 0 && indent > inSequenceBelow) continue;
      inSequenceBelow = -1;
      while (stack.length && stack[stack.length - 1].indent >= indent) stack.pop();
      const path = [...stack.map((s) => s.key), match[2]];
      let previous = i - 1;
      while (previous >= 0 && lines[previous].trim() === "") previous--;
      const commented = lines[previous]?.trim().startsWith("#") ?? false;
      const covered = stack.some((s) => s.documented);
      stack.push({ indent, key: match[2], documented: commented });
      let node: SchemaNode | undefined = schema;
      for (const key of path) node = node?.properties?.[key];
      const isLeaf = node !== undefined && node.properties === undefined;
      if (isLeaf && !commented && !covered) undocumented.push(path.join("."));
      if (isLeaf && /:\s*$/.test(lines[i])) inSequenceBelow = indent;
    }
    expect(undocumented).toEqual([]);
  });
});

describe("chart README", () => {
  it("lists every value in its values table", () => {
    const readme = read("README.md");
    const listed = new Set([...readme.matchAll(/^\| `([\w.]+)` +\|/gm)].map((m) => m[1]));
    const missing: string[] = [];
    const walk = (node: SchemaNode, path: string[]) => {
      const prefixes = path.map((_, i) => path.slice(0, i + 1).join("."));
      if (prefixes.some((p) => listed.has(p))) return;
      if (!node.properties) return void missing.push(path.join("."));
      for (const [key, child] of Object.entries(node.properties)) walk(child, [...path, key]);
    };
    walk(schema, []);
    expect(missing).toEqual([]);
  });
});

describe("chart templates", () => {
  it("reference only values that values.yaml defines, and every value is used", () => {
    const referenced = new Set<string>();
    for (const { text } of templates) {
      for (const match of text.matchAll(/\$?\.Values((?:\.[A-Za-z]\w*)+)/g))
        referenced.add(match[1].slice(1));
    }
    const has = (path: string) => {
      let node: unknown = defaults;
      for (const key of path.split(".")) {
        if (!isObject(node) || !(key in node)) return false;
        node = node[key];
      }
      return true;
    };
    expect([...referenced].filter((path) => !has(path))).toEqual([]);
    const leaves: string[] = [];
    const walk = (node: SchemaNode, path: string[]) => {
      if (!node.properties) return void leaves.push(path.join("."));
      for (const [key, child] of Object.entries(node.properties)) walk(child, [...path, key]);
    };
    walk(schema, []);
    const used = (leaf: string) => [...referenced].some((r) => r === leaf || leaf.startsWith(`${r}.`));
    // `global` is Helm's, not a value of this chart: the schema accepts what a parent chart passes
    const helmOwn = new Set(["global"]);
    expect(leaves.filter((leaf) => !used(leaf) && !helmOwn.has(leaf))).toEqual([]);
  });

  it("include only files that exist in the chart", () => {
    const missing: string[] = [];
    let includes = 0;
    for (const { file, text } of templates) {
      for (const match of text.matchAll(/\.Files\.Get "([^"]+)"/g)) {
        includes++;
        try {
          read(match[1]);
        } catch {
          missing.push(`${file}: ${match[1]}`);
        }
      }
    }
    expect(missing).toEqual([]);
    expect(includes).toBeGreaterThanOrEqual(8);
  });

  it("balance every if/with/range/define with an end", () => {
    for (const { file, text } of templates) {
      const actions = [...text.matchAll(/\{\{-?\s*(\/\*[\s\S]*?\*\/|[^}]*?)\s*-?\}\}/g)].map((m) => m[1]);
      let depth = 0;
      for (const action of actions) {
        if (action.startsWith("/*")) continue;
        if (/^(if|with|range|define|block)\b/.test(action)) depth++;
        if (/^end\b/.test(action)) depth--;
        expect(depth, `${file}: unbalanced at {{ ${action} }}`).toBeGreaterThanOrEqual(0);
      }
      expect({ file, depth }).toEqual({ file, depth: 0 });
    }
  });

  it("pass `stowage controller` only flags it knows", () => {
    const deployment = read("templates/controller-deployment.yaml");
    const flags = [...deployment.matchAll(/^\s*- (--[a-z-]+)=/gm)].map((m) => m[1]);
    expect(flags.length).toBeGreaterThan(8);
    for (const flag of flags) expect(controllerHelp, flag).toMatch(new RegExp(`^  ${flag}[ =]`, "m"));
  });

  it("pass `stowage agent` only flags it knows", () => {
    const daemonSet = read("templates/agent-daemonset.yaml");
    const flags = [...daemonSet.matchAll(/^\s*- (--[a-z-]+)=/gm)].map((m) => m[1]);
    expect(flags.length).toBeGreaterThan(6);
    for (const flag of flags) expect(agentHelp, flag).toMatch(new RegExp(`^  ${flag}[ =]`, "m"));
    expect(daemonSet).toContain("fieldPath: spec.nodeName");
  });

  it("run the controller and cache under restricted Pod Security and nothing privileged", () => {
    const helpers = read("templates/_helpers.tpl");
    for (const setting of [
      "runAsNonRoot: true",
      "readOnlyRootFilesystem: true",
      "allowPrivilegeEscalation: false",
      'drop: ["ALL"]',
      "type: RuntimeDefault",
    ])
      expect(helpers).toContain(setting);
    const privileged = templates.filter(({ text }) => /privileged: true/.test(text)).map((t) => t.file);
    expect(privileged).toEqual([]);
    expect((defaults.agent as Values).securityContext).toMatchObject({ privileged: false });
    for (const file of ["controller-deployment.yaml", "cache-statefulset.yaml"]) {
      const text = read(`templates/${file}`);
      expect(text).toContain('include "stowage.restrictedPodSecurityContext"');
      expect(text).toContain('include "stowage.restrictedContainerSecurityContext"');
    }
    const deployment = read("templates/controller-deployment.yaml");
    expect(deployment).toMatch(/path: \/healthz/);
    expect(deployment).toMatch(/path: \/readyz/);
    expect(defaults.controller).toMatchObject({ replicas: 2, leaderElection: { enabled: true } });
    expect((defaults.agent as Values).tolerations).toContainEqual({
      key: "nvidia.com/gpu",
      operator: "Exists",
      effect: "NoSchedule",
    });
  });

  it("render monitoring objects only when the API is served or forced", () => {
    for (const [file, value] of [
      ["servicemonitor.yaml", "metrics.serviceMonitor"],
      ["prometheusrule.yaml", "prometheusRule"],
    ]) {
      const firstLine = read(`templates/${file}`).split("\n")[0];
      expect(firstLine).toContain(`.Values.${value}.enabled`);
      expect(firstLine).toContain(`.Values.${value}.force`);
      expect(firstLine).toContain('include "stowage.monitoringApi"');
    }
    expect(read("templates/_helpers.tpl")).toContain(
      '.Capabilities.APIVersions.Has "monitoring.coreos.com/v1"',
    );
  });
});

describe("chart CRDs and RBAC", () => {
  it("ships CRDs identical to the top-level crds/", () => {
    const top = readdirSync(join(root, "crds")).filter((f) => f.endsWith(".yaml"));
    const copies = readdirSync(join(chart, "crds")).filter((f) => f.endsWith(".yaml"));
    expect(copies.sort()).toEqual(top.sort());
    for (const file of top) {
      expect(read(`crds/${file}`), file).toBe(readFileSync(join(root, "crds", file), "utf8"));
    }
  });

  const rbacFiles = readdirSync(join(chart, "files/rbac")).filter((f) => f.endsWith(".yaml"));
  const rulesOf = (file: string) =>
    parse(read(`files/rbac/${file}`)) as {
      apiGroups: string[];
      resources: string[];
      verbs: string[];
      resourceNames?: string[];
    }[];

  it("grants no wildcard verbs, resources or API groups", () => {
    expect(rbacFiles.length).toBeGreaterThanOrEqual(5);
    for (const file of rbacFiles) {
      for (const rule of rulesOf(file)) {
        expect(rule.verbs.length, file).toBeGreaterThan(0);
        for (const field of [rule.verbs, rule.resources, rule.apiGroups])
          expect(
            field.filter((v) => v.includes("*")),
            file,
          ).toEqual([]);
      }
    }
  });

  it("lets the controller only get Secrets in ModelImage namespaces, and the agent none at all", () => {
    const secretRules = (file: string) => rulesOf(file).filter((r) => r.resources.includes("secrets"));
    expect(secretRules("controller-namespaced.yaml").map((r) => r.verbs)).toEqual([["get"]]);
    expect(secretRules("controller-cluster.yaml")).toEqual([]);
    expect(secretRules("controller-webhook.yaml")).toEqual([]);
    expect(secretRules("agent.yaml")).toEqual([]);
    const agentWrites = rulesOf("agent.yaml")
      .filter((r) => r.verbs.some((v) => ["create", "update", "patch", "delete"].includes(v)))
      .flatMap((r) => r.resources);
    expect(agentWrites.sort()).toEqual(["events", "events", "nodecaches/status"]);
  });

  it("binds namespaced controller rules per namespace when watchNamespaces is set", () => {
    const rbac = read("templates/controller-rbac.yaml");
    expect(rbac).toMatch(
      /if empty \.Values\.watchNamespaces[\s\S]*kind: ClusterRoleBinding[\s\S]*else[\s\S]*range \$namespace := \.Values\.watchNamespaces[\s\S]*kind: RoleBinding/,
    );
    for (const file of rbacFiles.filter((f) => f !== "agent.yaml"))
      expect(rbac).toContain(`.Files.Get "files/rbac/${file}"`);
    expect(read("templates/agent-rbac.yaml")).toContain('.Files.Get "files/rbac/agent.yaml"');
  });
});
