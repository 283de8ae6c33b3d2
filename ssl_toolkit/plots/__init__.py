"""Figures written as PNG into run directories, drawn through matplotlib's object API (``Figure``),
never pyplot: importing this never switches the backend of a notebook or script, no figure registry
leaks, and no display is needed (also in DataLoader-forked processes).

- :mod:`~ssl_toolkit.plots.curves`: loss terms, online-probe accuracy, collapse metrics, learning rate
  from a run's ``metrics.csv``;
- :mod:`~ssl_toolkit.plots.embeddings`: a 2-D projection (PCA, or t-SNE with scikit-learn) of
  embeddings coloured by label;
- :mod:`~ssl_toolkit.plots.atariari`: AtariARI per-category F1 beside the paper's columns;
- :mod:`~ssl_toolkit.plots.run_dir`: all of them from what a run directory holds
  (``ssl-toolkit plot RUN_DIR``).
"""
import importlib

# public name -> module that defines it; imported on first use (matplotlib stays out of CLI start-up)
_LAZY = {
    "plot_atariari": "ssl_toolkit.plots.atariari",
    "plot_collapse": "ssl_toolkit.plots.curves",
    "plot_curves": "ssl_toolkit.plots.curves",
    "plot_losses": "ssl_toolkit.plots.curves",
    "plot_online_probe": "ssl_toolkit.plots.curves",
    "read_metrics": "ssl_toolkit.plots.curves",
    "embed_checkpoint": "ssl_toolkit.plots.embeddings",
    "plot_embeddings": "ssl_toolkit.plots.embeddings",
    "project_2d": "ssl_toolkit.plots.embeddings",
    "plot_run": "ssl_toolkit.plots.run_dir",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ssl_toolkit.plots' has no attribute {name!r}")
