import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  credentialsFromDockerConfig,
  defaultDockerConfigPath,
  loadDockerConfig,
  parseDockerConfig,
} from "../../src/auth/dockerConfig.ts";
import { StowageError } from "../../src/util/errors.ts";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "stowage-dockercfg-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const b64 = (text: string) => Buffer.from(text).toString("base64");

async function configFile(name: string, content: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, content);
  return file;
}

function refusal(run: () => unknown): StowageError {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(StowageError);
    expect((err as StowageError).reason).toBe("AuthConfigInvalid");
    return err as StowageError;
  }
  throw new Error("expected AuthConfigInvalid");
}

describe("loadDockerConfig", () => {
  it("reads auths entries and finds credentials by host however the key is spelled", async () => {
    const file = await configFile(
      "config.json",
      JSON.stringify({
        auths: {
          "https://index.docker.io/v1/": { auth: b64("hubuser:hub:pass") },
          "ghcr.io": { username: "octo", password: "ghp_x" },
          "https://nvcr.io/v2/": { auth: b64("$oauthtoken:ngc-key") },
          "127.0.0.1:5000": { identitytoken: "refresh-me" },
          "quay.io": { registrytoken: "bearer-x" },
        },
      }),
    );
    const lookup = credentialsFromDockerConfig(await loadDockerConfig(file));
    expect(await lookup("docker.io")).toEqual({ username: "hubuser", password: "hub:pass" });
    expect(await lookup("registry-1.docker.io")).toEqual({ username: "hubuser", password: "hub:pass" });
    expect(await lookup("ghcr.io")).toEqual({ username: "octo", password: "ghp_x" });
    expect(await lookup("nvcr.io")).toEqual({ username: "$oauthtoken", password: "ngc-key" });
    expect(await lookup("127.0.0.1:5000")).toEqual({ identityToken: "refresh-me" });
    expect(await lookup("quay.io")).toEqual({ registryToken: "bearer-x" });
    expect(await lookup("example.com")).toBeUndefined();
  });

  it("treats a missing file as an empty config", async () => {
    const config = await loadDockerConfig(join(dir, "does-not-exist.json"));
    expect(await credentialsFromDockerConfig(config)("docker.io")).toBeUndefined();
  });

  it("defaults to $DOCKER_CONFIG/config.json, else ~/.docker/config.json", () => {
    expect(defaultDockerConfigPath({ DOCKER_CONFIG: "/etc/creds" })).toBe("/etc/creds/config.json");
    expect(defaultDockerConfigPath({})).toMatch(/\.docker\/config\.json$/);
  });

  it("refuses invalid JSON with AuthConfigInvalid naming the file", async () => {
    const file = await configFile("broken.json", "{ not json");
    const err = await loadDockerConfig(file).catch((e: unknown) => e);
    expect((err as StowageError).reason).toBe("AuthConfigInvalid");
    expect((err as StowageError).message).toContain(file);
  });

  it("refuses an auth field that is not base64 of user:password, naming the file and entry", async () => {
    const file = await configFile(
      "badauth.json",
      JSON.stringify({ auths: { "ghcr.io": { auth: "!!!notbase64" } } }),
    );
    const err = await loadDockerConfig(file).catch((e: unknown) => e);
    expect((err as StowageError).reason).toBe("AuthConfigInvalid");
    expect((err as StowageError).message).toContain(file);
    expect((err as StowageError).message).toContain('"ghcr.io"');
    const noColon = refusal(() =>
      parseDockerConfig(JSON.stringify({ auths: { x: { auth: b64("nocolon") } } }), "secret ml/ngc"),
    );
    expect(noColon.message).toContain("secret ml/ngc");
  });
});

describe("credential helpers", () => {
  it("says a credential helper is not supported only for a host with no other credentials", async () => {
    const config = parseDockerConfig(
      JSON.stringify({
        auths: { "ghcr.io": { auth: b64("a:b") } },
        credHelpers: { "ghcr.io": "gh", "123456789012.dkr.ecr.us-east-1.amazonaws.com": "ecr-login" },
        credsStore: "desktop",
      }),
      "/home/u/.docker/config.json",
    );
    const lookup = credentialsFromDockerConfig(config);
    expect(await lookup("ghcr.io")).toEqual({ username: "a", password: "b" });
    const err = refusal(() => lookup("123456789012.dkr.ecr.us-east-1.amazonaws.com"));
    expect(err.message).toContain('"docker-credential-ecr-login"');
    expect(err.message).toContain("/home/u/.docker/config.json");
    expect(await lookup("docker.io")).toBeUndefined();
  });
});
