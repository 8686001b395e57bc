/**
 * Upstream text (error bodies, network error details) on its way into error messages, and so
 * into status conditions, events and logs. A registry, a proxy or a captive portal can answer
 * with an HTML page, a megabyte of text, terminal escape sequences or bidi overrides; a person
 * reading `kubectl describe` must see one short, plain line. Every piece of upstream text goes
 * through `upstreamText` (errors.ts calls it), so the rule lives here once.
 */

/** Longest piece of upstream text kept in a message. */
export const UPSTREAM_TEXT_LIMIT = 300;

/** Most bytes of an error body ever read: enough for any OCI error document. */
export const ERROR_BODY_LIMIT = 64 * 1024;

// C0 and C1 controls, DEL, and the Unicode format characters that reorder or hide text
// (bidi embeddings/overrides/isolates, zero-width characters, BOM).
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]/g;
// Terminal escape sequences (CSI such as colours and cursor moves, OSC such as titles and
// hyperlinks), removed whole so no "[31m" is left behind.
const ANSI_ESCAPE =
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching escape sequences is the point
  /\u001b\[[0-?]*[ -/]*[@-~]|\u001b\][^\u0007\u001b]*(?:\u0007|\u001b\\)?|\u009b[0-?]*[ -/]*[@-~]/g;
const ENTITIES: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: " " };

/** One plain line of at most `limit` characters: tags, scripts, styles and controls removed. */
export function upstreamText(text: string, limit = UPSTREAM_TEXT_LIMIT): string {
  let plain = text.length > ERROR_BODY_LIMIT ? text.slice(0, ERROR_BODY_LIMIT) : text;
  if (/<[a-z!/][^>]*>/i.test(plain)) {
    plain = plain
      .replace(/<(script|style)[^>]*>[\s\S]*?<\/\1\s*>/gi, " ")
      .replace(/<!--[\s\S]*?-->/g, " ")
      .replace(/<[^>]*>/g, " ")
      .replace(/&(#\d+|#x[0-9a-f]+|[a-z]+);/gi, (entity, name: string) => {
        if (name.startsWith("#")) {
          const code =
            name[1] === "x" || name[1] === "X" ? Number.parseInt(name.slice(2), 16) : Number(name.slice(1));
          return Number.isFinite(code) && code > 31 && code < 0x110000 ? String.fromCodePoint(code) : " ";
        }
        return ENTITIES[name.toLowerCase()] ?? entity;
      });
  }
  plain = plain.replace(ANSI_ESCAPE, " ").replace(CONTROL, " ").replace(/\s+/g, " ").trim();
  if (plain.length <= limit) return plain;
  return `${plain.slice(0, limit - 1).trimEnd()}…`;
}

/** A response body as text, reading at most `limit` bytes (the rest is discarded unread). */
export async function readCappedText(
  body: AsyncIterable<unknown> & { destroy(): void },
  limit = ERROR_BODY_LIMIT,
): Promise<string> {
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of body) {
      const piece = chunk as Buffer;
      chunks.push(total + piece.length > limit ? piece.subarray(0, limit - total) : piece);
      total += piece.length;
      if (total >= limit) break;
    }
  } catch {
    // A body that fails half-way still says what it said so far.
  } finally {
    body.destroy();
  }
  return Buffer.concat(chunks).toString("utf8");
}
