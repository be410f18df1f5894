"""Anchor-graph knowledge for the hashing models: K-means anchors, nearest anchors, implicit graph, pairs."""

from vhindex.graph.interfaces import AssignStats, ChunkSource, GraphExecutor

__all__ = ["AssignStats", "ChunkSource", "GraphExecutor"]
