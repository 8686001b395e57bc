import { expect } from "vitest";
import { StowageError } from "../../src/util/errors.ts";

/** The StowageError a promise rejects with; fails the test when it resolves or rejects with anything else. */
export async function failure(promise: Promise<unknown>): Promise<StowageError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StowageError);
  return err as StowageError;
}
