"""Sparse graphs: normalised user–item bipartite adjacency and item–item kNN graphs (CSR tensors), and
propagation over them (:func:`fixed_spmm`, LightGCN's :func:`propagate_sum` / :func:`propagate_mean`)."""

from raymmrec.graph.build import knn_graph, mixed_knn_graph, modality_weights, normalized_adjacency
from raymmrec.graph.propagate import fixed_spmm, propagate_mean, propagate_sum

__all__ = ["fixed_spmm", "knn_graph", "mixed_knn_graph", "modality_weights", "normalized_adjacency",
           "propagate_mean", "propagate_sum"]
