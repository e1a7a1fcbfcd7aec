"""Executable claims: "claim text, measured value, pass rule" -> confirmed / refuted.

A rule is a small comparison string evaluated against the measured value, so the report
shows exactly what was tested: "< 0.01", ">= 0.9", "in [0.5, 2]", "== true".
"""

import dataclasses
import math
import re

_RULE = re.compile(
    r"^\s*(?:(?P<op><=|>=|<|>|==)\s*(?P<value>\S+)|in\s*\[\s*(?P<lo>[^,\]]+)\s*,\s*(?P<hi>[^\]]+)\])\s*$"
)


def _number(text):
    text = text.strip().lower()
    if text in ("true", "false"):
        return text == "true"
    return float(text)


def evaluate_rule(rule, measured):
    """Evaluates `rule` on `measured`.

    Args:
        rule: "< x", "<= x", "> x", ">= x", "== x" (x a number, true or false) or "in [a, b]".
        measured: A number or bool; None or NaN never passes.

    Returns:
        Whether the rule holds.

    Raises:
        ValueError: If the rule cannot be parsed.
    """
    match = _RULE.match(rule)
    if not match:
        raise ValueError(f"cannot parse claim rule {rule!r}")
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        return False
    if match["op"]:
        bound = _number(match["value"])
        return {
            "<": lambda: measured < bound, "<=": lambda: measured <= bound,
            ">": lambda: measured > bound, ">=": lambda: measured >= bound,
            "==": lambda: measured == bound,
        }[match["op"]]()
    return _number(match["lo"]) <= measured <= _number(match["hi"])


@dataclasses.dataclass
class Claim:
    """One claim from the notes, as tested by a run.

    Attributes:
        text: The claim in words.
        measured: The measured number (or bool).
        rule: The pass rule applied to `measured`.
        detail: What `measured` is, e.g. "std(layer 20) / std(layer 1)".
        verdict: "confirmed" or "refuted".
    """

    text: str
    measured: object
    rule: str
    detail: str = ""
    verdict: str = dataclasses.field(init=False)

    def __post_init__(self):
        if isinstance(self.measured, (bool,)):
            pass
        elif self.measured is not None:
            self.measured = float(self.measured)
        self.verdict = "confirmed" if evaluate_rule(self.rule, self.measured) else "refuted"

    def as_dict(self):
        return dataclasses.asdict(self)


def format_measured(value):
    """A compact, readable rendering of a measured value."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.3g}"
    return f"{value:.4g}"


def claims_markdown(claims):
    """A markdown table: claim | rule | measured | verdict."""
    rows = ["| claim | rule | measured | verdict |", "|---|---|---|---|"]
    for c in claims:
        measured = format_measured(c.measured) + (f" ({c.detail})" if c.detail else "")
        mark = "✅ confirmed" if c.verdict == "confirmed" else "❌ refuted"
        text, measured = (v.replace("|", "\\|") for v in (c.text, measured))
        rows.append(f"| {text} | `{c.rule}` | {measured} | {mark} |")
    return "\n".join(rows)
