"""Load a Qwen2.5-VL policy, its frozen reference and its processor from a local directory (dtype, attention)."""

import importlib.util
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationConfig,
    PreTrainedModel,
    ProcessorMixin,
)

from rewardmap.errors import InputError
from rewardmap.models.vision_attention import batch_vision_windows

logger = logging.getLogger(__name__)

MODEL_TYPES = ("qwen2_5_vl",)
DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
ATTENTION_PARTS = ("text", "vision")
"""The parts of a Qwen2.5-VL whose attention is chosen apart: the language model and the vision tower."""
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def check_model_dir(model_dir: str | Path) -> Path:
    """`model_dir` as a Path if it holds a Qwen2.5-VL config, weights and processor files; else one clear error."""
    path = Path(model_dir)
    expected = (
        "a Qwen2.5-VL model directory: config.json with model_type 'qwen2_5_vl', *.safetensors weights, "
        f"tokenizer files ({' or '.join(TOKENIZER_FILES)}) and processor files ({' or '.join(PROCESSOR_FILES)})"
    )
    if not path.is_dir():
        raise FileNotFoundError(f"model path {path} does not exist or is not a directory; expected {expected}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model path {path} has no config.json; expected {expected}")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise InputError(f"{config_file} is not valid JSON ({err}); expected {expected}") from err
    if model_type not in MODEL_TYPES:
        raise InputError(f"{config_file} has model_type {model_type!r}; expected {expected}")
    missing = [
        " or ".join(names)
        for names in (TOKENIZER_FILES, PROCESSOR_FILES)
        if not any((path / name).is_file() for name in names)
    ]
    if not any(path.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise FileNotFoundError(f"model path {path} lacks {', '.join(missing)}; expected {expected}")
    return path


def default_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """An explicit dtype (torch dtype, 'bf16'/'fp16'/'fp32' or long names) wins; default bf16 on GPU, fp32 on CPU."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def compute_dtype(model_dtype: str, device: torch.device) -> torch.dtype:
    """model.dtype as the forward/backward dtype of both training backends and the reference: auto is bf16 on GPU
    and fp32 on CPU."""
    return resolve_dtype(None if model_dtype == "auto" else model_dtype, device)


def flash_attn_available(device: torch.device) -> bool:
    """flash_attention_2 can run: a CUDA device and the flash_attn package importable."""
    return device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None


def resolve_attention(requested: str | Mapping[str, str], device: torch.device, shares_prefix: bool) -> dict[str, str]:
    """Each part's attention, {"text": ..., "vision": ...}, from model.attn_implementation (one value or per part).

    auto resolves per part: the vision tower takes flash_attention_2 where it can run (its windows in one varlen
    call), else sdpa; the language model takes sdpa whenever the shared prefix can run (`shares_prefix`: its mask
    needs sdpa, and it saves more than flash attention gains), else flash_attention_2 where it can run, else sdpa.
    """
    parts = dict.fromkeys(ATTENTION_PARTS, requested) if isinstance(requested, str) else dict(requested)
    flash = flash_attn_available(device)
    if parts.get("vision", "auto") == "auto":
        parts["vision"] = "flash_attention_2" if flash else "sdpa"
    if parts.get("text", "auto") == "auto":
        parts["text"] = "flash_attention_2" if flash and not shares_prefix else "sdpa"
    return parts


def _hf_attention(attention: str | Mapping[str, str] | None, device: torch.device) -> dict[str, str]:
    """transformers' per-sub-config attention argument for `attention` (None: auto, no shared prefix)."""
    parts = resolve_attention("auto" if attention is None else attention, device, shares_prefix=False)
    return {"": parts["text"], "text_config": parts["text"], "vision_config": parts["vision"]}


def _ready(model: PreTrainedModel, gradient_checkpointing: bool) -> PreTrainedModel:
    """`model` in train mode, gradient checkpointing on if asked, the vision windows batched under sdpa."""
    if model.config.vision_config._attn_implementation == "sdpa":
        batch_vision_windows(model)
    if gradient_checkpointing:
        # Non-reentrant checkpointing also works when only LoRA adapters (not the inputs) require grad.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    return model


def load_policy(
    model_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | Mapping[str, str] | None = None,
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """The trainable policy in train mode on `device` (default: CUDA if present), weights in `dtype` ("auto": the
    checkpoint's own).

    attn_implementation: one value for every part or {"text": ..., "vision": ...} (auto or None: see
    `resolve_attention`).
    """
    path = check_model_dir(model_dir)
    target = torch.device(device) if device is not None else default_device()
    torch_dtype = "auto" if dtype == "auto" else resolve_dtype(dtype, target)
    attention = _hf_attention(attn_implementation, target)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype, attn_implementation=attention)
    model.to(target)
    logger.info("loaded policy %s (%s, %s, %s) on %s", path, type(model).__name__, torch_dtype, attention, target)
    return _ready(model, gradient_checkpointing)


def empty_policy(
    model_dir: str | Path,
    *,
    dtype: torch.dtype | str,
    attn_implementation: str | Mapping[str, str],
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """The policy's structure on the meta device, no weights read (a sharded run fills its shards from rank 0)."""
    path = check_model_dir(model_dir)
    attention = _hf_attention(attn_implementation, torch.device("meta"))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(
            AutoConfig.from_pretrained(path),
            dtype=resolve_dtype(dtype, torch.device("meta")),
            attn_implementation=attention,
        )
    if (path / "generation_config.json").is_file():  # what from_pretrained reads beside the weights
        model.generation_config = GenerationConfig.from_pretrained(path)
    return _ready(model, gradient_checkpointing)


def load_reference(
    model_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | Mapping[str, str] | None = None,
) -> PreTrainedModel:
    """A frozen copy of the model for the KL term: eval mode, no parameter requires grad."""
    model = load_policy(model_dir, device=device, dtype=dtype, attn_implementation=attn_implementation)
    return freeze(model)


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """`model` in eval mode with no parameter requiring grad (the frozen reference)."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_processor(
    model_dir: str | Path, *, min_pixels: int | None = None, max_pixels: int | None = None
) -> ProcessorMixin:
    """The model's processor with the image pixel budget set and left padding (batched prompts for generation)."""
    path = check_model_dir(model_dir)
    processor = AutoProcessor.from_pretrained(path)
    current = processor.image_processor.size  # a dict or a SizeDict, depending on how it was loaded
    size = {
        "shortest_edge": current["shortest_edge"] if min_pixels is None else min_pixels,
        "longest_edge": current["longest_edge"] if max_pixels is None else max_pixels,
    }
    if size["shortest_edge"] > size["longest_edge"]:
        raise InputError(f"min_pixels {size['shortest_edge']} exceeds max_pixels {size['longest_edge']}")
    processor.image_processor.size = size
    processor.tokenizer.padding_side = "left"
    return processor
