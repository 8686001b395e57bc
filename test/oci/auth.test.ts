import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { credentialsFromDockerConfig, loadDockerConfig } from "../../src/auth/dockerConfig.ts";
import { mergeScopes, parseChallenges } from "../../src/oci/challenge.ts";
import { type Credentials, digestOf, RegistryClient, type RepoRef } from "../../src/oci/registry.ts";
import { type Descriptor, MediaType } from "../../src/oci/types.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { type RunningRegistry, startRegistry, TOKEN_SERVICE } from "../../testkit/registry.ts";
import { failure } from "../support/failure.ts";

const clients: RegistryClient[] = [];
function clientFor(registry: RunningRegistry, credentials?: Credentials): RegistryClient {
  const client = new RegistryClient({
    insecureHosts: [registry.host],
    credentials: credentials ? () => credentials : undefined,
    retry: { attempts: 2, baseDelayMs: 1 },
  });
  clients.push(client);
  return client;
}

function blob(size: number): { descriptor: Descriptor; bytes: Buffer } {
  const bytes = randomBytes(size);
  return { descriptor: { mediaType: MediaType.OciLayerTar, digest: digestOf(bytes), size }, bytes };
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

afterAll(async () => {
  await Promise.all(clients.map((client) => client.close()));
});

describe("challenges", () => {
  it("parses Bearer and Basic challenges, quoted commas included, and merges scopes however actions are ordered", () => {
    expect(
      parseChallenges(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push",error="insufficient_scope"',
      ),
    ).toEqual([
      {
        scheme: "bearer",
        params: {
          realm: "https://auth.example/token",
          service: "registry.example",
          scope: "repository:a/b:pull,push",
          error: "insufficient_scope",
        },
      },
    ]);
    expect(mergeScopes(["repository:b:push,pull", "repository:a:pull", "repository:b:pull,push"])).toEqual([
      "repository:a:pull",
      "repository:b:pull,push",
    ]);
    expect(parseChallenges('Basic realm="x", Bearer realm="y",service=z')).toEqual([
      { scheme: "basic", params: { realm: "x" } },
      { scheme: "bearer", params: { realm: "y", service: "z" } },
    ]);
  });
});

describe("htpasswd (Basic) registry", () => {
  let registry: RunningRegistry;
  beforeAll(async () => {
    registry = await startRegistry({ auth: "htpasswd" });
  });
  afterAll(async () => registry?.stop());

  it("pushes and pulls with the right credentials", async () => {
    const client = clientFor(registry, registry.users[0]);
    const repo: RepoRef = { registry: registry.host, repository: "basic/ok" };
    const content = blob(20_000);
    await client.ping(registry.host);
    await client.pushBlob(repo, content.descriptor, () => Readable.from([content.bytes]));
    expect((await readAll(client.getBlob(repo, content.descriptor))).equals(content.bytes)).toBe(true);
  });

  it("fails with AuthFailed naming the host when the password is wrong", async () => {
    const client = clientFor(registry, { username: "stowage", password: "wrong" });
    const err = await failure(
      client.hasBlob({ registry: registry.host, repository: "basic/ok" }, digestOf(Buffer.from("x"))),
    );
    expect(err.reason).toBe("AuthFailed");
    expect(err.message).toContain(`authentication to ${registry.host} failed`);
    expect(err.retryable).toBe(false);
  });

  it("fails with AuthFailed saying no credentials are configured when it has none", async () => {
    const client = clientFor(registry);
    const err = await failure(client.getManifest({ registry: registry.host, repository: "basic/ok" }, "v1"));
    expect(err.reason).toBe("AuthFailed");
    expect(err.message).toContain(`no credentials configured for ${registry.host}`);
  });

  it("uses credentials from a docker config.json whose key is a URL", async () => {
    const dir = await mkdtemp(join(tmpdir(), "stowage-authfile-"));
    try {
      const file = join(dir, "config.json");
      const auth = Buffer.from(`${registry.users[0].username}:${registry.users[0].password}`).toString(
        "base64",
      );
      await writeFile(file, JSON.stringify({ auths: { [`http://${registry.host}/v2/`]: { auth } } }));
      const client = new RegistryClient({
        insecureHosts: [registry.host],
        credentials: credentialsFromDockerConfig(await loadDockerConfig(file)),
      });
      clients.push(client);
      await client.ping(registry.host);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("redirects", () => {
  let guarded: RunningRegistry;
  let storage: RunningRegistry;
  let front: FaultProxy;
  let objectStore: FaultProxy;
  beforeAll(async () => {
    [guarded, storage] = await Promise.all([startRegistry({ auth: "htpasswd" }), startRegistry()]);
    front = await startFaultProxy(guarded.url);
    objectStore = await startFaultProxy(storage.url);
  });
  afterAll(async () => {
    await Promise.all([front?.stop(), objectStore?.stop()]);
    await Promise.all([guarded?.stop(), storage?.stop()]);
  });

  it("follows a blob redirect to another origin without sending it the Authorization header", async () => {
    const content = blob(30_000);
    const repo = "redirect/blob";
    const open = () => Readable.from([content.bytes]);
    await clientFor(guarded, guarded.users[0]).pushBlob(
      { registry: guarded.host, repository: repo },
      content.descriptor,
      open,
    );
    // The "object storage" origin holds the same bytes under the same path.
    await clientFor(storage).pushBlob({ registry: storage.host, repository: repo }, content.descriptor, open);
    front.addRule({
      match: { method: "GET", path: /\/blobs\/sha256:/ },
      action: { kind: "redirect", to: objectStore.url },
    });

    const client = new RegistryClient({ insecureHosts: [front.host], credentials: () => guarded.users[0] });
    clients.push(client);
    await client.ping(front.host);
    const fetched = await readAll(
      client.getBlob({ registry: front.host, repository: repo }, content.descriptor),
    );
    expect(fetched.equals(content.bytes)).toBe(true);
    const redirected = front.seen().filter((r) => r.fault === "redirect");
    expect(redirected.map((r) => [r.status, r.authorized])).toEqual([[307, true]]);
    expect(objectStore.seen().map((r) => [r.method, r.status, r.authorized])).toEqual([["GET", 200, false]]);
  });
});

describe("token registry", () => {
  let registry: RunningRegistry;
  beforeAll(async () => {
    registry = await startRegistry({ auth: "token" });
  });
  afterAll(async () => registry?.stop());

  it("pushes and pulls with a token fetched with the right credentials, reusing cached tokens", async () => {
    const client = clientFor(registry, registry.users[0]);
    const repo: RepoRef = { registry: registry.host, repository: "token/cached" };
    const first = blob(10_000);
    const second = blob(11_000);
    await client.pushBlob(repo, first.descriptor, () => Readable.from([first.bytes]));
    await client.pushBlob(repo, second.descriptor, () => Readable.from([second.bytes]));
    expect(await client.hasBlob(repo, first.descriptor.digest)).toBe(10_000);
    expect(await client.hasBlob(repo, second.descriptor.digest)).toBe(11_000);
    expect((await readAll(client.getBlob(repo, second.descriptor))).equals(second.bytes)).toBe(true);

    const issued = registry
      .tokenIssuer!.requests()
      .filter((r) => r.scope.some((s) => s.includes("token/cached")));
    // One token for pull,push and one for pull, each fetched once despite several requests.
    expect(
      issued.map((r) => r.scope),
      JSON.stringify(registry.tokenIssuer!.requests()),
    ).toEqual([["repository:token/cached:pull,push"], ["repository:token/cached:pull"]]);
    expect(issued.every((r) => r.account === "stowage")).toBe(true);
  });

  it("fetches a new token once the cached one has expired", async () => {
    let now = Date.now();
    const client = new RegistryClient({
      insecureHosts: [registry.host],
      credentials: () => registry.users[0],
      clock: { now: () => now, sleep: async () => {} },
    });
    clients.push(client);
    const repo: RepoRef = { registry: registry.host, repository: "token/expiry" };
    const digest = digestOf(Buffer.from("absent"));
    const issuedFor = () =>
      registry.tokenIssuer!.requests().filter((r) => r.scope.includes("repository:token/expiry:pull")).length;
    await client.hasBlob(repo, digest);
    await client.hasBlob(repo, digest);
    expect(issuedFor()).toBe(1);
    now += 301_000; // the issuer's tokens live 300 s
    await client.hasBlob(repo, digest);
    expect(issuedFor()).toBe(2);
  });

  it("asks for the source repository's pull scope when mounting", async () => {
    const client = clientFor(registry, registry.users[0]);
    const content = blob(5_000);
    await client.pushBlob({ registry: registry.host, repository: "token/source" }, content.descriptor, () =>
      Readable.from([content.bytes]),
    );
    const mounted = await client.mountBlob(
      { registry: registry.host, repository: "token/target" },
      content.descriptor.digest,
      "token/source",
    );
    expect(mounted).toBe(true);
    const scopes = registry.tokenIssuer!.requests().map((r) => r.scope);
    expect(scopes).toContainEqual(["repository:token/source:pull", "repository:token/target:pull,push"]);
  });

  it("refuses an anonymous pull with AuthFailed", async () => {
    const client = clientFor(registry);
    const err = await failure(
      client.getManifest({ registry: registry.host, repository: "token/cached" }, "v1"),
    );
    expect(err.reason).toBe("AuthFailed");
    expect(err.message).toContain(registry.host);
  });

  it("reports the token server's refusal of a wrong password as AuthFailed", async () => {
    const client = clientFor(registry, { username: "stowage", password: "nope" });
    const err = await failure(client.ping(registry.host));
    expect(err.reason).toBe("AuthFailed");
    expect(err.message).toBe(`authentication to ${registry.host} failed: invalid username or password`);
  });

  it("exchanges an identity (refresh) token for access tokens through the oauth2 POST flow", async () => {
    const realm = registry.tokenIssuer!.url;
    const login = await fetch(realm, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "password",
        username: "stowage",
        password: "s3cret",
        service: TOKEN_SERVICE,
        access_type: "offline",
        client_id: "test",
      }),
    });
    const { refresh_token: refreshToken } = (await login.json()) as { refresh_token: string };
    const client = clientFor(registry, { identityToken: refreshToken });
    const content = blob(3_000);
    const repo: RepoRef = { registry: registry.host, repository: "token/identity" };
    await client.pushBlob(repo, content.descriptor, () => Readable.from([content.bytes]));
    expect(await client.hasBlob(repo, content.descriptor.digest)).toBe(3_000);
  });
});

describe("token registry with public pulls", () => {
  let registry: RunningRegistry;
  beforeAll(async () => {
    registry = await startRegistry({ auth: "token", anonymousPull: true });
  });
  afterAll(async () => registry?.stop());

  it("lets anonymous clients pull but not push", async () => {
    const owner = clientFor(registry, registry.users[0]);
    const repo: RepoRef = { registry: registry.host, repository: "public/image" };
    const content = blob(4_000);
    await owner.pushBlob(repo, content.descriptor, () => Readable.from([content.bytes]));

    const anonymous = clientFor(registry);
    expect((await readAll(anonymous.getBlob(repo, content.descriptor))).equals(content.bytes)).toBe(true);
    const other = blob(100);
    const err = await failure(anonymous.pushBlob(repo, other.descriptor, () => Readable.from([other.bytes])));
    expect(err.reason).toBe("AuthFailed");
  });
});
