"""GRPO step benchmark: seconds per step of our trainer vs TRL's GRPOTrainer on the tiny model, plus loss agreement.

Run: `python benchmarks/grpo_step_bench.py [--steps 3] [--micro-batch-size 4]`. TRL is not a project dependency;
install it for the benchmark only, e.g. `pip install --no-deps --target /tmp/trl_site trl==1.16.0` and run with
`PYTHONPATH=/tmp/trl_site` (it imports nothing the project's venv lacks). The workload is the issue's: 8 prompts x 4
rollouts, exactly 64 completion tokens (EOS suppressed with min_new_tokens in both; the random model's vision
placeholder tokens suppressed too, see `vision_tokens`), maps <= 200,704 pixels, KL 0.01
against a frozen reference, lr 1e-6, fp32, no gradient checkpointing, the same micro-batch for both. The tiny
Qwen2.5-VL and a synthetic dataset are built in a temp dir. TRL drives the loop: after each TRL step a callback runs
one step of ours with entropy_coef 0 (TRL's loss has the same math with loss_type="dapo") and one with entropy_coef
1e-3 (the recipe), so load on a shared machine hits all three alike; the first step of each is a warm-up.
Loss agreement: TRL's first-step batch (its completions, with random advantages and reference log-probs shifted by
noise so that every term is nonzero) goes through TRL's `_compute_loss` and our `GRPOTrainer._update` while both
policies still hold the initial weights; the two losses are compared.
"""

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rewardmap.config import load_config  # noqa: E402
from rewardmap.data.prompts import build_messages  # noqa: E402
from rewardmap.distributed import World, join_world  # noqa: E402
from rewardmap.grpo.batching import TrainBatch  # noqa: E402
from rewardmap.grpo.trainer import GRPOTrainer  # noqa: E402
from rewardmap.models.loading import load_processor  # noqa: E402
from rewardmap.models.tiny import build_tiny_model  # noqa: E402
from rewardmap.reward import score_batch  # noqa: E402
from rewardmap.synth import generate_dataset  # noqa: E402

logger = logging.getLogger(__name__)
OUR_PHASES = ("rollout", "reward", "ref_logprobs", "update")
TRL_PHASES = ("generate", "reward", "ref_logprobs", "policy_forward", "backward_optimizer_other")


def our_config(model_dir: Path, data_dir: Path, out: Path, args: argparse.Namespace, entropy_coef: float):
    """The demo config with the benchmark workload."""
    overrides = [
        f"model.path={model_dir}",
        f"data.train_files={data_dir}",
        f"trainer.output_dir={out}",
        f"data.image_cache_dir={out.parent / 'image_cache'}",
        f"data.prompts_per_step={args.prompts}",
        f"rollout.n={args.n}",
        f"data.max_response_length={args.tokens}",
        f"data.max_pixels={args.max_pixels}",
        "algorithm.kl_coef=0.01",
        f"algorithm.entropy_coef={entropy_coef}",
        "trainer.lr=1e-6",
        "model.gradient_checkpointing=false",
        "model.dtype=fp32",
        "sft.steps=0",
        "trainer.loggers=[jsonl]",
        f"trainer.micro_batch_size={args.micro_batch_size}",
    ]
    return load_config(REPO / "configs" / "demo.yaml", overrides)


def make_ours(model_dir: Path, data_dir: Path, work: Path, args: argparse.Namespace, entropy_coef: float, world):
    """Our trainer, with EOS made impossible so every completion has exactly args.tokens tokens."""
    config = our_config(model_dir, data_dir, work / f"ours_ent{entropy_coef}", args, entropy_coef)
    trainer = GRPOTrainer(config, world)
    trainer.parts.model.generation_config.min_new_tokens = args.tokens
    trainer.parts.model.generation_config.suppress_tokens = vision_tokens(trainer.parts.processor)
    return trainer


def vision_tokens(processor) -> list[int]:
    """Ids of the image/video placeholder tokens: a sampled one would be read as an image that is not there."""
    names = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
    return processor.tokenizer.convert_tokens_to_ids(names)


class Recorder:
    """Collects per-step seconds and phases of each side, and the warm-up batch TRL computed its loss on."""

    def __init__(self) -> None:
        self.steps: dict[str, list[dict[str, float]]] = {}
        self.lengths: dict[str, set[int]] = {}
        self.trl_phase: dict[str, float] = {}
        self.trl_batches: list[dict] = []
        self.trl_losses: list[float] = []


def trl_trainer_class():
    """A TRL GRPOTrainer subclass that times its phases and keeps its first step's loss inputs (no math changed)."""
    from trl import GRPOTrainer as TRLGRPOTrainer

    class TimedTRL(TRLGRPOTrainer):
        recorder: Recorder

        def _timed(self, name: str, method, *a, **kw):
            start = time.perf_counter()
            result = method(*a, **kw)
            phases = self.recorder.trl_phase
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
            return result

        def _generate(self, *a, **kw):
            return self._timed("generate", super()._generate, *a, **kw)

        def _calculate_rewards(self, *a, **kw):
            return self._timed("reward", super()._calculate_rewards, *a, **kw)

        def _get_per_token_logps_and_entropies(self, *a, **kw):
            name = "policy_forward" if torch.is_grad_enabled() else "ref_logprobs"
            return self._timed(name, super()._get_per_token_logps_and_entropies, *a, **kw)

        def _compute_loss(self, model, inputs):
            if self.state.global_step == 0:
                probe = perturbed(inputs, seed=len(self.recorder.trl_batches))
                with torch.no_grad():
                    self.recorder.trl_losses.append(super()._compute_loss(model, probe).item())
                self.recorder.trl_batches.append(probe)
            return super()._compute_loss(model, inputs)

    return TimedTRL


def perturbed(inputs: dict, seed: int) -> dict:
    """TRL's batch with random advantages and shifted reference log-probs, so the loss probe has nonzero terms.

    The tiny random model earns zero reward (zero advantages) and starts equal to its reference (zero KL), which
    would make any two losses agree trivially.
    """
    generator = torch.Generator().manual_seed(seed)
    probe = dict(inputs)
    probe["advantages"] = torch.randn(probe["advantages"].shape, generator=generator)
    ref = probe["unperturbed_ref_per_token_logps"] = probe["ref_per_token_logps"]
    probe["ref_per_token_logps"] = ref + 0.1 * torch.randn(ref.shape, generator=generator)
    return probe


def trl_dataset(rows: list[dict], images: list):
    """TRL's VLM GRPO format: conversational prompt with an image placeholder + an "image" column."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [build_messages(row["question"]) for row in rows],
            "image": images,
            "row": list(range(len(rows))),
        }
    )


def make_trl(model_dir: Path, work: Path, args: argparse.Namespace, ours: GRPOTrainer, rows, images, recorder):
    """TRL's GRPOTrainer on the same model, rows, images, reward and settings as `ours`."""
    from trl import GRPOConfig

    cfg = ours.config

    def reward(prompts, completions, row, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scores = score_batch(
            texts,
            [rows[i] for i in row],
            variant=cfg.reward.variant,
            mode=cfg.reward.mode,
            counting1_detail=cfg.reward.counting1_detail,
            metro_root=cfg.data.metro_root,
        )
        return [s.total for s in scores]

    sequences = args.prompts * args.n
    config = GRPOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=sequences // args.micro_batch_size,
        num_generations=args.n,
        max_completion_length=args.tokens,
        generation_kwargs={"min_new_tokens": args.tokens, "suppress_tokens": vision_tokens(ours.parts.processor)},
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.01,
        epsilon=cfg.algorithm.clip_ratio_low,
        epsilon_high=cfg.algorithm.clip_ratio_high,
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        weight_decay=cfg.trainer.weight_decay,
        max_grad_norm=cfg.trainer.max_grad_norm,
        loss_type="dapo",
        scale_rewards="group",
        entropy_coef=0.0,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
        shuffle_dataset=False,
        max_steps=args.steps + 1,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=0,
    )
    processor = load_processor(model_dir, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
    trainer_class = trl_trainer_class()
    trainer_class.recorder = recorder
    return trainer_class(
        model=str(model_dir),
        reward_funcs=reward,
        args=config,
        train_dataset=trl_dataset(rows, images),
        processing_class=processor,
    )


def split_pixels(inputs: dict) -> list[torch.Tensor]:
    """Per-sequence pixel rows of a Qwen2.5-VL batch with one image per sequence."""
    return list(torch.split(inputs["pixel_values"], inputs["image_grid_thw"].prod(-1).tolist()))


def prompt_index(trl_batch: dict, ours_inputs: dict) -> torch.Tensor:
    """Which of our prompts each TRL sequence is (TRL shuffles sequences): same token ids and same pixels."""
    ours_ids = [ids[m.bool()] for ids, m in zip(ours_inputs["input_ids"], ours_inputs["attention_mask"], strict=True)]
    ours_pixels = split_pixels(ours_inputs)
    found = []
    trl_pixels = split_pixels(trl_batch)
    for j, (ids, m) in enumerate(zip(trl_batch["prompt_ids"], trl_batch["prompt_mask"], strict=True)):
        ids = ids[m.bool()]
        match = [
            p
            for p, (o_ids, o_pix) in enumerate(zip(ours_ids, ours_pixels, strict=True))
            if torch.equal(o_ids, ids) and o_pix.shape == trl_pixels[j].shape and torch.allclose(o_pix, trl_pixels[j])
        ]
        if not match:
            raise ValueError(f"TRL sequence {j}: its prompt ids/pixels match none of our prompts; formats differ")
        found.append(match[0])
    return torch.tensor(found)


def loss_agreement(ours: GRPOTrainer, rows: list[dict], recorder: Recorder) -> dict[str, float]:
    """Our `_update` loss on TRL's perturbed first batch vs TRL's loss on it; both at the initial weights."""
    parts = ours.parts
    prompts, images = parts.prompts_and_images(rows)
    inputs = parts.prompt_inputs(prompts, images)
    batches = recorder.trl_batches
    prompt_of = torch.cat([prompt_index(batch, inputs) for batch in batches])
    ids = torch.cat([b["completion_ids"] for b in batches])
    mask = torch.cat([b["completion_mask"] for b in batches]).long()
    advantages = torch.cat([b["advantages"] for b in batches]).float()
    trl_ref = torch.cat([b["unperturbed_ref_per_token_logps"] for b in batches]).float()
    probe_ref = torch.cat([b["ref_per_token_logps"] for b in batches]).float()
    from rewardmap.models.logprobs import completion_logprobs

    with torch.no_grad(), parts.reference() as reference:
        our_ref, _ = completion_logprobs(reference, inputs, ids, mask, micro_batch_size=4, prompt_index=prompt_of)
    batch = TrainBatch(
        prompt_inputs=inputs,
        prompt_of=prompt_of,
        completion_ids=ids,
        loss_mask=mask,
        advantages=advantages,
        rollout_logprobs=torch.zeros_like(probe_ref),
        ref_logprobs=probe_ref,
    )
    grouped, ours.group_size = ours.group_size, 1  # TRL's batch is shuffled, not in groups: one row per completion
    size = ours.config.trainer.micro_batch_size
    stats = ours._update(batch, [slice(start, start + size) for start in range(0, ids.shape[0], size)])
    ours.group_size = grouped
    trl_loss = sum(recorder.trl_losses)
    return {
        "trl_loss": trl_loss,
        "our_loss": stats["loss/total"],
        "loss_abs_diff": abs(trl_loss - stats["loss/total"]),
        "ref_logprob_max_abs_diff": float(((our_ref.float() - trl_ref).abs() * mask).max()),
    }


class Interleave(TrainerCallback):
    """After each TRL step, one step of each of our trainers on the batch TRL just used; times everything."""

    def __init__(self, recorder: Recorder, ours: dict, batches: list, rows: list[dict], bar) -> None:
        self.recorder, self.ours, self.batches, self.rows, self.bar = recorder, ours, batches, rows, bar
        self.mark = time.perf_counter()
        self.agreement: dict[str, float] = {}

    def on_step_begin(self, args, state, control, **kwargs):
        self.recorder.trl_phase.clear()

    def on_step_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self.mark
        phases = dict(self.recorder.trl_phase)
        forward = phases.get("policy_forward", 0.0)
        phases["backward_optimizer_other"] = seconds - sum(phases.get(p, 0.0) for p in TRL_PHASES[:4])
        phases["policy_forward"] = forward
        self.recorder.steps.setdefault("trl", []).append({"step": seconds, **phases})
        if state.global_step == 1:
            self.agreement = loss_agreement(
                self.ours["ours (entropy 0)"], self.rows[: len(self.batches[0][1])], self.recorder
            )
        stage, indices = self.batches[state.global_step - 1]
        for name, trainer in self.ours.items():
            metrics = trainer.step(stage, indices)
            trainer.step_count += 1
            timing = {p: metrics.get(f"timing/{p}_s", 0.0) for p in OUR_PHASES}
            self.recorder.steps.setdefault(name, []).append({"step": metrics["timing/step_s"], **timing})
            self.recorder.lengths.setdefault(name, set()).add(metrics["response/length_mean"])
        self.bar.update(1)
        self.mark = time.perf_counter()


def summarize(recorder: Recorder, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Median over the timed steps (warm-up excluded) of every recorded figure, per side."""
    return {
        side: {key: statistics.median(step[key] for step in steps[warmup:]) for key in steps[0]}
        for side, steps in recorder.steps.items()
    }


def report(medians: dict, agreement: dict, lengths: dict, args: argparse.Namespace, load: tuple[float, float]) -> str:
    """The printed table: seconds per step and ratio, phases of each side, loss agreement, completion lengths, and the
    machine's 1-minute load average when the run started and ended (other jobs slow both sides alike)."""
    trl = medians["trl"]["step"]
    lines = [
        f"GRPO step, median of {args.steps} timed steps after 1 warm-up ({args.prompts} prompts x {args.n}"
        f" rollouts x {args.tokens} tokens, micro-batch {args.micro_batch_size}, fp32, {torch.get_num_threads()}"
        " threads)",
        f"{'side':<22}{'s/step':>9}{'vs TRL':>8}  phases (s)",
    ]
    for side, figures in medians.items():
        phases = "  ".join(f"{k}={v:.2f}" for k, v in figures.items() if k != "step")
        lines.append(f"{side:<22}{figures['step']:>9.2f}{figures['step'] / trl:>7.2f}x  {phases}")
    lines.append(
        "loss agreement on TRL's first batch (its completions; random advantages, noised reference; initial weights):"
    )
    lines.append("  " + "  ".join(f"{k}={v:.4e}" for k, v in agreement.items()))
    lines.append("completion lengths: " + "  ".join(f"{k}={sorted(v)}" for k, v in lengths.items()))
    lines.append(f"load average (1 min): {load[0]:.2f} at the start, {load[1]:.2f} at the end")
    return "\n".join(lines)


def trl_lengths(trainer) -> set[float]:
    """TRL's logged min/max completion lengths over the run."""
    logs = trainer.state.log_history
    return {log[key] for log in logs for key in ("completions/min_length", "completions/max_length") if key in log}


def run_bench(args: argparse.Namespace, work: Path) -> str:
    """Builds the tiny model, data and the three trainers, runs the interleaved steps, returns the report."""
    load_start = os.getloadavg()[0]
    from tqdm import tqdm

    model_dir, data_dir = work / "model", work / "data"
    if not model_dir.exists():  # a reused --workdir keeps the model and data it built before
        build_tiny_model(model_dir, seed=0)
        generate_dataset(data_dir, cities=4, seed=0)
    world = World(rank=0, size=1, local_rank=0, device=torch.device("cpu"))  # the process group main() joined
    ours = {
        "ours (entropy 0)": make_ours(model_dir, data_dir, work, args, 0.0, world),
        "ours (entropy 1e-3)": make_ours(model_dir, data_dir, work, args, 1e-3, world),
    }
    first = ours["ours (entropy 0)"]
    batches = [first.parts.stream.next_batch() for _ in range(args.steps + 1)]
    rows = [first.parts.rows[i] for _, indices in batches for i in indices]
    _, images = first.parts.prompts_and_images(rows)
    recorder = Recorder()
    trl = make_trl(model_dir, work, args, first, rows, images, recorder)
    with tqdm(total=args.steps + 1, desc="interleaved steps") as bar:
        callback = Interleave(recorder, ours, batches, rows, bar)
        trl.add_callback(callback)
        trl.train()
    lengths = {**{k: v for k, v in recorder.lengths.items()}, "trl (min/max)": trl_lengths(trl)}
    return report(summarize(recorder), callback.agreement, lengths, args, (load_start, os.getloadavg()[0]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side, after one warm-up step")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--n", type=int, default=4, help="rollouts per prompt")
    parser.add_argument("--tokens", type=int, default=64, help="completion tokens (EOS is suppressed until then)")
    parser.add_argument("--max-pixels", type=int, default=200704, help="map pixel budget per prompt")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="sequences per forward/backward, both sides")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build model/data (default: a temp dir)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if (args.prompts * args.n) % args.micro_batch_size:
        parser.error("--micro-batch-size must divide prompts x n")
    try:
        import trl  # noqa: F401
    except ImportError:
        print(
            "TRL is needed for this benchmark only: pip install --no-deps --target /tmp/trl_site trl==1.16.0, "
            "then run with PYTHONPATH=/tmp/trl_site",
            file=sys.stderr,
        )
        return 2
    with join_world():
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            print(run_bench(args, args.workdir))
            return 0
        with tempfile.TemporaryDirectory() as work:
            print(run_bench(args, Path(work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
