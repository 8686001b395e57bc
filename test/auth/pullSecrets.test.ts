import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CredentialProvider, createCredentialProvider } from "../../src/auth/index.ts";
import { KubeApiError, KubeClient, Resources } from "../../src/kube/client.ts";
import { Copier } from "../../src/oci/copy.ts";
import { parseReference } from "../../src/oci/reference.ts";
import { type CredentialLookup, RegistryClient } from "../../src/oci/registry.ts";
import type { StowageError } from "../../src/util/errors.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { createNamespace, startCluster, type TestCluster } from "../kube/helpers.ts";
import { failure as expectFailure } from "../support/failure.ts";

// Distinctive values, so a leak into a message or a log line cannot go unnoticed.
const BASIC_PASSWORD = "basic-pw-7f3a9c2e";
const TOKEN_PASSWORD = "token-pw-b41d8e06";
const WRONG_PASSWORD = "wrong-pw-5e2c71aa";
const b64 = (text: string) => Buffer.from(text).toString("base64");
const SECRET_VALUES = [
  BASIC_PASSWORD,
  TOKEN_PASSWORD,
  WRONG_PASSWORD,
  b64(`alice:${BASIC_PASSWORD}`),
  b64(`bob:${TOKEN_PASSWORD}`),
  b64(`alice:${WRONG_PASSWORD}`),
];

let cluster: TestCluster;
let work: string;
let kube: Awaited<ReturnType<typeof startCluster>>["client"];
let basicRegistry: RunningRegistry;
let tokenRegistry: RunningRegistry;
let cache: RunningRegistry;
const logLines: string[] = [];
const logger = pino(
  { level: "trace" },
  new Writable({
    write(chunk, _encoding, done) {
      logLines.push(String(chunk));
      done();
    },
  }),
);
let provider: CredentialProvider;
const clients: RegistryClient[] = [];
const messages: string[] = [];

function clientWith(credentials: CredentialLookup): RegistryClient {
  const client = new RegistryClient({
    credentials,
    insecureHosts: [basicRegistry.host, tokenRegistry.host, cache.host],
    retry: { attempts: 2, baseDelayMs: 1 },
    logger,
  });
  clients.push(client);
  return client;
}

async function createPullSecret(
  namespace: string,
  name: string,
  type: string,
  data: Record<string, string>,
): Promise<void> {
  await kube.resource(Resources.Secret).create({ metadata: { name, namespace }, type, data } as never);
}

function dockerConfigJson(auths: Record<string, { auth?: string; username?: string; password?: string }>) {
  return { ".dockerconfigjson": b64(JSON.stringify({ auths })) };
}

/** The API's refusal of a request. */
async function expectApiFailure(promise: Promise<unknown>): Promise<KubeApiError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof KubeApiError) return err;
    throw err;
  }
  throw new Error("expected the API to refuse the request");
}

/** The StowageError, with its message kept for the no-secret-in-messages check. */
async function failure(promise: Promise<unknown>): Promise<StowageError> {
  const err = await expectFailure(promise);
  messages.push(err.message);
  return err;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "stowage-pull-secrets-"));
  [{ cluster, client: kube }, basicRegistry, tokenRegistry, cache] = await Promise.all([
    // RBAC on (the real apiserver always has it): an identity without access is refused for real.
    startCluster({ rbac: true }),
    startRegistry({ auth: "htpasswd", users: [{ username: "alice", password: BASIC_PASSWORD }] }),
    startRegistry({ auth: "token", users: [{ username: "bob", password: TOKEN_PASSWORD }] }),
    startRegistry(),
  ]);
  await createNamespace(kube, "ml");
  await createNamespace(kube, "other");
  const owner = new RegistryClient({
    credentials: (registry) =>
      registry === basicRegistry.host
        ? { username: "alice", password: BASIC_PASSWORD }
        : { username: "bob", password: TOKEN_PASSWORD },
    insecureHosts: [basicRegistry.host, tokenRegistry.host],
  });
  await pushSinglePlatformImage(owner, { registry: basicRegistry.host, repository: "team-a/model" }, "v1");
  await pushSinglePlatformImage(owner, { registry: tokenRegistry.host, repository: "vision/detector" }, "v1");
  await owner.close();
  provider = createCredentialProvider({ kube, ecr: false, logger });
}, 60_000);

afterAll(async () => {
  await Promise.all(clients.map((client) => client.close()));
  await provider?.close();
  await Promise.all([cluster?.stop(), basicRegistry?.stop(), tokenRegistry?.stop(), cache?.stop()]);
  if (work) await rm(work, { recursive: true, force: true });
});

describe("pull secrets", () => {
  it("mirrors an image from an htpasswd registry with a dockerconfigjson secret of the ModelImage's namespace", async () => {
    await createPullSecret(
      "ml",
      "basic",
      "kubernetes.io/dockerconfigjson",
      dockerConfigJson({ [basicRegistry.host]: { auth: b64(`alice:${BASIC_PASSWORD}`) } }),
    );
    const lookup = await provider.forModelImage("ml", [{ name: "basic" }]);
    const copier = new Copier({ client: clientWith(lookup), logger });
    const result = await copier.copy(
      parseReference(`${basicRegistry.host}/team-a/model:v1`),
      parseReference(`${cache.host}/mirror/team-a/model:v1`),
    );
    expect(result.blobs.transferred).toBeGreaterThan(0);
    const pulled = await clientWith(() => undefined).getManifest(
      { registry: cache.host, repository: "mirror/team-a/model" },
      "v1",
    );
    expect(pulled.digest).toBe(result.sourceDigest);
  });

  it("pulls from a token registry with a legacy dockercfg secret keyed by URL", async () => {
    await createPullSecret("ml", "legacy", "kubernetes.io/dockercfg", {
      ".dockercfg": b64(
        JSON.stringify({
          [`http://${tokenRegistry.host}/v1/`]: { auth: b64(`bob:${TOKEN_PASSWORD}`), email: "" },
        }),
      ),
    });
    const lookup = await provider.forModelImage("ml", [{ name: "legacy" }]);
    const manifest = await clientWith(lookup).getManifest(
      { registry: tokenRegistry.host, repository: "vision/detector" },
      "v1",
    );
    expect(manifest.digest).toMatch(/^sha256:/);
    expect(tokenRegistry.tokenIssuer?.requests().some((request) => request.account === "bob")).toBe(true);
  });

  it("refuses a secret that does not exist in the ModelImage's namespace, naming it and the namespace", async () => {
    const err = await failure(provider.forModelImage("ml", [{ name: "nowhere" }]));
    expect(err.reason).toBe("AuthConfigInvalid");
    expect(err.message).toContain('pull secret "nowhere" in namespace "ml" not found');
  });

  it("never reads a secret of the same name from another namespace", async () => {
    await createPullSecret(
      "other",
      "elsewhere",
      "kubernetes.io/dockerconfigjson",
      dockerConfigJson({ [basicRegistry.host]: { auth: b64(`alice:${BASIC_PASSWORD}`) } }),
    );
    await cluster.resetRequestLog();
    const err = await failure(provider.forModelImage("ml", [{ name: "elsewhere" }]));
    expect(err.reason).toBe("AuthConfigInvalid");
    expect(err.message).toContain('pull secret "elsewhere" in namespace "ml" not found');
    const secretPaths = (await cluster.requestLog())
      .map((entry) => JSON.stringify(entry))
      .filter((entry) => entry.includes("secrets"));
    expect(secretPaths.length).toBeGreaterThan(0);
    for (const entry of secretPaths) expect(entry).toContain("/namespaces/ml/secrets/elsewhere");
  });

  it("says which secret it may not read when the API forbids it", async () => {
    await createPullSecret(
      "ml",
      "guarded",
      "kubernetes.io/dockerconfigjson",
      dockerConfigJson({ [basicRegistry.host]: { auth: b64(`alice:${BASIC_PASSWORD}`) } }),
    );
    // A controller whose ServiceAccount was granted nothing: RBAC refuses it.
    const kubeconfig = await cluster.serviceAccountKubeconfig(
      "ml",
      "unprivileged",
      join(work, "unprivileged"),
    );
    const unprivileged = KubeClient.load({ path: kubeconfig });
    const refused = createCredentialProvider({ kube: unprivileged, ecr: false, logger });
    try {
      const err = await failure(refused.forModelImage("ml", [{ name: "guarded" }]));
      expect(err.reason).toBe("Denied");
      expect(err.message).toContain('cannot read pull secret "guarded" in namespace "ml"');
    } finally {
      await refused.close();
      unprivileged.close();
    }
  });

  it.each<{ name: string; type: string; data: Record<string, string>; says: string }>([
    {
      name: "opaque",
      type: "Opaque",
      data: { ".dockerconfigjson": b64("{}") },
      says: 'pull secret "opaque" in namespace "ml" is not of type kubernetes.io/dockerconfigjson (found Opaque)',
    },
    {
      name: "bad-auth",
      type: "kubernetes.io/dockerconfigjson",
      data: dockerConfigJson({ "ghcr.io": { auth: `!!${WRONG_PASSWORD}` } }),
      says: '"auth" of "ghcr.io" is not base64',
    },
  ])("refuses secret $name with AuthConfigInvalid that names it", async ({ name, type, data, says }) => {
    await createPullSecret("ml", name, type, data);
    const err = await failure(provider.forModelImage("ml", [{ name }]));
    expect(err.reason).toBe("AuthConfigInvalid");
    expect(err.message).toContain(says);
    expect(err.message).toContain(`"${name}"`);
  });

  // The API server validates the docker config types itself: such a secret never reaches us.
  it.each<{ name: string; type: string; data: Record<string, string>; field: string }>([
    {
      name: "no-key",
      type: "kubernetes.io/dockerconfigjson",
      data: { ".dockercfg": b64("{}") },
      field: "data[.dockerconfigjson]: Required value",
    },
    {
      name: "bad-json",
      type: "kubernetes.io/dockerconfigjson",
      data: { ".dockerconfigjson": b64(`{"auths": {"x": {"password": "${WRONG_PASSWORD}"`) },
      field: 'data[.dockerconfigjson]: Invalid value: "<secret contents redacted>"',
    },
    {
      name: "bad-cfg-json",
      type: "kubernetes.io/dockercfg",
      data: { ".dockercfg": b64(`${WRONG_PASSWORD}`) },
      field: 'data[.dockercfg]: Invalid value: "<secret contents redacted>"',
    },
  ])("cannot store secret $name: the API refuses a malformed $type", async ({ name, type, data, field }) => {
    const refused = await expectApiFailure(createPullSecret("ml", name, type, data));
    messages.push(refused.message);
    expect(refused.code).toBe(422);
    expect(refused.message).toContain(`Secret "${name}" is invalid: ${field}`);
    expect(await kube.resource(Resources.Secret).find(name, "ml")).toBeUndefined();
  });

  it("tries every matching entry in turn: the most specific one is refused, the next is accepted and remembered", async () => {
    await createPullSecret(
      "ml",
      "team-a-wrong",
      "kubernetes.io/dockerconfigjson",
      dockerConfigJson({
        [`${basicRegistry.host}/team-a`]: { username: "alice", password: WRONG_PASSWORD },
        [`${tokenRegistry.host}/vision`]: { username: "bob", password: WRONG_PASSWORD },
      }),
    );
    await createPullSecret(
      "ml",
      "host-right",
      "kubernetes.io/dockerconfigjson",
      dockerConfigJson({
        [basicRegistry.host]: { auth: b64(`alice:${BASIC_PASSWORD}`) },
        [tokenRegistry.host]: { auth: b64(`bob:${TOKEN_PASSWORD}`) },
      }),
    );
    // The right secret is listed first: order among secrets must not beat specificity.
    const lookup = await provider.forModelImage("ml", [{ name: "host-right" }, { name: "team-a-wrong" }]);
    const candidates = (await lookup(basicRegistry.host, "team-a/model")) as { label?: string }[];
    expect(candidates.map((candidate) => candidate.label)).toEqual([
      `pull secret "team-a-wrong" (${basicRegistry.host}/team-a)`,
      `pull secret "host-right" (${basicRegistry.host})`,
      undefined,
    ]);

    const client = clientWith(lookup);
    const basicRepo = { registry: basicRegistry.host, repository: "team-a/model" };
    const refusedBefore = (await basicRegistry.requests()).filter((r) => r.status === 401).length;
    await client.getManifest(basicRepo, "v1");
    const refusedAfterFirst = (await basicRegistry.requests()).filter((r) => r.status === 401).length;
    // Once without credentials (to learn the challenge), once with the wrong entry.
    expect(refusedAfterFirst - refusedBefore).toBe(2);
    await client.getManifest(basicRepo, "v1");
    const refusedAfterSecond = (await basicRegistry.requests()).filter((r) => r.status === 401).length;
    expect(refusedAfterSecond).toBe(refusedAfterFirst);

    // Token registry: the realm refuses the wrong password, then issues a token for the right one.
    const tokenRepo = { registry: tokenRegistry.host, repository: "vision/detector" };
    const asked = () =>
      tokenRegistry.tokenIssuer
        ?.requests()
        .filter((request) => request.scope.some((scope) => scope.includes("vision/detector"))).length ?? 0;
    const askedBefore = asked();
    const manifest = await client.getManifest(tokenRepo, "v1");
    expect(manifest.digest).toMatch(/^sha256:/);
    expect(asked() - askedBefore).toBe(2);
  });

  it("fails with AuthFailed naming every refused secret when no entry is accepted", async () => {
    await createPullSecret(
      "ml",
      "all-wrong",
      "kubernetes.io/dockerconfigjson",
      dockerConfigJson({
        [basicRegistry.host]: { username: "alice", password: WRONG_PASSWORD },
        [`${basicRegistry.host}/team-a`]: { auth: b64(`alice:${WRONG_PASSWORD}`) },
      }),
    );
    const lookup = await provider.forModelImage("ml", [{ name: "all-wrong" }]);
    const err = await failure(
      clientWith(lookup).getManifest({ registry: basicRegistry.host, repository: "team-a/model" }, "v1"),
    );
    expect(err.reason).toBe("AuthFailed");
    expect(err.message).toContain(`pull secret "all-wrong" (${basicRegistry.host}/team-a)`);
    expect(err.message).toContain(`pull secret "all-wrong" (${basicRegistry.host})`);
  });

  it("keeps every secret value out of error messages and logs", () => {
    expect(messages.length).toBeGreaterThanOrEqual(8);
    expect(logLines.length).toBeGreaterThan(0);
    const rendered = [...messages, ...logLines].join("\n");
    for (const value of SECRET_VALUES) expect(rendered).not.toContain(value);
  });
});
