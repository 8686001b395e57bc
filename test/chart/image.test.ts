/**
 * The container image (Dockerfile) holds bin/, src/ and production dependencies only. This checks,
 * without a Docker engine, what the image needs against what it copies: every module the `stowage`
 * entry point can load resolves inside bin/ or src/, or is a production dependency.
 * test/image/image.test.ts builds and runs the image for real.
 */
import { existsSync, readFileSync } from "node:fs";
import { builtinModules } from "node:module";
import { dirname, join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { root } from "../e2e/helpers.ts";

const dockerfile = readFileSync(join(root, "Dockerfile"), "utf8");
const packageJson = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
  dependencies: Record<string, string>;
};

/** Every file reachable by static and dynamic imports from `entry`, and the packages they name. */
function reachable(entry: string): { files: Set<string>; packages: Set<string> } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const visit = (file: string) => {
    if (files.has(file)) return;
    files.add(file);
    const source = readFileSync(file, "utf8");
    const specifiers = [
      ...source.matchAll(/(?:import|export)\s[^;]*?from\s+"([^"]+)"/g),
      ...source.matchAll(/import\(\s*"([^"]+)"\s*\)/g),
      // side-effect imports: `import "reflect-metadata";`
      ...source.matchAll(/^import\s+"([^"]+)"/gm),
    ].map((m) => m[1]);
    for (const specifier of specifiers) {
      if (specifier.startsWith(".")) visit(resolve(dirname(file), specifier));
      else if (!specifier.startsWith("node:") && !builtinModules.includes(specifier)) {
        const name = specifier.startsWith("@")
          ? specifier.split("/").slice(0, 2).join("/")
          : specifier.split("/")[0];
        packages.add(name);
      }
    }
  };
  visit(entry);
  return { files, packages };
}

describe("container image", () => {
  it("contains every module `stowage` loads: sources under bin/ and src/, packages from production dependencies", () => {
    const { files, packages } = reachable(join(root, "bin/stowage.js"));
    expect(files.size).toBeGreaterThan(30);
    const outside = [...files].map((f) => relative(root, f)).filter((f) => !/^(bin|src)\//.test(f));
    expect(outside).toEqual([]);
    expect([...files].filter((f) => !existsSync(f))).toEqual([]);
    const notProduction = [...packages].filter((name) => !(name in packageJson.dependencies));
    expect(notProduction).toEqual([]);
  });

  it("ships no production dependency that `stowage` never loads (test-only packages stay dev dependencies)", () => {
    const { packages } = reachable(join(root, "bin/stowage.js"));
    const unused = Object.keys(packageJson.dependencies).filter((name) => !packages.has(name));
    expect(unused).toEqual([]);
  });

  it("is built in stages, with production dependencies only, sources outside node_modules, as non-root without a shell", () => {
    expect(dockerfile.match(/^FROM /gm)?.length).toBeGreaterThanOrEqual(2);
    expect(dockerfile).toMatch(/^RUN npm ci --omit=dev/m);
    // The bases are build arguments (test/image builds with local ones); users get distroless.
    expect(dockerfile).toMatch(/^ARG RUNTIME_IMAGE=gcr\.io\/distroless\/nodejs24-debian12:nonroot$/m);
    expect(dockerfile).toMatch(/^FROM \$\{RUNTIME_IMAGE\}$/m);
    expect(dockerfile).toMatch(/^COPY src \.\/src$/m);
    expect(dockerfile).toMatch(/^COPY bin \.\/bin$/m);
    expect(dockerfile).toMatch(/^USER 65532:65532$/m);
    expect(dockerfile).toMatch(/^ENTRYPOINT \["\/nodejs\/bin\/node", "\/app\/bin\/stowage\.js"\]$/m);
    const ignore = readFileSync(join(root, ".dockerignore"), "utf8");
    for (const kept of ["!package.json", "!package-lock.json", "!bin/", "!src/"])
      expect(ignore).toContain(kept);
  });
});
