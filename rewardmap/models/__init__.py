"""Qwen2.5-VL models: loading (policy, reference, processor), lora (peft adapters), tiny (offline test model),
logprobs (per-token log-probs of completions). Import the submodules directly; this file stays import-light."""
