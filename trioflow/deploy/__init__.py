"""Deployment helpers: local clusters."""

from .local import InProcessCluster, LocalCluster, cluster_for_client, open_cluster
from .utils import nprocesses_nthreads

__all__ = ["InProcessCluster", "LocalCluster", "cluster_for_client", "nprocesses_nthreads", "open_cluster"]
