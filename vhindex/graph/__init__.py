"""Anchor-graph knowledge for the hashing models: K-means anchors, nearest anchors, implicit graph, pairs."""

from vhindex.graph.interfaces import AssignStats, ChunkSource, GraphExecutor

__all__ = ["AssignStats", "ChunkSource", "GraphExecutor"]
from vhindex.graph.kmeans import (  # noqa: E402
    KMeansResult,
    NonFiniteDataError,
    assign_chunk,
    assign_stats,
    fit_kmeans,
    kmeans_parallel,
    kmeans_plusplus,
    nearest_k,
)
from vhindex.graph.sequential import ArrayChunkSource, SequentialExecutor  # noqa: E402

__all__ += ["KMeansResult", "NonFiniteDataError", "assign_chunk", "assign_stats", "fit_kmeans", "kmeans_parallel",
            "kmeans_plusplus", "nearest_k", "ArrayChunkSource", "SequentialExecutor"]
from vhindex.graph.anchor_graph import AnchorGraph, AnchorLevel, anchor_graph, nearest_anchors  # noqa: E402
from vhindex.graph.pairs import PairSampler  # noqa: E402

__all__ += ["AnchorGraph", "AnchorLevel", "anchor_graph", "nearest_anchors", "PairSampler"]
