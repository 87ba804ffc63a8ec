"""Full-ranking top-K evaluation (MMRec protocol): :class:`Evaluator` and the metric helpers."""

from raymmrec.eval.evaluator import Evaluator, items_by_user, joint_metric_rows, joint_metric_sums, mask_unrankable
from raymmrec.eval.metrics import METRICS, metric_names, ranking_metrics, topk_ordered

__all__ = ["Evaluator", "items_by_user", "joint_metric_rows", "joint_metric_sums", "mask_unrankable", "METRICS",
           "metric_names", "ranking_metrics", "topk_ordered"]
