"""Tests of the rewardmap package (pytest)."""
