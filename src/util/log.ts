import { createRequire } from "node:module";
import type { DestinationStream, Logger } from "pino";

export type { Logger };

// pino (and its ~30 files) is loaded when a logger is first made, not when this module is
// imported: a command that never logs (an unchanged `stowage mirror` re-run) does without it.
let pinoModule: typeof import("pino") | undefined;
const loadPino = () => {
  pinoModule ??= createRequire(import.meta.url)("pino") as typeof import("pino");
  return pinoModule.pino;
};

/**
 * Structured logs to stderr, so stdout stays free for `--json` results. Levels are labels
 * (`"level":"warn"`, what log pipelines filter on) and an Error under `err` or `error` is
 * serialised with its type, message, reason and stack instead of being flattened to a string.
 */
export function createLogger(
  options: { level?: string; name?: string; destination?: DestinationStream } = {},
): Logger {
  const pino = loadPino();
  return pino(
    {
      name: options.name ?? "stowage",
      level: options.level ?? process.env.STOWAGE_LOG_LEVEL ?? "info",
      formatters: { level: (label) => ({ level: label }) },
      serializers: { err: pino.stdSerializers.err, error: pino.stdSerializers.err },
      redact: {
        paths: ["password", "token", "auth", "authorization", "*.password", "*.token", "*.authorization"],
        censor: "[redacted]",
      },
    },
    options.destination ?? pino.destination(2),
  );
}

/** A logger that drops everything, for tests and quiet commands. */
export function silentLogger(): Logger {
  return loadPino()({ level: "silent" });
}
