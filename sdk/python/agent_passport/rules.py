"""The scope and jurisdiction rule engine: one place that decides whether an action is allowed.

Scope grammar (one entry per string)::

    entry     := ["!"] domain ":" action [":" resource]
    domain    := name | "*"          e.g. tool, net, fs, gpu, data, proc
    action    := name | "*"          e.g. shell, connect, write, use, read, exec
    name      := [a-z0-9][a-z0-9_.-]*
    resource  := any non-blank text; "*" matches within one path segment (never "/"),
                 "**" matches anything including "/"; everything else is literal;
                 no "*" between two "**"

Resources are matched by :mod:`agent_passport.globs` in linear time, without backtracking
(a resource is attacker-controlled). Limits: ``MAX_RULES`` rules of at most
``MAX_RULE_LENGTH`` characters; a resource longer than ``MAX_RESOURCE_LENGTH`` is denied.
Matching costs about one Python step per wildcard and one scan of the resource per rule that
searches (literal text between two wildcards), so that any decision stays under 50 µs
(bench/bench_rules.py), a rule holds at most ``MAX_RULE_WILDCARDS`` wildcards and a scope at most
``MAX_SCOPE_WILDCARDS`` and ``MAX_SEARCHING_RULES`` rules that search. A ``prefix**`` rule
(``fs:*:/workspace/**``) is looked up, not matched, so its ``**`` does not count.

An entry without a resource covers every resource of that action. An action without a resource is
matched as the empty resource (which "*" and "**" match). Entries starting with "!" deny and
always win over allows; anything no entry allows is denied.

Jurisdiction: the passport lists regions (see :mod:`agent_passport.regions`); an action's region
must lie inside one of them. An action with no region is allowed only by a ``GLOBAL`` passport.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent_passport.errors import RegionError, RuleError
from agent_passport.globs import Glob
from agent_passport.regions import GLOBAL, normalize_region, region_within

MAX_RULES = 256
MAX_RULE_LENGTH = 512
MAX_RESOURCE_LENGTH = 1000  # also the registry's column: longer resources are refused there
MAX_REGIONS = 64
MAX_RULE_WILDCARDS = 16  # "*" and "**" each count one
MAX_SCOPE_WILDCARDS = 32  # not counting the "**" of prefix** rules
MAX_SEARCHING_RULES = 6

_ACTION_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_RULE_NAME = re.compile(r"\*|" + _ACTION_NAME.pattern)  # a rule may also name "*"
_FORBIDDEN_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")
_DECISION_CACHE_SIZE = 8192


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    rule: str | None = None

    def __bool__(self) -> bool:
        return self.allowed


_MALFORMED = Decision(False, "malformed check: action, resource and jurisdiction are text")


@dataclass(frozen=True)
class Rule:
    text: str
    deny: bool
    domain: str
    action: str
    resource: Glob | None

    def matches_resource(self, resource: str) -> bool:
        return self.resource is None or self.resource.matches(resource)


def parse_rule(text: str) -> Rule:
    """Parse one scope entry, raising :class:`RuleError` that names the entry if it is malformed."""
    if not isinstance(text, str):
        raise RuleError(repr(text), "a scope rule must be a string")
    if not text:
        raise RuleError(text, "empty rule")
    if len(text) > MAX_RULE_LENGTH:
        raise RuleError(text[:40] + "...", f"longer than {MAX_RULE_LENGTH} characters")
    if _FORBIDDEN_CHARS.search(text):
        raise RuleError(text, "whitespace and control characters are not allowed")
    deny = text.startswith("!")
    parts = (text[1:] if deny else text).split(":", 2)
    if len(parts) < 2:
        raise RuleError(text, "expected domain:action[:resource], e.g. tool:shell:exec")
    domain, action = parts[0], parts[1]
    for label, value in (("domain", domain), ("action", action)):
        if not _RULE_NAME.fullmatch(value):
            raise RuleError(
                text,
                f"{label} {value!r} must be '*' or lower-case letters, digits, '_', '.', '-' "
                "(wildcards inside a name are not supported)",
            )
    resource = None
    if len(parts) == 3:
        if parts[2] == "":
            raise RuleError(text, "empty resource after ':' (omit it to cover every resource)")
        try:
            resource = Glob.compile(parts[2])
        except ValueError as exc:
            raise RuleError(text, str(exc)) from exc
        if resource.wildcards > MAX_RULE_WILDCARDS:
            raise RuleError(text, f"more than {MAX_RULE_WILDCARDS} wildcards ('*' or '**')")
    return Rule(text=text, deny=deny, domain=domain, action=action, resource=resource)


def parse_scope(entries: Iterable[str]) -> tuple[Rule, ...]:
    if isinstance(entries, str) or not isinstance(entries, Iterable):
        raise RuleError(repr(entries), "scope must be a list of rule strings")
    rules = tuple(parse_rule(entry) for entry in entries)
    if len(rules) > MAX_RULES:
        raise RuleError(f"{len(rules)} rules", f"at most {MAX_RULES} scope rules are allowed")
    _check_matching_cost(rules)
    return rules


def _check_matching_cost(rules: Sequence[Rule]) -> None:
    """The scope bounds of the module docstring; the error names the rule that exceeds them."""
    wildcards, searching = 0, 0
    for rule in rules:
        if rule.resource is None or rule.resource.prefix is not None:
            continue
        wildcards += rule.resource.wildcards
        searching += rule.resource.searches
        if wildcards > MAX_SCOPE_WILDCARDS:
            raise RuleError(
                rule.text,
                f"the scope would hold more than {MAX_SCOPE_WILDCARDS} wildcards "
                "(not counting the '**' that ends a prefix rule such as /workspace/**)",
            )
        if searching > MAX_SEARCHING_RULES:
            raise RuleError(
                rule.text,
                f"the scope would hold more than {MAX_SEARCHING_RULES} rules with literal text "
                "between two wildcards (such as *miner* or **/.ssh/**)",
            )


def parse_jurisdiction(regions: Iterable[str]) -> tuple[str, ...]:
    if isinstance(regions, str) or not isinstance(regions, Iterable):
        raise RegionError(repr(regions), "jurisdiction must be a list of region codes")
    normalized = tuple(dict.fromkeys(normalize_region(code) for code in regions))
    if not normalized:
        raise RegionError("[]", "at least one region is required (use GLOBAL for anywhere)")
    if len(normalized) > MAX_REGIONS:
        raise RegionError(f"{len(normalized)} regions", f"at most {MAX_REGIONS} regions")
    return normalized


def split_action(action: str, resource: str | None = None) -> tuple[str, str, str]:
    """Split ``domain:action[:resource]`` (resource may instead be passed separately).

    Raises ValueError for a malformed action.
    """
    parts = action.split(":", 2)
    if len(parts) < 2 or not all(_ACTION_NAME.fullmatch(name) for name in parts[:2]):
        raise ValueError(
            f"malformed action {action!r}: expected domain:action[:resource] with lower-case names"
        )
    if len(parts) == 3:
        if resource is not None:
            raise ValueError(f"malformed action {action!r}: resource given twice")
        resource = parts[2]
    return parts[0], parts[1], resource or ""


class _RuleIndex:
    """Rules of one kind (allow or deny) for one ``domain:action`` key, in scope order, indexed
    so that the usual shapes cost no loop: a rule without a resource, exact resources (one dict
    lookup) and ``prefix**`` rules (one ``str.startswith`` over all prefixes)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.covers_all = next((i for i, r in enumerate(rules) if r.resource is None), len(rules))
        self.exact: dict[str, int] = {}
        self.prefixed: list[tuple[int, str]] = []
        self.others: list[tuple[int, Glob]] = []
        for i, rule in enumerate(rules):
            if rule.resource is None:
                continue
            if rule.resource.literal is not None:
                self.exact.setdefault(rule.resource.literal, i)
            elif rule.resource.prefix is not None:
                self.prefixed.append((i, rule.resource.prefix))
            else:
                self.others.append((i, rule.resource))
        self.prefixes = tuple(prefix for _, prefix in self.prefixed)

    def first_match(self, resource: str) -> Rule | None:
        """The first rule (in scope order) that matches ``resource``."""
        best = min(self.covers_all, self.exact.get(resource, len(self.rules)))
        if self.prefixes and resource.startswith(self.prefixes):
            best = min(best, self._first_prefix(resource))
        for i, glob in self.others:
            if i >= best:
                break
            if glob.matches(resource):
                best = i
                break
        return self.rules[best] if best < len(self.rules) else None

    def _first_prefix(self, resource: str) -> int:
        """The scope index of the first prefix ``resource`` starts with (one does): a binary
        search with ``startswith`` over halves, in C, not a Python loop (15 µs for 230)."""
        prefixes, low, high = self.prefixes, 0, len(self.prefixes)
        while high - low > 1:
            middle = (low + high) // 2
            if resource.startswith(prefixes[low:middle]):
                high = middle
            else:
                low = middle
        return self.prefixed[low][0]


class Policy:
    """A parsed passport scope and jurisdiction. Immutable, thread-safe, and caches decisions."""

    def __init__(self, scope: Iterable[str], jurisdiction: Iterable[str]) -> None:
        self.rules = parse_scope(scope)
        self.jurisdiction = parse_jurisdiction(jurisdiction)
        self._denies = self._index(rule for rule in self.rules if rule.deny)
        self._allows = self._index(rule for rule in self.rules if not rule.deny)
        self._cache: dict[tuple[str, str | None, str | None], Decision] = {}

    @classmethod
    def from_claims(cls, claims: Mapping[str, object]) -> Policy:
        return cls(claims.get("scope") or [], claims.get("jurisdiction") or [])  # type: ignore[arg-type]

    def decide(
        self, action: str, resource: str | None = None, jurisdiction: str | None = None
    ) -> Decision:
        key = (action, resource, jurisdiction)
        try:
            cached = self._cache.get(key)
        except TypeError:  # an unhashable argument (a list, a dict): certainly malformed
            return _MALFORMED
        if cached is not None:
            return cached
        if type(action) is not str or any(
            value is not None and type(value) is not str for value in (resource, jurisdiction)
        ):
            return _MALFORMED  # checked only on a cache miss: the hot path stays a dict lookup
        decision = self._decide(action, resource, jurisdiction)
        if len(self._cache) >= _DECISION_CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = decision
        return decision

    @staticmethod
    def _index(rules: Iterable[Rule]) -> dict[tuple[str, str], _RuleIndex]:
        by_key: dict[tuple[str, str], list[Rule]] = {}
        for rule in rules:
            by_key.setdefault((rule.domain, rule.action), []).append(rule)
        return {key: _RuleIndex(group) for key, group in by_key.items()}

    @staticmethod
    def _first_match(
        index: dict[tuple[str, str], _RuleIndex], domain: str, verb: str, resource: str
    ) -> Rule | None:
        for key in ((domain, verb), (domain, "*"), ("*", verb), ("*", "*")):
            group = index.get(key)
            rule = group.first_match(resource) if group is not None else None
            if rule is not None:
                return rule
        return None

    def _decide(self, action: str, resource: str | None, jurisdiction: str | None) -> Decision:
        try:
            domain, verb, resource = split_action(action, resource)
        except ValueError as exc:
            return Decision(False, str(exc))
        if len(resource) > MAX_RESOURCE_LENGTH:
            return Decision(False, f"the resource is longer than {MAX_RESOURCE_LENGTH} characters")
        described = f"{domain}:{verb}" + (f":{resource}" if resource else "")
        denied_by = self._first_match(self._denies, domain, verb, resource)
        if denied_by is not None:
            return Decision(
                False, f"{described} is denied by rule {denied_by.text!r}", denied_by.text
            )
        allowed_by = self._first_match(self._allows, domain, verb, resource)
        if allowed_by is None:
            return Decision(False, f"{described} is not in the passport's scope")
        return self._decide_jurisdiction(described, jurisdiction, allowed_by)

    def _decide_jurisdiction(
        self, described: str, jurisdiction: str | None, rule: Rule
    ) -> Decision:
        allowed_in = ", ".join(self.jurisdiction)
        if jurisdiction is None:
            if GLOBAL in self.jurisdiction:
                return Decision(True, f"allowed by rule {rule.text!r}", rule.text)
            return Decision(
                False,
                f"{described} names no jurisdiction and the passport is limited to {allowed_in}",
            )
        try:
            region = normalize_region(jurisdiction)
        except RuleError as exc:
            return Decision(False, str(exc))
        if any(region_within(region, outer) for outer in self.jurisdiction):
            return Decision(True, f"allowed by rule {rule.text!r} in {region}", rule.text)
        return Decision(
            False, f"{described} in {region} is outside the passport's jurisdiction ({allowed_in})"
        )


def decide(
    passport: Policy | Mapping[str, object],
    action: str,
    resource: str | None = None,
    jurisdiction: str | None = None,
) -> Decision:
    """Decide ``(passport, action, resource, jurisdiction) -> allow | deny + reason``.

    ``passport`` is a :class:`Policy` or a claims mapping with ``scope`` and ``jurisdiction``.
    Never raises for bad action input: a malformed action is simply denied.
    """
    policy = passport if isinstance(passport, Policy) else Policy.from_claims(passport)
    return policy.decide(action, resource, jurisdiction)
