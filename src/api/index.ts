export * from "./crds.ts";
export * from "./duration.ts";
export * from "./modelImage.ts";
export * from "./nodeCache.ts";
