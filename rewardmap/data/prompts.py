"""The one place prompts are built: system message, then the map image and the row's question (as released); and
their tensors."""

import logging
from collections.abc import Sequence
from typing import Any

from rewardmap.errors import InputError

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are a helpful assistant."


def build_messages(question: str, with_image: bool = True) -> list[dict[str, Any]]:
    """Chat messages for one question: the system message, then a user turn holding the image and the question.

    The question already carries its answer-format instruction; nothing is added per type. The release writes the
    user turn as `<image>\\n{question.strip()}`, so the text part starts with that newline and the rendered prompt is
    token-for-token the released one.
    """
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {
            "role": "user",
            "content": ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": "\n" + question.strip()}],
        },
    ]


def render_prompt(processor: Any, question: str, with_image: bool = True) -> str:
    """The prompt text for one question, rendered with the processor's chat template plus the generation prompt.

    It holds one `<|vision_start|><|image_pad|><|vision_end|>` placeholder; the processor (or vLLM) expands it to the
    image's visual tokens.
    """
    messages = build_messages(question, with_image)
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_tensors(
    processor: Any, prompts: Sequence[str], images: Sequence[Any] | None, max_length: int | None = None
) -> Any:
    """Processor output for rendered prompts, left-padded: input_ids/attention_mask (B, P), and pixel_values with
    image_grid_thw when `images` (one per prompt) is given. With `max_length`, a longer prompt is refused."""
    if images is not None and len(images) != len(prompts):
        raise InputError(f"got {len(prompts)} prompts but {len(images)} images; pass one image per prompt")
    image_list = list(images) if images is not None else None
    inputs = processor(text=list(prompts), images=image_list, padding=True, padding_side="left", return_tensors="pt")
    longest = int(inputs["attention_mask"].sum(-1).max())
    if max_length is not None and longest > max_length:
        raise InputError(
            f"a prompt has {longest} tokens, over data.max_prompt_length={max_length}; lower data.max_pixels or raise "
            "data.max_prompt_length"
        )
    return inputs
