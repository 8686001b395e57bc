/**
 * The redirect policy of registry traffic, in one place (the transport applies it):
 *
 * - Only blob reads are followed: a GET or HEAD of `/v2/<name>/blobs/<algorithm>:<hex>`, which
 *   registries legitimately send to object storage or a CDN. Manifests, token requests, the
 *   API root, tag lists and every upload (POST/PUT/PATCH/DELETE, `/blobs/uploads/`) are never
 *   followed: the 3xx is handed back and becomes an error. A registry has no reason to move
 *   those, and following them is how a hostile upstream turns the controller into a proxy
 *   into the cluster (server-side request forgery).
 * - At most MAX_REDIRECT_HOPS hops.
 * - Only http: and https: targets, and never https: to http: (a downgrade would expose the
 *   signed URL, and lets a network attacker pick the content's origin).
 * - Never a link-local address (169.254.0.0/16, fe80::/10) nor a cloud metadata address
 *   (169.254.169.254, fd00:ec2::254): not as a literal, nor as a name that resolves to one.
 *   The name is resolved just before the hop; DNS answers that change between this check and
 *   the connection (rebinding) are not covered.
 * - The Authorization header is sent only to the origin it was issued for; a redirected blob
 *   URL carries its own signature.
 */
import { lookup } from "node:dns/promises";
import { BlockList, isIP } from "node:net";
import { StowageError } from "../util/errors.ts";

export const MAX_REDIRECT_HOPS = 5;

const BLOB_READ = /^\/v2\/.+\/blobs\/[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

/** Whether a 3xx answering this request may be followed at all. */
export function mayFollowRedirects(method: string, url: URL): boolean {
  return (method === "GET" || method === "HEAD") && BLOB_READ.test(url.pathname);
}

const forbidden = new BlockList();
forbidden.addSubnet("169.254.0.0", 16, "ipv4");
forbidden.addSubnet("fe80::", 10, "ipv6");
forbidden.addAddress("fd00:ec2::254", "ipv6");

/** Whether an IP address is link-local or a metadata service address (IPv4-mapped IPv6 included). */
export function isForbiddenAddress(address: string): boolean {
  const bare = address.replace(/^\[|\]$/g, "");
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(bare);
  if (mapped) return forbidden.check(mapped[1], "ipv4");
  const family = isIP(bare);
  if (family === 4) return forbidden.check(bare, "ipv4");
  if (family === 6) return forbidden.check(bare, "ipv6");
  return false;
}

/** Resolves a host name to its addresses; injectable so tests can name any address. */
export type HostResolver = (hostname: string) => Promise<string[]>;

export const systemResolver: HostResolver = async (hostname) =>
  (await lookup(hostname, { all: true })).map((entry) => entry.address);

/**
 * Throws (non-retryable UpstreamUnavailable, naming the rule) unless a hop from `from` to `to`
 * is allowed. A name that does not resolve is left to the connection to fail on.
 */
export async function checkRedirectHop(
  from: URL,
  to: URL,
  hop: { count: number; limit?: number; resolve?: HostResolver },
): Promise<void> {
  const limit = Math.min(hop.limit ?? MAX_REDIRECT_HOPS, MAX_REDIRECT_HOPS);
  const resolve = hop.resolve ?? systemResolver;
  const refuse = (why: string) => {
    throw new StowageError(
      "UpstreamUnavailable",
      `${from.host} redirected a blob download to ${to.protocol}//${to.host}, which is refused: ${why}`,
      { retryable: false },
    );
  };
  if (hop.count > limit) refuse(`more than ${limit} redirects`);
  if (to.protocol !== "http:" && to.protocol !== "https:") refuse("only http and https are followed");
  if (from.protocol === "https:" && to.protocol === "http:") refuse("a downgrade from https to http");
  const hostname = to.hostname.replace(/^\[|\]$/g, "");
  if (isIP(hostname)) {
    if (isForbiddenAddress(hostname)) refuse("a link-local or cloud metadata address");
    return;
  }
  let addresses: string[];
  try {
    addresses = await resolve(hostname);
  } catch {
    return;
  }
  if (addresses.some(isForbiddenAddress)) {
    refuse(`${hostname} resolves to a link-local or cloud metadata address`);
  }
}
