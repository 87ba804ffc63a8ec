"""Full-ranking top-K evaluation (MMRec protocol): :class:`Evaluator` and the metric helpers."""

from raymmrec.eval.evaluator import Evaluator, joint_metric_rows, joint_metric_sums
from raymmrec.eval.metrics import METRICS, metric_names, ranking_metrics, topk_ordered

__all__ = ["Evaluator", "joint_metric_rows", "joint_metric_sums", "METRICS", "metric_names", "ranking_metrics",
           "topk_ordered"]
