import { describe, expect, it } from "vitest";
import { Keyring, keyMatches, parseKeyringKey } from "../../src/auth/keyring.ts";

function matches(key: string, registry: string, repository = "team/model"): boolean {
  const parsed = parseKeyringKey(key);
  if (!parsed) throw new Error(`key ${key} did not parse`);
  return keyMatches(parsed, registry, repository);
}

describe("keyring matching (the kubelet's rules)", () => {
  it.each([
    // [key, registry, repository, matches]
    ["registry.example.com", "registry.example.com", "team/model", true],
    ["Registry.Example.com", "registry.example.com", "team/model", true],
    ["https://registry.example.com", "registry.example.com", "team/model", true],
    ["http://registry.example.com/", "registry.example.com", "team/model", true],
    ["https://registry.example.com/v2/", "registry.example.com", "team/model", true],
    ["registry.example.com", "other.example.com", "team/model", false],
    ["*.example.com", "a.example.com", "team/model", true],
    ["*.example.com", "a.b.example.com", "team/model", false],
    ["*.example.com", "example.com", "team/model", false],
    ["*.*.example.com", "a.b.example.com", "team/model", true],
    ["reg-*.example.com", "reg-eu.example.com", "team/model", true],
    ["reg-*.example.com", "mirror.example.com", "team/model", false],
    ["registry.example.com:5000", "registry.example.com:5000", "team/model", true],
    ["registry.example.com:5000", "registry.example.com:5001", "team/model", false],
    ["registry.example.com:5000", "registry.example.com", "team/model", false],
    ["registry.example.com", "registry.example.com:5000", "team/model", false],
    ["*.example.com:5000", "a.example.com:5000", "team/model", true],
    ["127.0.0.1:5000", "127.0.0.1:5000", "team/model", true],
    ["registry.example.com/team-a", "registry.example.com", "team-a/model", true],
    ["registry.example.com/team-a", "registry.example.com", "team-a/sub/model", true],
    ["registry.example.com/team-a", "registry.example.com", "team-a", true],
    ["registry.example.com/team-a", "registry.example.com", "team-b/model", false],
    ["registry.example.com/team-a", "registry.example.com", "team-ab/model", false],
    ["https://registry.example.com/v2/team-a/", "registry.example.com", "team-a/model", true],
    ["https://index.docker.io/v1/", "docker.io", "library/ubuntu", true],
    ["docker.io", "registry-1.docker.io", "library/ubuntu", true],
    ["index.docker.io", "docker.io", "library/ubuntu", true],
    ["registry-1.docker.io/nvidia", "docker.io", "nvidia/cuda", true],
    ["docker.io/nvidia", "index.docker.io", "library/ubuntu", false],
  ])("key %s applied to %s/%s: %s", (key, registry, repository, expected) => {
    expect(matches(key, registry, repository)).toBe(expected);
  });

  it("orders every match most specific first: longer path, then fewer globs, then the order added", () => {
    const keyring = new Keyring();
    keyring.add("*.example.com", { username: "glob" }, "s1");
    keyring.add("registry.example.com", { username: "host-first" }, "s1");
    keyring.add("registry.example.com/team-a", { username: "team" }, "s2");
    keyring.add("https://registry.example.com", { username: "host-second" }, "s2");
    keyring.add("registry.example.com/team-a/vision", { username: "vision" }, "s3");
    keyring.add("registry.example.com/team-b", { username: "other-team" }, "s3");
    keyring.add("registry.example.com:443", { username: "port" }, "s3");
    keyring.add("mirror.example.com", { username: "other-host" }, "s3");

    const users = (repository: string) =>
      keyring.lookup("registry.example.com", repository).map((match) => match.credentials.username);
    expect(users("team-a/vision/detector")).toEqual(["vision", "team", "host-first", "host-second", "glob"]);
    expect(users("team-a/llm")).toEqual(["team", "host-first", "host-second", "glob"]);
    expect(users("team-c/llm")).toEqual(["host-first", "host-second", "glob"]);
    // /v2/ (no repository) only gets keys without a path.
    expect(keyring.lookup("registry.example.com").map((match) => match.credentials.username)).toEqual([
      "host-first",
      "host-second",
      "glob",
    ]);
  });

  it("treats the Docker Hub aliases as one registry in keys and lookups", () => {
    const keyring = new Keyring();
    keyring.add("https://index.docker.io/v1/", { username: "hub-legacy" }, "s1");
    keyring.add("registry-1.docker.io", { username: "hub-api" }, "s1");
    for (const registry of ["docker.io", "index.docker.io", "registry-1.docker.io"]) {
      expect(keyring.lookup(registry, "library/ubuntu").map((match) => match.credentials.username)).toEqual([
        "hub-legacy",
        "hub-api",
      ]);
    }
  });
});
