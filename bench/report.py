"""How every benchmark reports: a plain-text table for people, then one JSON line for machines.

The JSON line is always the last line of stdout and starts with `{"bench": ...`, so
`python -m bench.train | tail -n 1 | jq .` reads the results.
"""

from __future__ import annotations

import json
import sys


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """columns: (key, header). Floats get 3 significant digits (or thousands separators if large)."""

    def cell(v) -> str:
        if isinstance(v, float):
            if v != v:
                return "-"
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        return "-" if v is None else str(v)

    table = [[header for _, header in columns]] + [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit_json(bench: str, payload: dict) -> None:
    """The final machine-readable line."""
    sys.stdout.flush()
    print(json.dumps({"bench": bench, **payload}, sort_keys=False, default=float), flush=True)
