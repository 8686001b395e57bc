/**
 * `stowage <command>`: a thin dispatcher. Each command lives with its idea and is loaded on
 * demand, so `stowage --help` starts fast and one command's dependencies never slow another.
 */
type Command = { summary: string; run: (args: string[]) => Promise<number> };

const commands: Record<string, Command> = {
  mirror: {
    summary: "copy an image (or index) from one registry to another, verified by digest",
    run: async (args) => (await import("./oci/mirrorCommand.ts")).runMirror(args),
  },
  controller: {
    summary: "run the ModelImage controller: mirror declared images into the cache registry",
    run: async (args) => (await import("./controller/command.ts")).runController(args),
  },
  status: {
    summary:
      "show ModelImages: variants, digests, sync lag and which nodes are warm (also `kubectl stowage`)",
    run: async (args) => (await import("./status/command.ts")).runStatus(args),
  },
  agent: {
    summary: "run the node agent: pre-pull this node's NodeCache images through CRI, mirror config",
    run: async (args) => (await import("./agent/command.ts")).runAgent(args),
  },
  cache: {
    summary: "run the pull-through cache front nodes pull from: misses fetched upstream once, verified",
    run: async (args) => (await import("./cache/command.ts")).runCache(args),
  },
  uninstall: {
    summary: "before the chart is deleted: agents remove their hosts.toml, nodes lose warm labels and taint",
    run: async (args) => (await import("./agent/uninstall.ts")).runUninstall(args),
  },
};

export function usage(): string {
  const lines = ["Usage: stowage <command> [flags]", "", "Commands:"];
  for (const [name, cmd] of Object.entries(commands)) lines.push(`  ${name.padEnd(12)} ${cmd.summary}`);
  lines.push("", "Run `stowage <command> --help` for a command's flags.");
  return lines.join("\n");
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(`${usage()}\n`);
    return name ? 0 : 2;
  }
  if (name === "--version" || name === "version") {
    const { readFile } = await import("node:fs/promises");
    const pkg = JSON.parse(await readFile(new URL("../package.json", import.meta.url), "utf8"));
    process.stdout.write(`stowage ${pkg.version}\n`);
    return 0;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`stowage: unknown command "${name}"\n${usage()}\n`);
    return 2;
  }
  return command.run(rest);
}
