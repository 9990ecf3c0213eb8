"""The run report: `<out>/report.md` and `<out>/plots/*.png`, from the run's own files.

`write_report` reads every stage's summary.json and metrics.jsonl, has every finished model answer
the same held-out prompts (reused while nothing changed), draws the curves and writes the text.
"""

from picochat.report.write import write_report

__all__ = ["write_report"]
