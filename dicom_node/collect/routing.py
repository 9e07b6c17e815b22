"""The routing rule language: series attributes -> pipelines and destinations.

Rules are data, never code (nothing is evaluated).  A rule's ``match`` table
maps DICOM keywords (and ``calling_ae``, ``called_ae``, ``peer_address``) to
conditions, all of which must hold::

    Modality = "CT"                                  # equals (case-insensitive)
    BodyPartExamined = ["CHEST", "LUNG", "THORAX"]   # any of
    SeriesDescription = { regex = "lung|chest" }     # re.search, case-insensitive
    SliceThickness = { max = 3.0 }                   # numeric range: min / max
    ImageType = { contains = "AXIAL" }               # one of the values (multi-valued)
    ContrastBolusAgent = { present = false }         # present / absent
    any = [ { Modality = "CT" }, { Modality = "PT" } ]
    all = [ ... ]
    not = { SeriesDescription = { regex = "scout|localizer" } }

A missing attribute makes its condition false (``present = false`` true),
never an error.  :func:`compile_match` checks a table once (unknown keywords,
operators and bad regular expressions are errors naming the key);
:meth:`Condition.evaluate` returns whether it holds and, for a person, why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CONNECTION_KEYS",
    "Condition",
    "Explanation",
    "RuleError",
    "RuleMatch",
    "compile_match",
    "evaluate_rules",
]

CONNECTION_KEYS = ("calling_ae", "called_ae", "peer_address")
"""Keys that come from the association, not from the data set."""

_OPERATORS = ("equals", "any_of", "regex", "min", "max", "contains", "present")


class RuleError(ValueError):
    """A match table is invalid; the message names the key."""


@dataclass(frozen=True)
class Explanation:
    """Why one condition held or not."""

    path: str
    ok: bool
    reason: str


class Condition:
    """A compiled condition; :meth:`evaluate` appends explanations to *trace*."""

    def evaluate(self, attrs: Mapping[str, Any], trace: list[Explanation]) -> bool:
        raise NotImplementedError


def _norm(value: Any) -> str:
    return str(value).strip().upper()


def _values(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and "\\" in value:
        return value.split("\\")
    return [value]


def _show(value: Any) -> str:
    text = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


@dataclass
class _Attribute(Condition):
    path: str
    key: str
    equals: list[str] | None = None
    regex: re.Pattern[str] | None = None
    minimum: float | None = None
    maximum: float | None = None
    contains: list[str] | None = None
    present: bool | None = None

    def evaluate(self, attrs: Mapping[str, Any], trace: list[Explanation]) -> bool:
        value = attrs.get(self.key)
        missing = value is None or value == "" or value == []
        if self.present is not None:
            ok = (not missing) == self.present
            state = "absent" if missing else f"present ({_show(value)})"
            trace.append(Explanation(self.path, ok, f"{self.key} is {state}"))
            if not ok or missing:
                return ok
        elif missing:
            trace.append(Explanation(self.path, False, f"{self.key} is missing"))
            return False
        values = _values(value)
        checks: list[tuple[bool, str]] = []
        if self.equals is not None:
            joined = _norm("\\".join(str(v) for v in values))
            ok = joined in self.equals or any(_norm(v) in self.equals for v in values)
            want = self.equals[0] if len(self.equals) == 1 else f"one of {self.equals}"
            checks.append((ok, f"{self.key} = {_show(value)}, wanted {want}"))
        if self.regex is not None:
            text = "\\".join(str(v) for v in values)
            ok = self.regex.search(text) is not None
            checks.append((ok, f"{self.key} = {_show(value)} vs /{self.regex.pattern}/"))
        if self.minimum is not None or self.maximum is not None:
            number = _number(values[0]) if len(values) == 1 else None
            if number is None:
                checks.append((False, f"{self.key} = {_show(value)} is not a single number"))
            else:
                ok = (self.minimum is None or number >= self.minimum) and (
                    self.maximum is None or number <= self.maximum
                )
                rng = f"[{'' if self.minimum is None else self.minimum}, "
                rng += f"{'' if self.maximum is None else self.maximum}]"
                checks.append((ok, f"{self.key} = {number:g}, wanted in {rng}"))
        if self.contains is not None:
            have = {_norm(v) for v in values}
            ok = any(c in have for c in self.contains)
            checks.append(
                (ok, f"{self.key} = {_show(value)}, wanted it to contain {self.contains}")
            )
        for ok, reason in checks:
            trace.append(Explanation(self.path, ok, reason))
        return all(ok for ok, _ in checks)


@dataclass
class _All(Condition):
    path: str
    parts: list[Condition] = field(default_factory=list)

    def evaluate(self, attrs: Mapping[str, Any], trace: list[Explanation]) -> bool:
        ok = True
        for part in self.parts:  # evaluate all, so the explanation is complete
            ok = part.evaluate(attrs, trace) and ok
        return ok


@dataclass
class _Any(Condition):
    path: str
    parts: list[Condition] = field(default_factory=list)

    def evaluate(self, attrs: Mapping[str, Any], trace: list[Explanation]) -> bool:
        inner: list[Explanation] = []
        ok = False
        for part in self.parts:
            ok = part.evaluate(attrs, inner) or ok
        trace.extend(inner)
        trace.append(
            Explanation(self.path, ok, "one alternative holds" if ok else "no alternative holds")
        )
        return ok


@dataclass
class _Not(Condition):
    path: str
    part: Condition

    def evaluate(self, attrs: Mapping[str, Any], trace: list[Explanation]) -> bool:
        inner: list[Explanation] = []
        held = self.part.evaluate(attrs, inner)
        trace.extend(Explanation(e.path, not e.ok, "not: " + e.reason) for e in inner)
        return not held


def _text_list(path: str, value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, (str, int, float)) for v in items):
        raise RuleError(f"{path}: expected a value or a list of values")
    return [_norm(v) for v in items]


def _number_arg(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RuleError(f"{path}: expected a number, got {value!r}")
    return float(value)


def _attribute(path: str, key: str, spec: Any) -> Condition:
    from pydicom.datadict import keyword_dict

    if key not in CONNECTION_KEYS and key not in keyword_dict:
        raise RuleError(
            f"{path}: {key!r} is not a DICOM keyword (nor {', '.join(CONNECTION_KEYS)})"
        )
    cond = _Attribute(path, key)
    if isinstance(spec, bool):
        raise RuleError(f"{path}: use {{ present = true/false }} for presence")
    if isinstance(spec, (str, int, float)):
        cond.equals = _text_list(path, spec)
        return cond
    if isinstance(spec, list):
        cond.equals = _text_list(path, spec)
        return cond
    if not isinstance(spec, Mapping) or not spec:
        raise RuleError(f"{path}: expected a value, a list or a table of operators")
    unknown = sorted(set(spec) - set(_OPERATORS))
    if unknown:
        raise RuleError(
            f"{path}: unknown operator(s) {', '.join(unknown)} (use {', '.join(_OPERATORS)})"
        )
    if "equals" in spec or "any_of" in spec:
        cond.equals = _text_list(path, spec.get("equals", spec.get("any_of")))
    if "regex" in spec:
        if not isinstance(spec["regex"], str):
            raise RuleError(f"{path}.regex: expected a string")
        try:
            cond.regex = re.compile(spec["regex"], re.IGNORECASE)
        except re.error as exc:
            raise RuleError(f"{path}.regex: invalid regular expression: {exc}") from exc
    if "min" in spec:
        cond.minimum = _number_arg(f"{path}.min", spec["min"])
    if "max" in spec:
        cond.maximum = _number_arg(f"{path}.max", spec["max"])
    if cond.minimum is not None and cond.maximum is not None and cond.minimum > cond.maximum:
        raise RuleError(f"{path}: min {cond.minimum:g} is above max {cond.maximum:g}")
    if "contains" in spec:
        cond.contains = _text_list(f"{path}.contains", spec["contains"])
    if "present" in spec:
        if not isinstance(spec["present"], bool):
            raise RuleError(f"{path}.present: expected true or false")
        cond.present = spec["present"]
    return cond


def compile_match(match: Mapping[str, Any], path: str = "match") -> Condition:
    """Compile a rule's ``match`` table (all of its keys must hold).

    Raises
    ------
    RuleError
        Naming the offending key, e.g. ``match.SliceThickness.max: expected a number``.
    """
    if not isinstance(match, Mapping):
        raise RuleError(f"{path}: expected a table")
    parts: list[Condition] = []
    for key, spec in match.items():
        sub = f"{path}.{key}"
        if key in ("all", "any"):
            if not isinstance(spec, list) or not spec:
                raise RuleError(f"{sub}: expected a non-empty list of tables")
            inner = [compile_match(item, f"{sub}[{i}]") for i, item in enumerate(spec)]
            parts.append(_All(sub, inner) if key == "all" else _Any(sub, inner))
        elif key == "not":
            parts.append(_Not(sub, compile_match(spec, sub)))
        else:
            parts.append(_attribute(sub, key, spec))
    return _All(path, parts)


@dataclass
class RuleMatch:
    """The outcome of one rule on one series."""

    rule: str
    matched: bool
    fallback: bool
    explanations: list[Explanation]

    def failures(self) -> list[Explanation]:
        """The conditions that did not hold."""
        return [e for e in self.explanations if not e.ok]


def evaluate_rules(rules: Sequence[Any], attrs: Mapping[str, Any]) -> list[RuleMatch]:
    """Evaluate every rule on one series' attributes, in priority order.

    *rules* are :class:`~dicom_node.config.RuleSettings`.  Every rule that
    matches applies; fallback rules apply only when no other rule matched
    (their ``matched`` says so).
    """
    ordered = sorted(rules, key=lambda r: -r.priority)
    results: list[RuleMatch] = []
    for rule in ordered:
        trace: list[Explanation] = []
        ok = compile_match(rule.match).evaluate(attrs, trace)
        results.append(RuleMatch(rule.name, ok, rule.fallback, trace))
    regular = any(r.matched for r in results if not r.fallback)
    for r in results:
        if r.fallback:
            r.matched = r.matched and not regular
    return results
