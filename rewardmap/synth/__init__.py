"""Synthetic transit maps: procedural networks, rendered maps and questions of all six ReasonMap types."""

from rewardmap.synth.dataset import generate_dataset

__all__ = ["generate_dataset"]
