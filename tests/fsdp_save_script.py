"""Test helper: a real FSDP2 sharded checkpoint of the tiny model, made by `torchrun --nproc_per_node 2` on CPU (gloo).

`torchrun --nproc_per_node 2 tests/fsdp_save_script.py MODEL_DIR CKPT_DIR` shards the model with FSDP2
(`fully_shard` per decoder layer and vision block, then the root), takes one AdamW step, and writes CKPT_DIR in the
layout rewardmap.grpo.checkpoint.save gives a distributed run: `sharded/pytorch_model_fsdp_0/` (torch distributed
checkpoint of `{"model": sharded state}`, as accelerate's save_state), `sharded/random_states_<rank>.pkl`, processor
files in `model/`, `trainer_state.json` and the `COMPLETE` marker. The gathered full weights the shards hold go to
`CKPT_DIR/../reference` (the unsharded model the merge must reproduce). accelerate itself only enables FSDP on
accelerators, hence the hand-written save here.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from rewardmap.grpo import checkpoint
from rewardmap.models.loading import load_policy, load_processor
from rewardmap.models.logprobs import build_prompt_inputs

BLOCKS = ("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock")


def main() -> None:
    model_dir, ckpt = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = load_policy(model_dir, device="cpu", dtype="fp32")
    for module in model.modules():
        if type(module).__name__ in BLOCKS:
            fully_shard(module)
    fully_shard(model)
    processor = load_processor(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # One step that moves every weight differently, so a merge that ignored the shards would show.
    loss = model(**build_prompt_inputs(processor, ["How many stops from A to B?"], None)).logits.pow(2).mean()
    loss.backward()
    optimizer.step()

    sharded = ckpt / "sharded"
    dcp.save(
        {"model": get_model_state_dict(model)}, storage_writer=dcp.FileSystemWriter(sharded / "pytorch_model_fsdp_0")
    )
    torch.save({"torch": torch.get_rng_state()}, sharded / f"random_states_{rank}.pkl")
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    dist.barrier()
    if rank == 0:
        processor.save_pretrained(ckpt / "model")
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": 1}))
        files = {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*")) if p.is_file()}
        (ckpt / checkpoint.MARKER).write_text(json.dumps({"step": 1, "files": files}))
        reference = load_policy(model_dir, device="cpu", dtype="fp32")
        reference.load_state_dict(full)
        reference.save_pretrained(ckpt.parent / "reference")
        processor.save_pretrained(ckpt.parent / "reference")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
