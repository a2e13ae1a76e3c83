"""Self-contained interactive HTML reports: one per model × concept, comparisons of two
models, and a report-set index (DESIGN: reports/)."""
from .build import compare_name, render_compare, render_index, render_report, render_set, report_name
from .data import ReportError

__all__ = ["ReportError", "compare_name", "render_compare", "render_index", "render_report", "render_set",
           "report_name"]
