"""Markdown for report.md: tables, the claims table, figures, timing and versions."""

from experiments.runtime.claims import claims_markdown, format_measured


def markdown_table(rows, columns=None):
    """Renders a list of dicts as a markdown table.

    Args:
        rows: Dicts with the same keys.
        columns: Column order (defaults to the first row's keys).

    Returns:
        The table as a string ("(empty)" when there are no rows).
    """
    if not rows:
        return "(empty)"
    columns = list(columns or rows[0].keys())

    def cell(v):
        if isinstance(v, float):
            return format_measured(v)
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def render(results, command, sections, figures):
    """The whole report.md of a run.

    Args:
        results: The results.json dict.
        command: The command line that reproduces the run.
        sections: (heading, markdown) pairs written by the experiment.
        figures: (caption, relative PNG path) pairs.

    Returns:
        The report as a string.
    """
    from experiments.runtime.claims import Claim

    claims = []
    for c in results.get("claims", []):
        claim = Claim(c["text"], c["measured"], c["rule"], c.get("detail", ""))
        claims.append(claim)
    out = [f"# {results['experiment']}", "", f"Status: **{results['status']}**", "",
           "```", command, "```", ""]
    if claims:
        n_ok = sum(c.verdict == "confirmed" for c in claims)
        out += [f"## Claims ({n_ok}/{len(claims)} confirmed)", "", claims_markdown(claims), ""]
    for heading, markdown in sections:
        out += [f"## {heading}", "", markdown, ""]
    for caption, path in figures:
        out += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    timing = results.get("timing", {})
    env = results.get("environment", {})
    out += ["## Run", "", markdown_table([
        {"key": "strategy", "value": env.get("strategy")},
        {"key": "replicas", "value": env.get("replicas")},
        {"key": "workers", "value": env.get("workers")},
        {"key": "wall time (s)", "value": round(timing.get("seconds", 0.0), 1)},
        *({"key": k, "value": v} for k, v in env.get("versions", {}).items()),
    ]), ""]
    out += ["## Config", "", markdown_table(
        [{"flag": k, "value": v} for k, v in results.get("config", {}).items()]), ""]
    return "\n".join(out)
