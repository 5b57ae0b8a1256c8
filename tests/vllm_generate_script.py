"""Test helper: `python tests/vllm_generate_script.py MODEL_DIR` loads MODEL_DIR in vLLM (CPU) and prints, as one JSON
line, the greedy token ids (up to 8) of a text prompt and of a prompt with a small image."""

import json
import sys

from PIL import Image
from transformers import AutoProcessor
from vllm import LLM, SamplingParams

from rewardmap.data.prompts import render_prompt


def main() -> None:
    model_dir = sys.argv[1]
    processor = AutoProcessor.from_pretrained(model_dir)
    # On CPU the memory fraction is of the whole RAM; a fixed small KV cache keeps the test beside other processes.
    llm = LLM(
        model=model_dir,
        max_model_len=4096,
        limit_mm_per_prompt={"image": 1},
        seed=0,
        enforce_eager=True,
        gpu_memory_utilization=0.2,
        kv_cache_memory_bytes=512 * 2**20,
    )
    image = Image.linear_gradient("L").convert("RGB").resize((112, 84))
    prompts = [
        {"prompt": render_prompt(processor, "Name a station.", with_image=False)},
        {"prompt": render_prompt(processor, "Name a station."), "multi_modal_data": {"image": image}},
    ]
    outputs = llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0))
    ids = [list(output.outputs[0].token_ids) for output in outputs]
    print(json.dumps({"text": ids[0], "image": ids[1]}))


if __name__ == "__main__":
    main()
