/** Monotonic seconds (never jumps with the wall clock), like Python's time.monotonic(). */
export function monotonic(): number {
  return performance.now() / 1000;
}

export const sleep = (seconds: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, seconds * 1000));
