import { describe, expect, it } from "vitest";
import {
  cacheRepository,
  familiarName,
  formatReference,
  parseReference,
  registryApiHost,
} from "../../src/oci/reference.ts";
import { StowageError } from "../../src/util/errors.ts";

const SHA = `sha256:${"a".repeat(64)}`;

function refusal(input: string): StowageError {
  try {
    parseReference(input);
  } catch (err) {
    expect(err).toBeInstanceOf(StowageError);
    expect((err as StowageError).reason).toBe("InvalidReference");
    return err as StowageError;
  }
  throw new Error(`expected "${input}" to be refused`);
}

describe("parseReference", () => {
  it("normalises a bare Docker Hub name to docker.io/library/NAME:latest", () => {
    expect(parseReference("alpine")).toEqual({
      registry: "docker.io",
      repository: "library/alpine",
      tag: "latest",
    });
    expect(formatReference(parseReference("alpine"))).toBe("docker.io/library/alpine:latest");
  });

  it("keeps a Docker Hub user repository and maps Docker Hub host aliases to docker.io", () => {
    expect(parseReference("nvidia/cuda:12.4")).toEqual({
      registry: "docker.io",
      repository: "nvidia/cuda",
      tag: "12.4",
    });
    expect(parseReference("index.docker.io/alpine:3").registry).toBe("docker.io");
    expect(parseReference("registry-1.docker.io/library/alpine").repository).toBe("library/alpine");
  });

  it("recognises host:port, localhost and bracketed IPv6 registries", () => {
    expect(parseReference("127.0.0.1:5000/foo/bar:v1")).toEqual({
      registry: "127.0.0.1:5000",
      repository: "foo/bar",
      tag: "v1",
    });
    expect(parseReference("localhost/foo").registry).toBe("localhost");
    expect(parseReference("[::1]:5000/foo:x").registry).toBe("[::1]:5000");
    expect(parseReference("nvcr.io/nvidia/tritonserver:24.08-py3").repository).toBe("nvidia/tritonserver");
  });

  it("keeps both tag and digest, and sets no tag for a digest-only reference", () => {
    expect(parseReference(`ghcr.io/acme/x:1.2@${SHA}`)).toEqual({
      registry: "ghcr.io",
      repository: "acme/x",
      tag: "1.2",
      digest: SHA,
    });
    expect(parseReference(`alpine@${SHA}`)).toEqual({
      registry: "docker.io",
      repository: "library/alpine",
      digest: SHA,
    });
  });

  it("refuses uppercase repositories, naming the component", () => {
    expect(refusal("docker.io/Foo/bar").message).toContain('"Foo"');
    expect(refusal("docker.io/Foo/bar").message).toContain("lowercase");
  });

  it("refuses digests of the wrong length or algorithm and says which", () => {
    expect(refusal(`alpine@sha256:${"a".repeat(63)}`).message).toContain("64 hex characters, got 63");
    expect(refusal(`alpine@md5:${"a".repeat(32)}`).message).toContain('"md5"');
    expect(refusal(`alpine@sha256:${"A".repeat(64)}`).message).toContain("lowercase hex");
  });

  it("refuses empty path components, bad separators, bad tags and bad hosts", () => {
    expect(refusal("Foo//bar").message).toMatch(/^invalid reference "Foo\/\/bar": /);
    expect(refusal("foo//bar").message).toContain("empty path component");
    expect(refusal("foo/-bar").message).toContain('"-bar"');
    expect(refusal("foo:-x").message).toContain('tag "-x"');
    expect(refusal(`foo:${"t".repeat(129)}`).message).toContain("tag");
    expect(refusal("-bad.io/foo").message).toContain('registry host "-bad.io"');
    expect(refusal("").message).toContain("empty");
  });

  it("round-trips canonical references through format and parse", () => {
    for (const canonical of [
      "docker.io/library/alpine:latest",
      "127.0.0.1:5000/a/b/c:v1",
      `ghcr.io/acme/x:1@${SHA}`,
      `ghcr.io/acme/x@${SHA}`,
    ]) {
      expect(formatReference(parseReference(canonical))).toBe(canonical);
    }
  });

  it("gives the familiar short name people type", () => {
    expect(familiarName(parseReference("alpine"))).toBe("alpine:latest");
    expect(familiarName(parseReference("nvidia/cuda:12"))).toBe("nvidia/cuda:12");
    expect(familiarName(parseReference("ghcr.io/a/b:1"))).toBe("ghcr.io/a/b:1");
  });
});

describe("cacheRepository", () => {
  it("stores an upstream image under HOST/PATH, with host_port for a port", () => {
    expect(cacheRepository(parseReference("alpine"))).toBe("docker.io/library/alpine");
    expect(cacheRepository(parseReference("127.0.0.1:5000/foo/bar:1"))).toBe("127.0.0.1_5000/foo/bar");
    expect(cacheRepository(parseReference("nvcr.io/nvidia/tritonserver:24.08-py3"))).toBe(
      "nvcr.io/nvidia/tritonserver",
    );
  });

  it("produces a valid repository name for IPv6 and uppercase hosts", () => {
    const fromIpv6 = cacheRepository(parseReference("[::1]:5000/foo:x"));
    expect(parseReference(`cache.local/${fromIpv6}`).repository).toBe(fromIpv6);
    expect(cacheRepository(parseReference("Registry.Example.COM/foo"))).toBe("registry.example.com/foo");
  });
});

describe("registryApiHost", () => {
  it("sends Docker Hub API calls to registry-1.docker.io and leaves other hosts alone", () => {
    expect(registryApiHost("docker.io")).toBe("registry-1.docker.io");
    expect(registryApiHost("ghcr.io")).toBe("ghcr.io");
    expect(registryApiHost("127.0.0.1:5000")).toBe("127.0.0.1:5000");
  });
});
