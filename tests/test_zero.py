"""DeepSpeed ZeRO-2/3 in real `torchrun` worlds of 2 CPU processes (gloo): one AdamW step per GRPO step however many
micro-batches and none after a loss that is not finite, checkpoints that a second launch resumes from, and
`rewardmap merge` reading what the trainer wrote.

Run as a script (by torchrun), this file is the worker of `test_backend_takes_one_adamw_step_on_the_summed_gradient`.
"""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rewardmap.checkpoint_files import verify

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
MICRO_BATCHES = 3
pytestmark = pytest.mark.slow


def _loss(model: torch.nn.Module, rank: int, step: int, micro: int) -> torch.Tensor:
    """One micro-batch's loss: inputs of its own (rank, step, micro-batch), so each gradient differs."""
    inputs = torch.randn(4, 6, generator=torch.Generator().manual_seed(100 * step + 10 * rank + micro))
    return model(inputs.to(next(model.parameters()).dtype)).float().pow(2).mean()


def _run_worker(out: Path) -> None:
    """Per ZeRO stage (and ZeRO-3 in bf16): two steps of MICRO_BATCHES backward passes per rank through
    DeepSpeedBackend, beside a plain torch replica that sums every rank's micro-batch gradients, clips and takes one
    AdamW step per step; the main rank writes both sides to `out`."""
    import deepspeed

    from rewardmap.config import RewardMapConfig
    from rewardmap.distributed import join_world
    from rewardmap.grpo.zero import DeepSpeedBackend

    results = {}
    with join_world() as world:
        for stage, dtype in ((2, "fp32"), (3, "fp32"), (3, "bf16")):
            config = RewardMapConfig()
            config.model.dtype = dtype
            trainer = config.trainer
            trainer.zero_stage, trainer.weight_decay, trainer.max_grad_norm = stage, 0.1, 0.05
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
            replica = copy.deepcopy(model)
            optimizer = torch.optim.AdamW(replica.parameters(), betas=(0.9, 0.999), weight_decay=0.1)
            backend = DeepSpeedBackend(model, config, world)
            norms, replica_norms = [], []
            for step, lr in enumerate((1e-2, 3e-3)):
                backend.set_lr(lr)
                for micro in range(MICRO_BATCHES):
                    backend.backward(_loss(backend.model, world.rank, step, micro) * world.size)
                norms.append(backend.step(trainer.max_grad_norm))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                for rank in range(world.size):
                    for micro in range(MICRO_BATCHES):
                        _loss(replica, rank, step, micro).backward()
                replica_norms.append(
                    float(torch.nn.utils.clip_grad_norm_(replica.parameters(), trainer.max_grad_norm))
                )
                optimizer.step()
                optimizer.zero_grad()
            # A loss that is not finite: its gradient norm is not either, and no AdamW step is taken (nor by the
            # replica): the weights and step counts below still match the replica's 2 steps.
            backend.backward(_loss(backend.model, world.rank, 2, 0) * math.nan)
            nonfinite_norm = backend.step(trainer.max_grad_norm)
            weights = list(backend.model.parameters())
            with deepspeed.zero.GatheredParameters(weights):  # ZeRO-3 keeps a partition; ZeRO-2 whole weights
                difference = max(
                    (p.float() - q).abs().max().item() for p, q in zip(weights, replica.parameters(), strict=True)
                )
            adamw = backend.engine.optimizer.optimizer  # torch's AdamW over the fp32 master partitions
            results[f"zero{stage}_{dtype}"] = {
                "grad_norms": norms,
                "nonfinite_norm": nonfinite_norm,
                "replica_grad_norms": replica_norms,
                "max_weight_difference": difference,
                "adam_steps": sorted({int(state["step"]) for state in adamw.state.values()}),
                "adam_state_dtypes": sorted({str(state["exp_avg"].dtype) for state in adamw.state.values()}),
                "weight_dtypes": sorted({str(p.dtype) for p in weights}),
            }
    if world.is_main:
        out.write_text(json.dumps(results, indent=1))


def _torchrun(*commands: list[str]) -> list[str]:
    """Runs each command in its own 2-process world on this machine, all at once (`--standalone` picks free ports);
    returns their outputs, which a failure shows."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    processes = [
        subprocess.Popen(
            [*launcher, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for args in commands
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-6000:]
    return outputs


def test_backend_takes_one_adamw_step_on_the_summed_gradient(tmp_path):
    out = tmp_path / "results.json"
    _torchrun([__file__, str(out)])
    results = json.loads(out.read_text())
    assert sorted(results) == ["zero2_fp32", "zero3_bf16", "zero3_fp32"]
    for name, run in results.items():
        exact = name.endswith("fp32")
        assert run["adam_steps"] == [2], f"{name}: 2 steps of {MICRO_BATCHES} micro-batches must be 2 AdamW steps"
        assert not math.isfinite(run["nonfinite_norm"]), f"{name}: a NaN loss must give a norm that is not finite"
        assert min(run["replica_grad_norms"]) > 0.05, "the norms must exceed max_grad_norm so that clipping acts"
        assert run["grad_norms"] == pytest.approx(run["replica_grad_norms"], rel=1e-5 if exact else 3e-2), name
        assert run["max_weight_difference"] < (1e-6 if exact else 5e-3), name
        assert run["adam_state_dtypes"] == ["torch.float32"], f"{name}: fp32 master weights and AdamW state"
    assert results["zero3_bf16"]["weight_dtypes"] == ["torch.bfloat16"]
    assert results["zero2_fp32"]["weight_dtypes"] == ["torch.float32"]


@pytest.fixture(scope="module")
def zero_runs(tiny_model_dir, synth_dataset_dir, module_dir) -> dict[int, Path]:
    """Per ZeRO stage, a run directory: `rewardmap train` for 2 GRPO steps in 2 processes, then a second launch with
    trainer.max_steps=3 that resumes from step 2 (both stages at once); each launch's output is kept beside it."""
    from .test_grpo_trainer import small_overrides  # not at the top: the torchrun worker does not need the trainer

    runs = {stage: module_dir / f"zero{stage}" for stage in (2, 3)}
    for out in runs.values():
        out.mkdir()
    for steps in (2, 3):
        commands = [
            ["-m", "rewardmap.cli", "train", "--config", str(DEMO)]
            + small_overrides(
                tiny_model_dir,
                synth_dataset_dir,
                out,
                "trainer.backend=deepspeed",
                f"trainer.zero_stage={stage}",
                f"trainer.max_steps={steps}",
            )
            for stage, out in runs.items()
        ]
        for out, log in zip(runs.values(), _torchrun(*commands), strict=True):
            (out / f"launch_{steps}.log").write_text(log)
    return runs


def _optimizer_steps(ckpt: Path) -> tuple[set[int], set[int]]:
    """(the engine's step count, AdamW's step counts) in every rank's DeepSpeed files of a checkpoint."""
    shards = ckpt / "sharded" / "zero"
    engine = {torch.load(f, weights_only=False)["global_steps"] for f in shards.glob("*model_states.pt")}
    adamw = set()
    for file in sorted(shards.glob("*_optim_states.pt")):
        state = torch.load(file, weights_only=False)["optimizer_state_dict"]
        inner = state.get("base_optimizer_state") or state["optimizer_state_dict"]  # ZeRO-2 / ZeRO-3 layouts
        adamw |= {int(param["step"]) for param in inner["state"].values()}
    return engine, adamw


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_one_optimizer_step_per_grpo_step_and_resume(zero_runs):
    for stage, run in zero_runs.items():
        metrics = _metrics(run)
        assert [m["step"] for m in metrics] == [1, 2, 3], f"ZeRO-{stage}: the second launch must log step 3 only"
        assert all(m["batch/sequences_per_rank"] == 2 for m in metrics)  # 2 micro-batches per rank and step
        assert f"resumed from {run / 'checkpoints' / 'step_000002'} at step 2" in (run / "launch_3.log").read_text()
        for step in (2, 3):
            ckpt = run / "checkpoints" / f"step_{step:06d}"
            files = verify(ckpt)["files"]
            ranks = {f"sharded/zero/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)}
            assert ranks <= set(files), "the COMPLETE marker must list every rank's DeepSpeed files"
            assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == step
            assert _optimizer_steps(ckpt) == ({step}, {step}), f"ZeRO-{stage}: one AdamW step per GRPO step"
        # The resumed step starts from the trained weights (its KL to the reference is > 0; a first step's is 0).
        assert metrics[0]["loss/kl"] == 0 and metrics[2]["loss/kl"] > 0
    # ZeRO-2 and ZeRO-3 train, save and resume alike.
    for key in ("optim/grad_norm", "loss/kl", "loss/total"):
        two, three = ([m[key] for m in _metrics(zero_runs[stage])] for stage in (2, 3))
        assert three == pytest.approx(two, rel=1e-3, abs=1e-7), key


def test_merge_gives_the_trained_weights(zero_runs, tiny_model_dir, tmp_path):
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from rewardmap.cli import main
    from rewardmap.models.loading import load_processor
    from rewardmap.models.logprobs import build_prompt_inputs

    image = Image.linear_gradient("L").convert("RGB").resize((112, 84))
    batch = build_prompt_inputs(load_processor(tiny_model_dir), ["Which line connects the two stations?"], [image])

    def logits(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(**batch).logits

    def load(path: Path) -> torch.nn.Module:
        return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)

    merged = {}
    for stage, run in zero_runs.items():
        out = tmp_path / f"merged_zero{stage}"
        assert main(["merge", str(run / "checkpoints" / "step_000003"), str(out), "--dtype", "fp32"]) == 0
        merged[stage] = logits(load(out))
    # An independent read of the trained weights: ZeRO-2 keeps whole weights on every rank, saved as the module state.
    trained = load(tiny_model_dir)
    states = zero_runs[2] / "checkpoints" / "step_000003" / "sharded" / "zero" / "mp_rank_00_model_states.pt"
    trained.load_state_dict(torch.load(states, weights_only=False)["module"])
    expected = logits(trained)
    assert (expected - logits(load(tiny_model_dir))).abs().max() > 1e-3, "training must move the logits"
    assert (merged[2] - expected).abs().max() < 1e-5
    assert (merged[3] - expected).abs().max() < 1e-4, "ZeRO-3 trains, saves and merges to the same model as ZeRO-2"


if __name__ == "__main__":
    _run_worker(Path(sys.argv[1]))
