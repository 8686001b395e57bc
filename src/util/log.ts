import { type Logger, pino } from "pino";

export type { Logger };

/** Structured logs to stderr, so stdout stays free for `--json` results. */
export function createLogger(options: { level?: string; name?: string } = {}): Logger {
  return pino(
    {
      name: options.name ?? "stowage",
      level: options.level ?? process.env.STOWAGE_LOG_LEVEL ?? "info",
      redact: {
        paths: ["password", "token", "auth", "authorization", "*.password", "*.token", "*.authorization"],
        censor: "[redacted]",
      },
    },
    pino.destination(2),
  );
}

/** A logger that drops everything, for tests and quiet commands. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
