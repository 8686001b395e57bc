/**
 * Creating a Node the way a kubelet registers one: the object first, then its status through the
 * status subresource, so code that watches Nodes sees the moment a kubelet's node exists but is
 * not Ready yet (the planner once lifted the warming taint in that moment).
 */
import { type KubeClient, type KubeObject, Resources } from "../src/kube/client.ts";

export async function registerNode(
  client: KubeClient,
  node: KubeObject & { status?: object },
): Promise<void> {
  const { status, ...object } = node;
  const nodes = client.resource(Resources.Node);
  await nodes.create(object as KubeObject);
  if (status) await nodes.patchStatus(node.metadata?.name ?? "", { status });
}
