"""RewardMap: multi-stage GRPO with a difficulty-aware detail reward for transit-map reasoning."""

__version__ = "0.1.0"
