"""The outputs of a run: results.json, report.md (a jinja2 template), PNG plots and the terminal summary."""

from benchmarks.report.documents import markdown, write_json, write_markdown
from benchmarks.report.environment import environment
from benchmarks.report.plots import PLOTS, write_plots
from benchmarks.report.tables import print_summary

__all__ = ["PLOTS", "environment", "markdown", "print_summary", "write_json", "write_markdown", "write_plots"]
