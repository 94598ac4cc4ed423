/**
 * Jurisdiction codes and their containment (a port of agent_passport/regions.py).
 *
 * A region is an ISO 3166-1 alpha-2 country (`DE`), an ISO 3166-2 subdivision (`US-CA`), a
 * grouping (`EU`, `EEA`, `EFTA`) or `GLOBAL`. A subdivision is inside its country, a country
 * inside every grouping that lists it, `EU` inside `EEA`, and everything inside `GLOBAL`.
 */
import { RegionError } from "./errors.js";
import { isAscii, pyRepr } from "./pytext.js";

export const COUNTRIES: ReadonlySet<string> = new Set(
  `AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR
  BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ
  EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW
  GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY
  KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV
  MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY
  QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG
  TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW`
    .split(/\s+/)
    .filter(Boolean),
);

const EU = new Set("AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE".split(" "));
const EFTA = new Set("IS LI NO CH".split(" "));
const EEA = new Set([...EU, "IS", "LI", "NO"]);

export const GLOBAL = "GLOBAL";
export const GROUPINGS: ReadonlyMap<string, ReadonlySet<string>> = new Map([
  ["EU", EU],
  ["EEA", EEA],
  ["EFTA", EFTA],
  [GLOBAL, COUNTRIES],
]);

/** What normalization trims (not \x1c-\x1f, which Python's str.strip() would also trim). */
const ASCII_WHITESPACE = /^[ \t\n\r\x0b\x0c]+|[ \t\n\r\x0b\x0c]+$/g;
const SUBDIVISION = /^([A-Z]{2})-[A-Z0-9]{1,3}$/;

/** The canonical (upper-case) form of `code`, or a RegionError. */
export function normalizeRegion(code: unknown): string {
  if (typeof code !== "string") throw new RegionError(String(code), "a region must be a string");
  if (!isAscii(code)) throw new RegionError(code, "region codes are ASCII letters, digits and '-'");
  const canonical = code.replace(ASCII_WHITESPACE, "").toUpperCase();
  if (GROUPINGS.has(canonical) || COUNTRIES.has(canonical)) return canonical;
  const match = SUBDIVISION.exec(canonical);
  if (match && COUNTRIES.has(match[1] as string)) return canonical;
  if (match) throw new RegionError(code, `unknown country ${pyRepr(match[1] as string)} in subdivision code`);
  const names = [...GROUPINGS.keys()].sort().join(", ");
  throw new RegionError(
    code,
    `not a region: use an ISO 3166 country (DE), a subdivision (US-CA), or one of ${names}`,
  );
}

function countriesOf(region: string): ReadonlySet<string> {
  return GROUPINGS.get(region) ?? new Set([region.split("-", 1)[0] as string]);
}

/** True if every place in `inner` is also in `outer` (both normalized). */
export function regionWithin(inner: string, outer: string): boolean {
  if (inner === outer || outer === GLOBAL) return true;
  if (outer.includes("-")) return false;
  const outerSet = countriesOf(outer);
  for (const country of countriesOf(inner)) if (!outerSet.has(country)) return false;
  return true;
}
