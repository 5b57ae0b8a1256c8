"""Load a Qwen2.5-VL policy, its frozen reference and its processor from a local directory (dtype, attention)."""

import importlib.util
import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from rewardmap.errors import InputError

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


def resolve_attn_implementation(requested: str | None, device: torch.device) -> str:
    """An explicit choice wins; else flash_attention_2 on CUDA when flash_attn is importable, else sdpa."""
    if requested is not None:
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_policy(
    model_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """The trainable policy in train mode on `device` (default: CUDA if present), weights in `dtype`."""
    path = check_model_dir(model_dir)
    target = torch.device(device) if device is not None else default_device()
    torch_dtype = resolve_dtype(dtype, target)
    attn = resolve_attn_implementation(attn_implementation, target)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype, attn_implementation=attn)
    model.to(target)
    if gradient_checkpointing:
        # Non-reentrant checkpointing also works when only LoRA adapters (not the inputs) require grad.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    logger.info("loaded policy %s (%s, %s, %s) on %s", path, type(model).__name__, torch_dtype, attn, target)
    return model


def load_reference(
    model_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """A frozen copy of the model for the KL term: eval mode, no parameter requires grad."""
    model = load_policy(model_dir, device=device, dtype=dtype, attn_implementation=attn_implementation)
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
