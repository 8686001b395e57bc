/**
 * Writing blob bytes to a caller with two reusable buffers. A fresh buffer per read (what
 * fs.ReadStream and the first spool tails did) left gigabytes of garbage per large blob, and the
 * front's resident memory rose to ~250 MB with eight callers before the collector caught up.
 * Here a buffer is read into again only once the socket has taken what it carried (the write's
 * callback), and the next read runs while the previous chunk is being written.
 */
import type { ServerResponse } from "node:http";

/** Bytes per read and write: much below 1 MiB the per-call costs dominate; far above, caches miss. */
export const SEND_CHUNK_BYTES = 1024 * 1024;

/**
 * Bytes per read and write for a caller tailing a spool: it mostly goes at the upstream fetch's
 * pace (a few hundred MB/s, not the hit path's GB/s), and eight callers of one cold blob held
 * 16 MiB of send buffers at 1 MiB against 4 MiB at this size (bench:cache's peak RSS).
 */
export const TAIL_CHUNK_BYTES = 256 * 1024;

/** A pair of buffers owned by one response. */
export function sendBuffers(size = SEND_CHUNK_BYTES): Buffer[] {
  return [Buffer.allocUnsafeSlow(size), Buffer.allocUnsafeSlow(size)];
}

/**
 * Writes `chunk` and resolves once the socket took it (its buffer may be reused) or the
 * response closed; rejects with the write's error.
 */
export function writeChunk(res: ServerResponse, chunk: Buffer): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (res.destroyed) return resolve();
    const onClose = () => resolve();
    res.once("close", onClose);
    res.write(chunk, (err) => {
      res.off("close", onClose);
      if (err) reject(err);
      else resolve();
    });
  });
}

/**
 * Sends chunks from `chunks` (views of the two `sendBuffers()`, or buffers nobody writes into
 * again, such as a spool's recent chunks), keeping one write in flight while the next chunk is read. Returns the bytes written; stops early when the
 * response is gone.
 */
export async function sendChunks(
  res: ServerResponse,
  chunks: AsyncIterable<Buffer>,
  onChunk?: (bytes: number) => void,
): Promise<number> {
  let sent = 0;
  let previous: Promise<void> = Promise.resolve();
  try {
    for await (const chunk of chunks) {
      const written = writeChunk(res, chunk);
      // Handled now as well as awaited below: if the previous write fails, this one may fail
      // too before anyone awaits it, and an unhandled rejection takes the process down.
      written.catch(() => {});
      // The next read goes into the buffer of the previous chunk: wait until it is written.
      await previous;
      previous = written;
      sent += chunk.length;
      onChunk?.(chunk.length);
      if (res.destroyed) return sent;
    }
    await previous;
  } finally {
    previous.catch(() => {});
  }
  return sent;
}

/** The bytes [start, end] of an open file, read into the two buffers in turn. */
export async function* fileChunks(
  read: (buffer: Buffer, length: number, position: number) => Promise<number>,
  start: number,
  end: number,
  buffers: Buffer[] = sendBuffers(),
): AsyncGenerator<Buffer> {
  let position = start;
  let turn = 0;
  while (position <= end) {
    const buffer = buffers[turn++ % buffers.length];
    const bytesRead = await read(buffer, Math.min(buffer.length, end - position + 1), position);
    if (bytesRead === 0) throw new Error(`the file ended at byte ${position} of ${end + 1}`);
    position += bytesRead;
    yield buffer.subarray(0, bytesRead);
  }
}
