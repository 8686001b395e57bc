import type { ResourceDef } from "./resources.ts";
import type { WriteContext } from "./rest.ts";
import type { KubeObject } from "./types.ts";

export function validateCustomResource(
  _def: ResourceDef,
  obj: KubeObject,
  _old: KubeObject | undefined,
  _ctx: WriteContext,
): KubeObject {
  return obj;
}
