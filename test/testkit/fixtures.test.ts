import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { startFaultProxy } from "../../testkit/faultProxy.ts";
import { freePort } from "../../testkit/ports.ts";
import { startRegistry } from "../../testkit/registry.ts";

const basic = (user: string, password: string) =>
  `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;

describe("freePort", () => {
  it("returns a port that can be bound on 127.0.0.1", async () => {
    const port = await freePort();
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", resolve);
    });
    await new Promise((resolve) => server.close(resolve));
  });
});

describe("startRegistry", () => {
  const scratch: string[] = [];
  afterAll(async () => {
    await Promise.all(scratch.map((dir) => rm(dir, { recursive: true, force: true })));
  });

  it("starts a registry whose access log lists the requests it served, and removes its temp dirs on stop", async () => {
    const registry = await startRegistry();
    expect((await fetch(`${registry.url}/v2/`)).status).toBe(200);
    expect((await fetch(`${registry.url}/v2/no/such/manifests/x`)).status).toBe(404);
    const requests = await registry.requests();
    expect(requests).toContainEqual({ method: "GET", path: "/v2/no/such/manifests/x", status: 404 });
    await registry.stop();
    expect(existsSync(registry.storageDir)).toBe(false);
  });

  it("keeps a caller-given storage dir across a restart", async () => {
    const storageDir = await mkdtemp(join(tmpdir(), "stowage-storage-"));
    scratch.push(storageDir);
    const first = await startRegistry({ storageDir });
    const put = await fetch(`${first.url}/v2/keep/me/manifests/v1`, {
      method: "PUT",
      headers: { "content-type": "application/vnd.oci.image.index.v1+json" },
      body: JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.index.v1+json",
        manifests: [],
      }),
    });
    expect(put.status).toBe(201);
    await first.stop();
    expect(existsSync(storageDir)).toBe(true);
    const second = await startRegistry({ storageDir });
    try {
      expect(
        (
          await fetch(`${second.url}/v2/keep/me/manifests/v1`, {
            method: "HEAD",
            headers: { accept: "application/vnd.oci.image.index.v1+json" },
          })
        ).status,
      ).toBe(200);
    } finally {
      await second.stop();
    }
  });

  it("checks htpasswd credentials", async () => {
    const registry = await startRegistry({ auth: "htpasswd", users: [{ username: "u", password: "p" }] });
    try {
      expect(
        (await fetch(`${registry.url}/v2/`, { headers: { authorization: basic("u", "p") } })).status,
      ).toBe(200);
      expect(
        (await fetch(`${registry.url}/v2/`, { headers: { authorization: basic("u", "x") } })).status,
      ).toBe(401);
    } finally {
      await registry.stop();
    }
  });

  it("verifies tokens from its issuer, which refuses wrong passwords and records scopes", async () => {
    const registry = await startRegistry({ auth: "token" });
    try {
      const challenge = (await fetch(`${registry.url}/v2/`)).headers.get("www-authenticate") ?? "";
      expect(challenge).toContain(`realm="${registry.tokenIssuer!.url}"`);
      const tokenUrl = `${registry.tokenIssuer!.url}?service=stowage-test-registry&scope=repository:a/b:pull`;
      expect((await fetch(tokenUrl, { headers: { authorization: basic("stowage", "bad") } })).status).toBe(
        401,
      );
      const issued = await fetch(tokenUrl, { headers: { authorization: basic("stowage", "s3cret") } });
      const body = (await issued.json()) as { token: string; access_token: string; expires_in: number };
      expect(body.access_token).toBe(body.token);
      const withToken = await fetch(`${registry.url}/v2/a/b/tags/list`, {
        headers: { authorization: `Bearer ${body.token}` },
      });
      // Past authentication: the repository simply does not exist yet.
      expect(withToken.status).toBe(404);
      const forged = `${body.token.slice(0, -4)}AAAA`;
      expect(
        (await fetch(`${registry.url}/v2/a/b/tags/list`, { headers: { authorization: `Bearer ${forged}` } }))
          .status,
      ).toBe(401);
      expect(registry.tokenIssuer!.requests()).toEqual([
        { scope: ["repository:a/b:pull"], account: "stowage" },
        { scope: ["repository:a/b:pull"], account: "stowage" },
      ]);
    } finally {
      await registry.stop();
    }
  });

  it("serves HTTPS with a certificate from the CA it exposes", async () => {
    const registry = await startRegistry({ tls: true });
    try {
      expect(registry.url.startsWith("https://")).toBe(true);
      expect(registry.caPem).toContain("BEGIN CERTIFICATE");
      await expect(fetch(`${registry.url}/v2/`)).rejects.toThrow();
    } finally {
      await registry.stop();
    }
  });
});

describe("startFaultProxy", () => {
  it("rewrites Location headers to point back through the proxy and applies rules the given number of times", async () => {
    const registry = await startRegistry();
    const proxy = await startFaultProxy(registry.url);
    try {
      const upload = await fetch(`${proxy.url}/v2/a/b/blobs/uploads/`, { method: "POST" });
      expect(upload.status).toBe(202);
      expect(upload.headers.get("location")?.startsWith(`${proxy.url}/v2/a/b/blobs/uploads/`)).toBe(true);

      proxy.addRule({
        match: { method: "GET", path: /^\/v2\/$/ },
        times: 2,
        action: { kind: "status", status: 503, retryAfterSeconds: 2 },
      });
      const first = await fetch(`${proxy.url}/v2/`);
      expect(first.status).toBe(503);
      expect(first.headers.get("retry-after")).toBe("2");
      expect((await fetch(`${proxy.url}/v2/`)).status).toBe(503);
      expect((await fetch(`${proxy.url}/v2/`)).status).toBe(200);

      proxy.addRule({ action: { kind: "dropAfterBytes", bytes: 1 } });
      await expect(fetch(`${proxy.url}/v2/`).then((r) => r.text())).rejects.toThrow();

      expect(proxy.seen().map((r) => `${r.method} ${r.path} ${r.status}`)).toEqual([
        "POST /v2/a/b/blobs/uploads/ 202",
        "GET /v2/ 503",
        "GET /v2/ 503",
        "GET /v2/ 200",
        "GET /v2/ 200",
      ]);
    } finally {
      await proxy.stop();
      await registry.stop();
    }
  });

  it("throttles each connection's response body to the link's rate, and the body arrives whole", async () => {
    const registry = await startRegistry();
    const proxy = await startFaultProxy(registry.url);
    try {
      const MiB = 1024 * 1024;
      const body = randomBytes(4 * MiB);
      const digest = `sha256:${createHash("sha256").update(body).digest("hex")}`;
      const upload = await fetch(`${registry.url}/v2/link/test/blobs/uploads/`, { method: "POST" });
      const location = new URL(upload.headers.get("location") ?? "", registry.url);
      location.searchParams.set("digest", digest);
      expect((await fetch(location, { method: "PUT", body })).status).toBe(201);

      proxy.addRule({
        times: Number.POSITIVE_INFINITY,
        action: { kind: "throttle", bytesPerSecond: 4 * MiB, latencyMs: 20 },
      });
      const started = performance.now();
      const response = await fetch(`${proxy.url}/v2/link/test/blobs/${digest}`);
      expect(response.status).toBe(200);
      const reader = (response.body as ReadableStream<Uint8Array>).getReader();
      const chunks: Uint8Array[] = [];
      let received = 0;
      let receivedEarly: number | undefined;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        chunks.push(value);
        received += value.length;
        // Whatever the machine's load, a 4 MiB/s link cannot have delivered more than 0.4 s
        // worth (plus one upstream chunk) 0.4 s in; unthrottled loopback delivers it all at once.
        if (receivedEarly === undefined && performance.now() - started >= 400)
          receivedEarly = received - value.length;
      }
      expect(receivedEarly).toBeDefined();
      expect(receivedEarly).toBeLessThanOrEqual(0.4 * 4 * MiB + 256 * 1024);
      expect(Buffer.concat(chunks).equals(body)).toBe(true);
      expect(proxy.seen().at(-1)?.fault).toBe("throttle");
    } finally {
      await proxy.stop();
      await registry.stop();
    }
  });
});
