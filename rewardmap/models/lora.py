"""LoRA adapters on the language model (peft) and the reference policy as the same model with adapters disabled."""

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from rewardmap.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def apply_lora(
    model: PreTrainedModel,
    *,
    rank: int,
    alpha: int,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    dropout: float = 0.0,
) -> PeftModel:
    """Wrap `model` with LoRA adapters on the named Linear layers of its language model; only adapters train.

    The vision tower also has `gate_proj`/`up_proj`/`down_proj`; a regex keeps the adapters out of it.
    """
    if rank <= 0 or alpha <= 0:
        raise InputError(f"LoRA rank ({rank}) and alpha ({alpha}) must be positive")
    if not target_modules:
        raise InputError("LoRA target_modules is empty; name Linear layers such as q_proj, v_proj")
    pattern = rf".*language_model\.layers\.\d+\.\w+\.({'|'.join(target_modules)})"
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern)
    peft_model = get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info("LoRA r=%d alpha=%d on %s: %d of %d parameters train", rank, alpha, target_modules, trainable, total)
    return peft_model


@contextlib.contextmanager
def reference_policy(model: PeftModel) -> Iterator[PeftModel]:
    """Inside the block `model` computes the frozen reference: adapters off, no autograd graph, no weight copy."""
    if not isinstance(model, PeftModel):
        raise InputError(
            f"reference_policy needs a LoRA (peft) model, got {type(model).__name__}; "
            "for full fine-tuning load a separate frozen copy with load_reference()"
        )
    with model.disable_adapter(), torch.no_grad():
        yield model
