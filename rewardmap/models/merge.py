"""Merge a training checkpoint (unsharded, FSDP2, DeepSpeed ZeRO) or LoRA adapter into a plain HF Qwen2.5-VL model.

`rewardmap merge CKPT_DIR OUT_DIR [--dtype bf16|fp16|fp32] [--base-model DIR] [--overwrite] [--verify]`.

The output (config.json, safetensors shards, generation_config.json, tokenizer and processor files with the chat
template) is the layout transformers and vLLM load (LLaMA-Factory and VLMEvalKit load through transformers). It is
written to a temporary sibling directory and renamed into place, so a crash never leaves a half-written OUT_DIR.
Sharded checkpoints are read without a process group; their `.metadata` (DCP) and DeepSpeed files are pickles written
by this project's trainer, the only pickles read here. A LoRA run's shards hold only the adapters: they are read into
the base model (model.path of the run, or --base-model) wrapped with the saved adapter config, then merged.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig, PreTrainedModel

from rewardmap.checkpoint_files import MARKER, MODEL_FILES, SHARDS, verify
from rewardmap.errors import InputError
from rewardmap.models.loading import PROCESSOR_FILES, check_model_dir, load_processor
from rewardmap.models.logprobs import build_prompt_inputs

logger = logging.getLogger(__name__)

OUTPUT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
NOT_PROCESSOR_FILES = ("config.json", "generation_config.json", "adapter_config.json")
VERIFY_QUESTION = "Which line connects the two stations, and how many stops are there?"


def merge_checkpoint(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "bf16",
    base_model: str | Path | None = None,
    overwrite: bool = False,
    verify: bool = False,
    max_shard_size: str = "5GB",
) -> Path:
    """Write the checkpoint's (or LoRA adapter's, merged into its base) model as a plain HF directory; returns it.

    With `verify`, also runs the checkpoint's and the merged model's forward pass (fp32, a text prompt and an image
    prompt) and logs the largest logit difference.
    """
    ckpt, out = Path(ckpt_dir), Path(out_dir)
    if dtype not in OUTPUT_DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; use one of {sorted(OUTPUT_DTYPES)}")
    _check_paths(ckpt, out, overwrite)
    model, processor_dir = load_checkpoint_model(ckpt, base_model=base_model, dtype=OUTPUT_DTYPES[dtype])
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        _copy_processor_files(processor_dir, tmp)
        check_model_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    del model
    _replace(tmp, out)
    logger.info("merged %s into %s (%s)", ckpt, out, dtype)
    if verify:
        difference = verify_merge(ckpt, out, base_model=base_model)
        logger.info("verify: largest logit difference between %s and %s is %.3g", ckpt, out, difference)
    return out


def load_checkpoint_model(
    ckpt_dir: str | Path, *, dtype: torch.dtype, base_model: str | Path | None = None, merge_lora: bool = True
) -> tuple[torch.nn.Module, Path]:
    """The model a checkpoint or LoRA adapter directory holds (eval mode, CPU) and the directory of its processor.

    A LoRA adapter is merged into its base in fp32 and then cast to `dtype`, unless `merge_lora` is False (then the
    peft model comes back, in fp32).
    """
    ckpt = Path(ckpt_dir)
    if (ckpt / "adapter_config.json").is_file():
        return _load_lora(ckpt, base_model, dtype, merge_lora)
    if not (ckpt / SHARDS).is_dir():
        raise InputError(
            f"{ckpt} is neither a LoRA adapter directory (adapter_config.json) nor a complete training checkpoint "
            f"({SHARDS}/ and {MARKER}); pass <run>/checkpoints/step_N"
        )
    verify(ckpt)
    model = _load_sharded(ckpt, base_model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload() if merge_lora else model
    return model.to(dtype).eval(), ckpt / MODEL_FILES


def verify_merge(ckpt_dir: str | Path, out_dir: str | Path, *, base_model: str | Path | None = None) -> float:
    """Largest absolute logit difference (fp32) between the checkpoint's model and the merged one, over a text-only
    prompt and a prompt with a small image."""
    reference, _ = load_checkpoint_model(ckpt_dir, base_model=base_model, dtype=torch.float32, merge_lora=False)
    merged = AutoModelForImageTextToText.from_pretrained(check_model_dir(out_dir), dtype=torch.float32).eval()
    processor = load_processor(out_dir)
    image = Image.linear_gradient("L").convert("RGB").resize((112, 84))
    batches = [
        build_prompt_inputs(processor, [VERIFY_QUESTION], None),
        build_prompt_inputs(processor, [VERIFY_QUESTION], [image]),
    ]
    with torch.no_grad():
        return max((reference(**batch).logits - merged(**batch).logits).abs().max().item() for batch in batches)


def _check_paths(ckpt: Path, out: Path, overwrite: bool) -> None:
    """Refuses a missing checkpoint, an output inside (or holding) the checkpoint, and an existing output."""
    if not ckpt.is_dir():
        raise FileNotFoundError(
            f"checkpoint {ckpt} does not exist; pass a checkpoint directory (<run>/checkpoints/step_N) or a LoRA "
            "adapter directory"
        )
    ckpt_abs, out_abs = ckpt.resolve(), out.resolve()
    if out_abs == ckpt_abs or ckpt_abs in out_abs.parents or out_abs in ckpt_abs.parents:
        raise InputError(f"output directory {out} overlaps the checkpoint {ckpt}; choose a directory outside it")
    if out.exists() and not overwrite:
        raise InputError(f"output directory {out} already exists; pass --overwrite to replace it or choose a new one")


def _copy_processor_files(src: Path, dst: Path) -> None:
    """Copies the tokenizer, processor and chat-template files byte for byte (re-saving them takes seconds)."""
    for path in src.iterdir():
        if path.suffix in (".json", ".txt", ".jinja") and path.name not in NOT_PROCESSOR_FILES:
            if not path.name.endswith(".index.json"):
                shutil.copy2(path, dst / path.name)


def _replace(tmp: Path, out: Path) -> None:
    """Moves the finished `tmp` to `out`; an existing `out` is removed only after the new one is in place."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _load_lora(
    adapter_dir: Path, base_model: str | Path | None, dtype: torch.dtype, merge: bool
) -> tuple[torch.nn.Module, Path]:
    """A peft LoRA adapter on its base (--base-model, else from adapter_config.json), merged in fp32 when `merge`."""
    from peft import PeftModel

    base = _lora_base(adapter_dir / "adapter_config.json", base_model)
    peft_model = PeftModel.from_pretrained(_fp32_model(base), adapter_dir)
    result = peft_model.merge_and_unload().to(dtype) if merge else peft_model
    has_processor = any((adapter_dir / name).is_file() for name in PROCESSOR_FILES)
    return result.eval(), adapter_dir if has_processor else Path(base)


def _lora_base(adapter_config: Path, base_model: str | Path | None) -> Path:
    """The LoRA base model: --base-model, else the adapter config's base_model_name_or_path; a local directory."""
    base = base_model or json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise FileNotFoundError(
            f"the LoRA base model {base!r} named in {adapter_config} is not a local directory; pass --base-model DIR "
            "(the model the adapter was trained on: model.path of the run)"
        )
    return Path(base)


def _fp32_model(model_dir: Path) -> PreTrainedModel:
    """The Hugging Face model in `model_dir`, loaded in fp32."""
    return AutoModelForImageTextToText.from_pretrained(check_model_dir(model_dir), dtype=torch.float32)


def _load_sharded(ckpt: Path, base_model: str | Path | None) -> torch.nn.Module:
    """The fp32 model of a training checkpoint: all weights from the shards, or (LoRA) the base model from
    model.path / --base-model wrapped with the saved adapter config and the adapters from the shards."""
    model_dir, sharded = ckpt / MODEL_FILES, ckpt / SHARDS
    adapter_config = model_dir / "adapter_config.json"
    if adapter_config.is_file():
        from peft import LoraConfig, get_peft_model

        base = _lora_base(adapter_config, base_model)
        model = get_peft_model(_fp32_model(base), LoraConfig.from_pretrained(model_dir))
    else:
        config_dir = model_dir if (model_dir / "config.json").is_file() else base_model
        if config_dir is None:
            raise FileNotFoundError(
                f"checkpoint {ckpt} has no {MODEL_FILES}/config.json; pass --base-model DIR (the model the run "
                "started from, model.path in the run's config.yaml)"
            )
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(config_dir), dtype=torch.float32)
        if (Path(config_dir) / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(config_dir)
    if (sharded / ".metadata").is_file():
        _load_dcp(sharded, model)
    elif (sharded / "latest").is_file() or any(sharded.glob("*/*_model_states.pt")):
        _load_deepspeed(sharded, model)
    else:
        raise InputError(
            f"{sharded} holds neither torch distributed checkpoint shards (.metadata) nor a DeepSpeed checkpoint "
            "(latest, */*_model_states.pt); pass the step_N directory a training run wrote"
        )
    return model


def _load_dcp(sharded: Path, model: torch.nn.Module) -> None:
    """Fills `model` in place from the trainer's torch distributed checkpoint (every rank's shard file checked)."""
    metadata = dcp.FileSystemReader(sharded).read_metadata()
    expected = {info.relative_path for info in metadata.storage_data.values()}
    missing = sorted(name for name in expected if not (sharded / name).is_file())
    if missing:
        raise InputError(
            f"checkpoint {sharded} is incomplete: shard files {missing} are missing; copy every file of the "
            "checkpoint from the machine that trained it"
        )
    on_disk = {path.name for path in sharded.glob("__*_*.distcp")}
    if on_disk != expected:
        raise InputError(
            f"checkpoint {sharded} mixes saves: its metadata names shard files {sorted(expected)}, the folder holds "
            f"{sorted(on_disk)}; copy one save's files together"
        )
    saved = {key for key in metadata.state_dict_metadata if key.startswith("model.")}
    # A LoRA run saves only its adapters (the frozen base comes from model.path); a full run saves every weight.
    state = {f"model.{name}": tensor for name, tensor in model.state_dict().items()}
    if hasattr(model, "peft_config"):
        state = {key: tensor for key, tensor in state.items() if key in saved}
    with warnings.catch_warnings():  # the single-process read is intended; DCP warns about it on every call
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            dcp.load(state, storage_reader=dcp.FileSystemReader(sharded), no_dist=True)
        except dcp.CheckpointException as error:  # a key missing from the shards, or another shape
            cause = next(iter(error.failures.values()), error)
            raise InputError(
                f"checkpoint {sharded} does not match the model built from its config ({cause}); pass the run's "
                "base model as --base-model"
            ) from None
    logger.info("read %d tensors of %d shard files from %s", len(state), len(expected), sharded)


def _load_deepspeed(sharded: Path, model: torch.nn.Module) -> None:
    """Fills `model` in place from the trainer's DeepSpeed ZeRO-2/3 checkpoint, which DeepSpeed's zero_to_fp32 rebuilds
    in fp32 from every rank's optimizer partitions; a LoRA run's checkpoint holds only the adapters."""
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError:
        raise InputError(
            f"{sharded} is a DeepSpeed checkpoint and merging it needs DeepSpeed's zero_to_fp32: pip install deepspeed"
        ) from None
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(sharded))
    except (ValueError, FileNotFoundError) as error:
        raise InputError(
            f"DeepSpeed checkpoint {sharded} cannot be consolidated ({error}); copy every file of the checkpoint from "
            "the machine that trained it"
        ) from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Every trainable weight must come from the checkpoint; a tied lm_head is the embedding (listed once here).
    absent = sorted({name for name, param in model.named_parameters() if param.requires_grad} & set(missing))
    if unexpected or absent:
        raise InputError(
            f"DeepSpeed checkpoint {sharded} does not match the model built from its config: missing {absent[:3]}, "
            f"unexpected {unexpected[:3]}; pass the run's base model as --base-model"
        )
    logger.info("read %d tensors of a DeepSpeed checkpoint from %s", len(state), sharded)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `rewardmap merge`."""
    parser.add_argument(
        "checkpoint", type=Path, help="a checkpoint directory (<run>/checkpoints/step_N) or a LoRA adapter"
    )
    parser.add_argument("out", type=Path, help="new directory for the merged Hugging Face model")
    parser.add_argument("--dtype", choices=sorted(OUTPUT_DTYPES), default="bf16", help="weight dtype of the output")
    parser.add_argument(
        "--base-model",
        type=Path,
        help="local base model: for a LoRA adapter (default: its base_model_name_or_path) or the config of a sharded "
        "checkpoint (default: its model/config.json)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument(
        "--verify", action="store_true", help="compare the logits of the merged model with the checkpoint's"
    )
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors file of the output (e.g. 2GB)")


def run(args: argparse.Namespace) -> int:
    """Merge, print where the model went; a refusal prints one line and exits 1."""
    try:
        out = merge_checkpoint(
            args.checkpoint,
            args.out,
            dtype=args.dtype,
            base_model=args.base_model,
            overwrite=args.overwrite,
            verify=args.verify,
            max_shard_size=args.max_shard_size,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"rewardmap merge: {error}", file=sys.stderr)
        return 1
    print(f"merged model written to {out}")
    return 0
