"""The difficulty-aware detail reward (REWARD_SPEC.md): pure stdlib, `released` and `corrected` variants."""

from rewardmap.reward.answer import answer_is_correct, extract_answer
from rewardmap.reward.metro import load_metro
from rewardmap.reward.score import RewardBreakdown, compute_score, score_batch

__all__ = ["RewardBreakdown", "answer_is_correct", "compute_score", "extract_answer", "load_metro", "score_batch"]
