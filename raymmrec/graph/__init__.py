"""Sparse graphs: normalised user–item bipartite adjacency and item–item kNN graphs (CSR tensors)."""

from raymmrec.graph.build import knn_graph, mixed_knn_graph, modality_weights, normalized_adjacency

__all__ = ["knn_graph", "mixed_knn_graph", "modality_weights", "normalized_adjacency"]
