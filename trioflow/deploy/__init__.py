"""Deployment helpers: local clusters."""

from .local import InProcessCluster, LocalCluster, open_cluster

__all__ = ["InProcessCluster", "LocalCluster", "open_cluster"]
