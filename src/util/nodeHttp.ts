import { createRequire } from "node:module";

/**
 * node:http, loaded with require() rather than an ES `import`.
 *
 * Why: an ES import of a built-in module makes Node evaluate every export to build the module
 * namespace, and node:http has lazy getters (its WebSocket and fetch-era classes) that load
 * Node's bundled undici: ≈ 12 MB of resident memory in every process, which the controller
 * (< 150 MB) and the agent (< 80 MB on every node) cannot spare. require() leaves the getters
 * untouched. Measured on Node 24: `import "node:http"` 59.5 MB peak RSS, this 47.4 MB, a bare
 * process 45.1 MB. Type-only imports of node:http are erased and cost nothing.
 */
const requireBuiltin = createRequire(import.meta.url);

export const nodeHttp: typeof import("node:http") = requireBuiltin("node:http");
