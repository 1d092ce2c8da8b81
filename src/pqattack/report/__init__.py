"""Stage 6, report: results records rendered as tables."""

from .tables import load_rows, markdown_table, render_tables, transfer_tables

__all__ = ["load_rows", "markdown_table", "render_tables", "transfer_tables"]
