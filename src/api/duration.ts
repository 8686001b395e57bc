// Go-style durations are API syntax (sync.interval, prewarm.holdTimeout) and flag syntax alike;
// the parser lives with the small utilities so commands and the API share it.
export * from "../util/duration.ts";
