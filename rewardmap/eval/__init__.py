"""Benchmark scoring: ReasonMap routes and map score, ReasonMap-Plus answers, and their aggregation."""

from rewardmap.eval.aggregate import aggregate_plus, aggregate_reasonmap
from rewardmap.eval.plus import score_plus
from rewardmap.eval.routes import score_reasonmap

__all__ = ["aggregate_plus", "aggregate_reasonmap", "score_plus", "score_reasonmap"]
