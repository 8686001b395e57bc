import { describe, expect, it } from "vitest";
import { createRegistry, type NodeCacheView, nodeCacheHeartbeatCollector } from "../../src/metrics.ts";

const at = Date.parse("2026-11-26T12:00:00Z");

describe("NodeCache metrics for the node agent alert and the dashboard", () => {
  it("reports each node's heartbeat age, images per state, and drops a node whose NodeCache is gone", async () => {
    const nodeCaches: NodeCacheView[] = [
      {
        metadata: { name: "gpu-1", creationTimestamp: "2026-11-26T10:00:00Z" },
        status: {
          heartbeatTime: "2026-11-26T11:59:00Z",
          images: [{ state: "Present" }, { state: "Present" }, { state: "Pulling" }],
        },
      },
      // an agent that never reported: aged since the NodeCache was created
      { metadata: { name: "gpu-2", creationTimestamp: "2026-11-26T11:50:00Z" } },
    ];
    const registry = createRegistry();
    nodeCacheHeartbeatCollector({ list: () => nodeCaches }, { now: () => at }, registry);
    const text = await registry.metrics();
    expect(text).toContain('stowage_nodecache_heartbeat_age_seconds{node="gpu-1"} 60');
    expect(text).toContain('stowage_nodecache_heartbeat_age_seconds{node="gpu-2"} 600');
    expect(text).toContain('stowage_nodecache_images{node="gpu-1",state="Present"} 2');
    expect(text).toContain('stowage_nodecache_images{node="gpu-1",state="Pulling"} 1');
    expect(text).toContain('stowage_nodecache_images{node="gpu-1",state="Failed"} 0');
    expect(text).toContain('stowage_nodecache_images{node="gpu-2",state="Present"} 0');

    nodeCaches.pop();
    const after = await registry.metrics();
    expect(after).toContain('node="gpu-1"');
    expect(after).not.toContain('node="gpu-2"');
  });
});
