"""Stage 6, report: results records rendered as tables; the paper's tables beside ours (``paper``); the full
reproduction report with figures (``python -m pqattack.report``, ``report.build``)."""

from .paper import compare, comparisons, load_paper
from .tables import markdown_table, render_tables, transfer_tables

__all__ = ["compare", "comparisons", "load_paper", "markdown_table", "render_tables",
           "transfer_tables"]
