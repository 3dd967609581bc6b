"""What people read: the printed plan (module table, autograd probe, optimizer groups,
schedule, predicted cost) and the comparison report of finished runs (Markdown,
JSON and a plot), and the confusion matrix plot of an evaluation."""

from freezetune.report.plan_view import (
    ModuleRow,
    ParamRow,
    ProbeRow,
    module_rows,
    param_rows,
    probe_autograd,
    render_cache,
    render_estimate,
    render_groups,
    render_params,
    render_plan,
    render_schedule,
)
from freezetune.report.plot import plot_confusion, plot_report
from freezetune.report.report import MEMORY_KINDS, build_report, load_run, markdown_table, text_table, write_report

__all__ = [
    "MEMORY_KINDS",
    "ModuleRow",
    "ParamRow",
    "ProbeRow",
    "build_report",
    "load_run",
    "markdown_table",
    "module_rows",
    "param_rows",
    "plot_confusion",
    "plot_report",
    "probe_autograd",
    "render_cache",
    "render_estimate",
    "render_groups",
    "render_params",
    "render_plan",
    "render_schedule",
    "text_table",
    "write_report",
]
