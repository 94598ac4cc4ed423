/** Fetching and caching the registry's public keys (JWKS) for offline verification. */
import { monotonic } from "./clock.js";
import { keysFromJwks, type PublicKey } from "./tokens.js";

/**
 * Looks keys up by kid (`client.lookup` is a KeyLookup); refetches when the cache expires or on
 * an unknown kid, at most once per `minRefetchInterval` so forged kids cannot flood the registry.
 */
export class JWKSClient {
  private keys = new Map<string, PublicKey>();
  private fetchedAt = -Infinity;

  constructor(
    readonly url: string,
    readonly cacheSeconds = 300,
    readonly minRefetchInterval = 5,
    readonly timeout = 5,
  ) {}

  async refresh(): Promise<void> {
    const response = await fetch(this.url, { signal: AbortSignal.timeout(this.timeout * 1000) });
    if (!response.ok) throw new Error(`HTTP ${response.status} from ${this.url}`);
    this.keys = keysFromJwks(await response.json());
    this.fetchedAt = monotonic();
  }

  readonly lookup = async (kid: string): Promise<PublicKey | undefined> => {
    const age = monotonic() - this.fetchedAt;
    const stale = age > this.cacheSeconds;
    if (stale || (!this.keys.has(kid) && age > this.minRefetchInterval)) {
      try {
        await this.refresh();
      } catch (error) {
        console.warn(`agent-passport: could not fetch JWKS from ${this.url}: ${(error as Error).message}`);
        if (stale) this.fetchedAt = monotonic() - this.cacheSeconds + 1;
      }
    }
    return this.keys.get(kid);
  };
}
