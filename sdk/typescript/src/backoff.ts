/**
 * Retry delays for the SDK's background work: exponential backoff with jitter
 * (agent_passport/backoff.py).
 *
 * Ten thousand agents that lost Redis or the registry in the same outage must not all come back
 * in the same millisecond. Each delay is drawn at random between half and all of the exponential
 * step ("equal jitter"), so the retries of clients that failed together spread out, while no
 * client waits less than half its step.
 */
import { randomInt } from "node:crypto";

const RESOLUTION = 2 ** 32; // randomInt's steps across [step / 2, step]

/**
 * Seconds to wait after `failures` consecutive failures (1 for the first): a random point in
 * [step / 2, step], step = min(cap, first * 2 ** (failures - 1)).
 */
export function backoffDelay(failures: number, first: number, cap: number): number {
  const step = Math.min(cap, first * 2 ** Math.min(Math.max(failures, 1) - 1, 32));
  return step / 2 + (step / 2) * (randomInt(RESOLUTION) / (RESOLUTION - 1));
}
