import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EcrAuth, parseEcrHost } from "../../src/auth/ecr.ts";
import { type CredentialProvider, createCredentialProvider } from "../../src/auth/index.ts";
import { Resources } from "../../src/kube/client.ts";
import { Copier } from "../../src/oci/copy.ts";
import { parseReference } from "../../src/oci/reference.ts";
import { type CredentialLookup, RegistryClient } from "../../src/oci/registry.ts";
import type { StowageError } from "../../src/util/errors.ts";
import { type FakeEcrOptions, type RunningFakeEcr, startFakeEcr } from "../../testkit/fakeEcr.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { FakeClock } from "../kube/fakeClock.ts";
import { createNamespace, startCluster, type TestCluster } from "../kube/helpers.ts";
import { failure as expectFailure } from "../support/failure.ts";

const ACCESS_KEY_ID = "AKIAFAKEFAKEFAKE0001";
const SECRET_ACCESS_KEY = "aws-secret-9d0c4f1b";
const ECR_PASSWORD = "ecr-pw-3a6e9b5d";
const ACCOUNT = "123456789012";
const REGION = "eu-west-1";

const savedEnv = { ...process.env };
let cluster: TestCluster;
let kube: Awaited<ReturnType<typeof startCluster>>["client"];
let upstream: RunningRegistry;
let cache: RunningRegistry;
let fakeEcr: RunningFakeEcr;
const fakes: RunningFakeEcr[] = [];
const closers: { close(): Promise<void> }[] = [];
const logLines: string[] = [];
const messages: string[] = [];
const logger = pino(
  { level: "trace" },
  new Writable({
    write(chunk, _encoding, done) {
      logLines.push(String(chunk));
      done();
    },
  }),
);

async function ecrFake(options: Partial<FakeEcrOptions> = {}): Promise<RunningFakeEcr> {
  const fake = await startFakeEcr({
    accessKeyId: ACCESS_KEY_ID,
    secretAccessKey: SECRET_ACCESS_KEY,
    accountId: ACCOUNT,
    password: ECR_PASSWORD,
    ...options,
  });
  fakes.push(fake);
  return fake;
}

/** The test registries listen on 127.0.0.1; this says which of them play ECR. */
function ecrHosts(...hosts: string[]) {
  return (registry: string) =>
    hosts.includes(registry) ? { registryId: ACCOUNT, region: REGION } : parseEcrHost(registry);
}

function clientWith(credentials: CredentialLookup): RegistryClient {
  const client = new RegistryClient({
    credentials,
    insecureHosts: [upstream.host, cache.host],
    retry: { attempts: 2, baseDelayMs: 1 },
    logger,
  });
  closers.push(client);
  return client;
}

/** The StowageError, with its message kept for the no-secret-in-messages check. */
async function failure(promise: Promise<unknown>): Promise<StowageError> {
  const err = await expectFailure(promise);
  messages.push(err.message);
  return err;
}

beforeAll(async () => {
  // The SDK's default chain finds these first; no instance metadata lookups leave the machine.
  process.env.AWS_ACCESS_KEY_ID = ACCESS_KEY_ID;
  process.env.AWS_SECRET_ACCESS_KEY = SECRET_ACCESS_KEY;
  process.env.AWS_EC2_METADATA_DISABLED = "true";
  delete process.env.AWS_PROFILE;
  delete process.env.AWS_SESSION_TOKEN;
  [{ cluster, client: kube }, upstream, cache, fakeEcr] = await Promise.all([
    startCluster(),
    startRegistry({ auth: "htpasswd", users: [{ username: "AWS", password: ECR_PASSWORD }] }),
    startRegistry({ auth: "htpasswd", users: [{ username: "AWS", password: ECR_PASSWORD }] }),
    ecrFake(),
  ]);
  await createNamespace(kube, "ml");
  const owner = new RegistryClient({
    credentials: () => ({ username: "AWS", password: ECR_PASSWORD }),
    insecureHosts: [upstream.host],
  });
  await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "models/llama" }, "v1");
  await owner.close();
}, 60_000);

afterAll(async () => {
  await Promise.all(closers.map((closer) => closer.close()));
  await Promise.all([cluster?.stop(), upstream?.stop(), cache?.stop(), ...fakes.map((fake) => fake.stop())]);
  process.env = savedEnv;
});

describe("ECR", () => {
  it.each([
    [
      "123456789012.dkr.ecr.us-east-1.amazonaws.com",
      { registryId: "123456789012", region: "us-east-1", fips: false },
    ],
    [
      "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
      { registryId: "123456789012", region: "us-gov-west-1", fips: true },
    ],
    [
      "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
      { registryId: "123456789012", region: "cn-north-1", fips: false },
    ],
    ["public.ecr.aws", undefined],
    ["123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example", undefined],
    ["ghcr.io", undefined],
  ])("reads account and region from the host %s", (host, expected) => {
    expect(parseEcrHost(host)).toEqual(expected);
  });

  it("fetches one token for many concurrent and later lookups, signed with the env credentials", async () => {
    const fake = await ecrFake();
    const ecr = new EcrAuth({ endpoint: fake.endpoint, resolveRegistry: ecrHosts("ecr.test"), logger });
    closers.push(ecr);
    const answers = await Promise.all(Array.from({ length: 10 }, () => ecr.credentials("ecr.test")));
    for (const answer of answers) expect(answer).toMatchObject({ username: "AWS", password: ECR_PASSWORD });
    expect(await ecr.credentials("ecr.test")).toMatchObject({ username: "AWS", password: ECR_PASSWORD });
    expect(fake.calls("GetAuthorizationToken")).toEqual([
      { operation: "GetAuthorizationToken", body: {}, accessKeyId: ACCESS_KEY_ID, region: REGION },
    ]);
    expect(await ecr.credentials("ghcr.io")).toBeUndefined();
    expect(fake.calls()).toHaveLength(1);
  });

  it("fetches a new token once the cached one is within five minutes of expiring", async () => {
    const clock = new FakeClock(Date.parse("2026-11-26T12:00:00Z"));
    let issued = 0;
    const fake = await ecrFake({
      now: () => clock.now(),
      tokenLifetimeSeconds: 3600,
      password: () => `${ECR_PASSWORD}-${++issued}`,
    });
    const ecr = new EcrAuth({ endpoint: fake.endpoint, resolveRegistry: ecrHosts("ecr.test"), clock });
    closers.push(ecr);
    expect((await ecr.credentials("ecr.test"))?.password).toBe(`${ECR_PASSWORD}-1`);
    await clock.advance(54 * 60_000);
    expect((await ecr.credentials("ecr.test"))?.password).toBe(`${ECR_PASSWORD}-1`);
    expect(fake.calls("GetAuthorizationToken")).toHaveLength(1);
    await clock.advance(60_000 + 1);
    expect((await ecr.credentials("ecr.test"))?.password).toBe(`${ECR_PASSWORD}-2`);
    expect(fake.calls("GetAuthorizationToken")).toHaveLength(2);
  });

  it("keeps using a still-valid token when renewing it fails, and fails with AuthFailed once it has expired", async () => {
    const clock = new FakeClock(Date.parse("2026-11-26T12:00:00Z"));
    const fake = await ecrFake({ now: () => clock.now(), tokenLifetimeSeconds: 3600 });
    const ecr = new EcrAuth({
      endpoint: fake.endpoint,
      resolveRegistry: ecrHosts("ecr.test"),
      clock,
      logger,
    });
    closers.push(ecr);
    await ecr.credentials("ecr.test");
    await clock.advance(57 * 60_000);
    fake.failNext("GetAuthorizationToken", "AccessDeniedException", { times: 2 });
    expect(await ecr.credentials("ecr.test")).toMatchObject({ username: "AWS", password: ECR_PASSWORD });
    await clock.advance(3 * 60_000 + 1);
    const err = await failure(ecr.credentials("ecr.test"));
    expect(err.reason).toBe("AuthFailed");
    expect(err.message).toContain("AccessDeniedException");
    expect(fake.calls("GetAuthorizationToken")).toHaveLength(3);
  });

  it("mirrors from an ECR upstream as AWS with the token, after a pull secret for the host is refused", async () => {
    await kube.resource(Resources.Secret).create({
      metadata: { name: "stale", namespace: "ml" },
      type: "kubernetes.io/dockerconfigjson",
      data: {
        ".dockerconfigjson": Buffer.from(
          JSON.stringify({ auths: { [upstream.host]: { username: "AWS", password: "expired-ecr-pw" } } }),
        ).toString("base64"),
      },
    } as never);
    const provider: CredentialProvider = createCredentialProvider({
      kube,
      ecr: { endpoint: fakeEcr.endpoint, resolveRegistry: ecrHosts(upstream.host, cache.host) },
      logger,
    });
    closers.push(provider);
    const lookup = await provider.forModelImage("ml", [{ name: "stale" }]);
    const labels = ((await lookup(upstream.host, "models/llama")) as { label?: string }[]).map(
      (c) => c.label,
    );
    expect(labels).toEqual([`pull secret "stale" (${upstream.host})`, `ECR token (${REGION})`, undefined]);

    await provider.ensureRepository(cache.host, "mirror/models/llama");
    const result = await new Copier({ client: clientWith(lookup), logger }).copy(
      parseReference(`${upstream.host}/models/llama:v1`),
      parseReference(`${cache.host}/mirror/models/llama:v1`),
    );
    const cached = await clientWith(provider.forCache()).getManifest(
      { registry: cache.host, repository: "mirror/models/llama" },
      "v1",
    );
    expect(cached.digest).toBe(result.sourceDigest);
    expect(fakeEcr.repositories()).toContain("mirror/models/llama");
    // The manifest GET was refused without credentials, then with the stale secret, then accepted.
    const manifestGets = (await upstream.requests()).filter(
      (r) => r.method === "GET" && r.path === "/v2/models/llama/manifests/v1",
    );
    expect(manifestGets.map((r) => r.status).slice(0, 3)).toEqual([401, 401, 200]);
  });

  it("creates a cache repository once, treats an existing one as success and skips registries that are not ECR", async () => {
    const fake = await ecrFake({ repositories: ["already/there"] });
    const provider = createCredentialProvider({
      kube,
      ecr: { endpoint: fake.endpoint, resolveRegistry: ecrHosts("ecr.test") },
      logger,
    });
    closers.push(provider);
    await Promise.all([
      provider.ensureRepository("ecr.test", "stowage/nvidia/cuda"),
      provider.ensureRepository("ecr.test", "stowage/nvidia/cuda"),
    ]);
    await provider.ensureRepository("ecr.test", "stowage/nvidia/cuda");
    await provider.ensureRepository("ecr.test", "already/there");
    await provider.ensureRepository("ghcr.io", "anything");
    expect(fake.calls("CreateRepository").map((call) => call.body)).toEqual([
      { repositoryName: "stowage/nvidia/cuda", registryId: ACCOUNT },
      { repositoryName: "already/there", registryId: ACCOUNT },
    ]);
    expect(fake.repositories().sort()).toEqual(["already/there", "stowage/nvidia/cuda"]);
  });

  it("fails with AuthFailed, quoting no secret, when AWS refuses the request signature", async () => {
    const ecr = new EcrAuth({
      endpoint: fakeEcr.endpoint,
      resolveRegistry: ecrHosts("ecr.test"),
      awsCredentials: { accessKeyId: ACCESS_KEY_ID, secretAccessKey: "not-the-secret-key" },
      maxAttempts: 1,
    });
    closers.push(ecr);
    const err = await failure(ecr.credentials("ecr.test"));
    expect(err.reason).toBe("AuthFailed");
    expect(err.message).toContain("InvalidSignatureException");
    expect(err.message).toContain("ecr.test");
  });

  it("keeps the token and AWS secret out of error messages and logs", () => {
    expect(logLines.length).toBeGreaterThan(0);
    const rendered = [...messages, ...logLines].join("\n");
    for (const value of [
      ECR_PASSWORD,
      SECRET_ACCESS_KEY,
      "not-the-secret-key",
      Buffer.from(`AWS:${ECR_PASSWORD}`).toString("base64"),
    ]) {
      expect(rendered).not.toContain(value);
    }
  });
});
