"""Per-token log-probs (and entropy) of completions under a Qwen2.5-VL policy, micro-batched; batched prompt inputs.

Hot path of the GRPO update: each prompt's image is encoded once per micro-batch, a group's prompt can run once for
all its completions (`shared_prefix.py`), and the lm_head runs only on the completion positions, in the fused chunked
kernel of `fused.py` run inside the model's forward (where FSDP2 has the weights gathered), so no (tokens x
vocabulary) logits are kept for autograd (a plain logits path remains for a ZeRO-3-partitioned lm_head).
"""

import logging
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from transformers import BatchFeature, ProcessorMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling

from rewardmap.data.prompts import prompt_tensors, render_prompt
from rewardmap.models.fused import linear_logprob, linear_logprob_entropy
from rewardmap.models.shared_prefix import SharedPrefixMask, micro_batches

logger = logging.getLogger(__name__)


def build_prompt_inputs(
    processor: ProcessorMixin, questions: Sequence[str], images: Sequence[Image.Image] | None
) -> BatchFeature:
    """Processor output for B questions (rendered by `render_prompt`), left-padded: input_ids/attention_mask
    (B, P), pixel_values, image_grid_thw. `images` holds one RGB image per question, or is None for text-only prompts.
    """
    texts = [render_prompt(processor, q, with_image=images is not None) for q in questions]
    return prompt_tensors(processor, texts, images)


def completion_logprobs(
    model: torch.nn.Module,
    prompt_inputs: Mapping[str, Tensor],
    completion_ids: Tensor,
    completion_mask: Tensor,
    *,
    micro_batch_size: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    prompt_index: Tensor | None = None,
    group_size: int = 1,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs (B, C) of `completion_ids` (B, C) after their prompts, 0 where `completion_mask` (B, C) is 0.

    prompt_inputs: input_ids/attention_mask (P, L), padded on either side; optional pixel_values (sum of patches, D)
    with image_grid_thw (P, 3), one image per prompt. `prompt_index` (B,) names each completion's prompt (default:
    completion i follows prompt i); a prompt's image is encoded once per micro-batch however many of its completions
    are in it. With group_size > 1 the rows come in groups of group_size consecutive completions of one prompt, and
    each group runs as one sequence: the prompt once, then its completions, each attending to the prompt and itself
    (sdpa attention only; micro-batches are then whole groups, see `micro_batches`). Returns (logps, entropy or
    None), both differentiable; the entropy is that of the temperature-scaled next-token distribution. A training
    pass keeps every micro-batch's graph until backward, so the trainer slices the batch itself when it needs to
    bound memory.
    """
    input_ids, attention_mask = prompt_inputs["input_ids"], prompt_inputs["attention_mask"]
    prompts, batch = input_ids.shape[0], completion_ids.shape[0]
    if prompt_index is None and prompts != batch:
        raise ValueError(f"completion_ids has {batch} rows for {prompts} prompts: pass prompt_index to map them")
    prompt_index = torch.arange(batch) if prompt_index is None else prompt_index.cpu()
    if completion_ids.shape != completion_mask.shape or prompt_index.shape != (batch,):
        raise ValueError(
            f"completion_ids {tuple(completion_ids.shape)} and completion_mask {tuple(completion_mask.shape)} "
            f"must both be (B, C), with prompt_index of shape (B,) (got {tuple(prompt_index.shape)})"
        )
    if batch and (prompt_index.min() < 0 or prompt_index.max() >= prompts):
        raise ValueError(f"prompt_index must lie in 0..{prompts - 1}: there are {prompts} prompts")
    if micro_batch_size <= 0 or temperature <= 0 or group_size <= 0:
        raise ValueError(
            f"micro_batch_size ({micro_batch_size}), temperature ({temperature}) and group_size ({group_size}) "
            "must be positive"
        )
    if batch % group_size or not torch.equal(prompt_index, prompt_index[::group_size].repeat_interleave(group_size)):
        raise ValueError(f"group_size={group_size} needs the rows in runs of {group_size} sharing one prompt_index")
    pixel_values, grid_thw = prompt_inputs.get("pixel_values"), prompt_inputs.get("image_grid_thw")
    if pixel_values is not None and (grid_thw is None or grid_thw.shape[0] != prompts):
        got = None if grid_thw is None else tuple(grid_thw.shape)
        raise ValueError(f"image_grid_thw is {got}; expected ({prompts}, 3): exactly one image per prompt")
    # Patch offsets of each prompt's image inside the flat pixel_values.
    offsets = [0] + torch.cumsum(grid_thw.prod(-1), 0).tolist() if pixel_values is not None else None
    logps, entropies = [], []
    for part in micro_batches(batch, micro_batch_size, group_size):
        index = prompt_index[part][::group_size]  # one prompt row per sequence of the forward
        images = None
        if pixel_values is not None:
            unique, inverse = torch.unique(index, return_inverse=True)
            pixels = torch.cat([pixel_values[offsets[i] : offsets[i + 1]] for i in unique.tolist()])
            images = (pixels, grid_thw[unique.to(grid_thw.device)], inverse)
        lp, ent = _micro_batch_logprobs(
            model,
            input_ids[index.to(input_ids.device)],
            attention_mask[index.to(attention_mask.device)],
            images,
            completion_ids[part],
            completion_mask[part],
            temperature,
            with_entropy,
            group_size,
        )
        logps.append(lp)
        entropies.append(ent)
    return torch.cat(logps), torch.cat(entropies) if with_entropy else None


def _micro_batch_logprobs(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    images: tuple[Tensor, Tensor, Tensor] | None,
    completion_ids: Tensor,
    completion_mask: Tensor,
    temperature: float,
    with_entropy: bool,
    group_size: int,
) -> tuple[Tensor, Tensor | None]:
    """completion_logprobs on one micro-batch: left-align and trim the prompts, trim trailing completion padding.

    `images` = (pixel_values of the distinct prompts' images, their image_grid_thw, each prompt row's image number).
    Completion rows g * group_size ... (g + 1) * group_size - 1 follow prompt row g, in one sequence.
    """
    # Stable sort of the mask moves padding to the left whichever side it was on; then drop all-padding columns.
    order = torch.argsort(prompt_mask.long(), dim=1, stable=True)
    prompt_ids, prompt_mask = prompt_ids.gather(1, order), prompt_mask.gather(1, order)
    longest = int(prompt_mask.sum(1).max())
    if longest == 0:
        raise ValueError("a micro-batch has only empty prompts; every prompt needs at least one token")
    prompt_ids, prompt_mask = prompt_ids[:, -longest:], prompt_mask[:, -longest:]
    full_width = completion_ids.shape[1]
    filled = completion_mask.any(0).nonzero()
    width = int(filled.max()) + 1 if filled.numel() else 1
    completion_ids, mask = completion_ids[:, :width], completion_mask[:, :width].bool()

    # A sampled image/video placeholder (a random policy does emit them) would make the model look for a missing image:
    # it is fed as padding, while its log-prob is still that of the token actually sampled.
    config = next(m for m in model.modules() if hasattr(m, "get_rope_index")).config
    placeholders = torch.tensor([config.image_token_id, config.video_token_id], device=completion_ids.device)
    fed = completion_ids.masked_fill(torch.isin(completion_ids, placeholders), model.generation_config.pad_token_id)
    rows = prompt_ids.shape[0]
    ids = torch.cat([prompt_ids, fed.reshape(rows, group_size * width)], dim=1)
    image_kwargs, row_grid = {}, None
    if images is not None:
        # Encode each distinct image once; every row that shows it reuses the features (n rollouts per prompt).
        pixels, grid, inverse = images
        features = model.get_image_features(pixels, grid, return_dict=True).pooler_output
        row_grid = grid[inverse.to(grid.device)]
        pooled = BaseModelOutputWithPooling(pooler_output=[features[i] for i in inverse.tolist()])
        image_kwargs = {"mm_encoder_outputs": {"image": pooled}}
    # Every completion's positions continue from its prompt's end, as if it followed the prompt alone.
    position_ids = _mrope_position_ids(
        model, ids[:, : longest + width], F.pad(prompt_mask.long(), (0, width), value=1), row_grid
    )
    if group_size > 1:
        completion_positions = position_ids[..., longest:].repeat(1, 1, group_size)
        position_ids = torch.cat([position_ids[..., :longest], completion_positions], dim=-1)
        text = config.get_text_config()
        kv_groups = text.num_attention_heads // text.num_key_value_heads
        attention_mask = {"full_attention": SharedPrefixMask(prompt_mask, group_size, width, kv_groups)}
    else:
        attention_mask = torch.cat([prompt_mask.to(mask.dtype), mask], dim=1).long()
    # Hidden state at position t predicts token t + 1: completion i's token j > 0 is predicted at
    # longest + i * width + j - 1, and every completion's first token at the prompt's last position.
    keep = torch.arange(longest - 1, longest - 1 + group_size * width, device=ids.device).view(group_size, width)
    keep[:, 0] = longest - 1
    head = model.get_output_embeddings().weight
    inputs = {"input_ids": ids, "attention_mask": attention_mask, "position_ids": position_ids, "use_cache": False}
    if head.numel() == 0 and not isinstance(head, torch.distributed.tensor.DTensor):
        # A ZeRO-3 partition (empty outside the lm_head's own forward): only that forward gathers it.
        logits = model(**inputs, logits_to_keep=keep.flatten(), **image_kwargs).logits.float()
        logits = logits.reshape(-1, width, logits.shape[-1])  # (b * group_size, C, V)
        if temperature != 1.0:
            logits = logits / temperature
        logsumexp = torch.logsumexp(logits, dim=-1)
        logps = logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1) - logsumexp
        entropy = logsumexp - (torch.softmax(logits, dim=-1) * logits).sum(-1) if with_entropy else None
    else:  # the fused chunked head: no (b, C, V) logits kept for backward
        targets = completion_ids[mask]

        def head_logprobs(hidden: Tensor, weight: Tensor) -> tuple[Tensor, Tensor | None]:
            hidden = hidden[:, keep].flatten(0, 1)[mask]
            if with_entropy or hidden.requires_grad:
                return linear_logprob_entropy(hidden, weight, targets, temperature)
            return linear_logprob(hidden, weight, targets, temperature), None

        token_logps, token_entropy = _in_forward(model, inputs, image_kwargs, head_logprobs)
        logps = torch.zeros(mask.shape, dtype=torch.float32, device=ids.device).masked_scatter(mask, token_logps)
        entropy = torch.zeros_like(logps).masked_scatter(mask, token_entropy) if with_entropy else None
    logps = torch.where(mask, logps, 0.0)
    if entropy is not None:
        entropy = F.pad(torch.where(mask, entropy, 0.0), (0, full_width - width))
    return F.pad(logps, (0, full_width - width)), entropy


def _in_forward(model: torch.nn.Module, inputs: dict, image_kwargs: dict, head_fn: Callable) -> tuple:
    """`head_fn(final hidden states (b, L, d), lm_head weight (V, d))`, run inside a forward that skips the lm_head.

    Inside the forward, FSDP2 has the root's weights (the lm_head's among them) gathered, and autograd sends their
    gradients back through its usual reduce-scatter.
    """
    results = []
    decoder = next(m for m in model.modules() if hasattr(m, "get_rope_index"))
    head = model.get_output_embeddings()

    def hook(module: torch.nn.Module, args: tuple, output: BaseModelOutputWithPooling) -> None:
        results.append(head_fn(output.last_hidden_state, head.weight))

    handle = decoder.register_forward_hook(hook)
    try:
        model(
            **inputs,
            logits_to_keep=torch.zeros(0, dtype=torch.long, device=inputs["input_ids"].device),
            **image_kwargs,
        )
    finally:
        handle.remove()
    return results[0]


def _mrope_position_ids(
    model: torch.nn.Module, ids: Tensor, attention_mask: Tensor, image_grid_thw: Tensor | None
) -> Tensor:
    """Qwen2.5-VL's 3-D rope positions (3, b, L) computed from the real tokens only, so padding cannot shift them.

    transformers 5.x skips these positions silently unless mm_token_type_ids is passed, so they are built here.
    """
    vl_model = next((m for m in model.modules() if hasattr(m, "get_rope_index")), None)
    if vl_model is None:
        raise ValueError(f"{type(model).__name__} has no Qwen2.5-VL module with get_rope_index")
    config = vl_model.config
    token_type = (ids == config.image_token_id).int() + 2 * (ids == config.video_token_id).int()
    position_ids, _ = vl_model.get_rope_index(
        ids, mm_token_type_ids=token_type, image_grid_thw=image_grid_thw, attention_mask=attention_mask
    )
    return position_ids
