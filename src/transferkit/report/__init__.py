"""Run reports: metrics, figures and a self-contained HTML page.

* :func:`classification_metrics` turns predictions into JSON-serialisable headline and per-class
  metrics and a confusion matrix.
* :func:`plot_confusion`, :func:`plot_learning_curve`, :func:`plot_projection` and
  :func:`plot_comparison` render figures off-screen to PNG bytes (Agg canvas, no pyplot state).
* :func:`projection_2d` maps a feature matrix to 2-D (t-SNE, or PCA for tiny inputs) for
  :func:`plot_projection`.
* :func:`write_report` writes one HTML file with inline CSS and embedded images, atomically.
"""

from transferkit.report.html import write_report
from transferkit.report.metrics import classification_metrics
from transferkit.report.plots import (
    plot_comparison,
    plot_confusion,
    plot_learning_curve,
    plot_projection,
    plot_pseudo_labels,
    plot_scores_vs_accuracy,
    projection_2d,
)

__all__ = [
    "classification_metrics",
    "write_report",
    "projection_2d",
    "plot_confusion",
    "plot_learning_curve",
    "plot_projection",
    "plot_comparison",
    "plot_pseudo_labels",
    "plot_scores_vs_accuracy",
]
