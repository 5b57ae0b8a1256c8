"""Prompt construction: the released system/user layout, rendered with the real Qwen2.5-VL chat template."""

from transformers import AutoProcessor

from rewardmap.data.images import load_image
from rewardmap.data.prompts import SYSTEM_PROMPT, build_messages, render_prompt

QUESTION = 'Is 大学城站 on Line 1? Please put your answer (yes or no) in one "\\boxed{}".'


def test_messages_hold_system_then_image_then_question():
    messages = build_messages("  " + QUESTION + "\n")
    assert messages[0] == {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}
    assert messages[1]["role"] == "user"
    assert messages[1]["content"] == [{"type": "image"}, {"type": "text", "text": "\n" + QUESTION}]


def test_rendered_prompt_is_the_released_one(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    prompt = render_prompt(processor, QUESTION)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|image_pad|><|vision_end|>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    # The release renders `<image>\n{question}` with the tokenizer's template, then swaps in the vision tokens.
    released = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"<image>\n{QUESTION}"}], tokenize=False, add_generation_prompt=True
    ).replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>")
    assert prompt == released


def test_processor_expands_the_placeholder_for_a_real_map(tiny_model_dir, maps_root):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    image = load_image("norway/oslo.png", root=maps_root, max_pixels=200_000)
    inputs = processor(text=[render_prompt(processor, QUESTION)], images=[image], return_tensors="pt")
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    visual_tokens = int((inputs["input_ids"] == image_pad).sum())
    assert visual_tokens == image.width * image.height // (28 * 28)  # resized exactly as the processor would
