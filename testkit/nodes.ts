/**
 * Creating a Node the way a kubelet registers one: the object first, then its status through the
 * status subresource (a real apiserver ignores `status` on create; the double keeps it, so both
 * get the same two requests).
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
