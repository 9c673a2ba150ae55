"""See a network and its predictions: layer table, data-flow diagram, charts, heat maps.

* ``summary(model)``: every layer's output shape, parameters and multiply-adds (summary.py);
* ``network_graph(model)`` / ``write_graph(model, path)``: the Graphviz diagram (graph.py);
* ``prediction_chart``, ``evaluation_charts``, ``training_curves``: matplotlib PNGs (plots.py);
* ``explain(model, image)`` / ``overlay(photo, explanation, path)``: Grad-CAM, Grad-CAM++ and
  CAM heat maps (cam.py).

This is the top layer of the package: it uses models/, data/ and tasks/, and nothing below
imports it. graphviz and matplotlib are imported only by the functions that need them.
"""
from __future__ import annotations

from ..lazy import lazy_exports
from .summary import Summary, SummaryRow, summary

_LAZY = {
    "network_graph": ".graph", "write_graph": ".graph",
    "prediction_chart": ".plots", "evaluation_charts": ".plots", "training_curves": ".plots",
    "explain": ".cam", "overlay": ".cam", "Explanation": ".cam",
}

__all__ = ["Summary", "SummaryRow", "summary", *_LAZY]

__getattr__ = lazy_exports(__name__, _LAZY)
