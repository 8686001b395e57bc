/**
 * Entry of the worker thread `stowage mirror` copies in (see runInWorker in mirrorCommand.ts):
 * a file of its own, so the main thread's no-op path never loads worker_threads.
 */
import { parentPort, workerData } from "node:worker_threads";
import { workerMain } from "./mirrorCommand.ts";

if (parentPort)
  await workerMain(parentPort, workerData as { args: string[]; tty: boolean; columns?: number });
