"""GRPO: the pure loss math, the training step and loop, its backends (FSDP2, DeepSpeed), checkpoints and metrics."""
