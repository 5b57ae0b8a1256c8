"""The one place prompts are built: system message, then the map image and the row's question (as released)."""

import logging
from typing import Any

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
