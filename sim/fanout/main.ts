// `npm run sim:fanout`: see cli.ts (kept apart so tests import it without running it).
import { runCli } from "./cli.ts";

process.exitCode = await runCli(process.argv.slice(2), (line) => process.stdout.write(`${line}\n`));
