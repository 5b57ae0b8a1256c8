"""Rollouts that overlap training (rollout.placement=separate): the rollout ranks sample step s while the trainers
train an earlier step, at most rollout.max_staleness (k) weight versions behind.

The plan is fixed by the config, so both parts know it without asking: step s (1-based) samples the curriculum's batch
s with the weights after step max(0, s - 1 - k). A rollout rank samples its steps in order; before each it waits for
those weights if it does not hold them yet; it posts each step's groups (JSON) to the launch's key-value store. The
main trainer rank sends a weight version right after the optimizer step that makes it, in buckets over the bridge
process group (gloo on CPU, NCCL on GPU), each announced by a header (names, shapes, dtype) in the store; the other
trainers take part in gathering the sharded weights. A checkpoint after step s holds the groups of steps s+1..s+k
(sampled with weights that no longer exist), so a resumed run trains on the same samples as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist

from rewardmap.config import RewardMapConfig
from rewardmap.distributed import RolloutLink, World
from rewardmap.errors import EXIT_RANK_LOST, RunStopped
from rewardmap.grpo.batching import whole_batch
from rewardmap.grpo.rollouts import StepRollouts, sample_step, timer
from rewardmap.grpo.setup import Components, RolloutParts, build_rollout_parts
from rewardmap.rollout.vllm import policy_weights

logger = logging.getLogger(__name__)

POLL_S = 0.02
"""How often a wait looks at the store for its key (and for a rollout rank's error)."""


def sampling_version(step: int, max_staleness: int) -> int:
    """The weight version (optimizer steps) step `step` (1-based) samples with."""
    return max(0, step - 1 - max_staleness)


class Messages:
    """JSON messages between the two parts of a split world, through the launch's store."""

    def __init__(self, link: RolloutLink, timeout_s: float | None) -> None:
        self.store = link.store
        self.timeout_s = timeout_s

    def post(self, key: str, value: object) -> None:
        self.store.set(key, json.dumps(value))

    def wait(self, key: str, *, watch_errors: bool = True, timeout_s: float | None = None) -> object:
        """The message `key`, once posted; raises RunStopped when a rollout rank posted an error first, or after
        `timeout_s` (default: the one this was made with; None waits for ever)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.store.check([key]):
            if watch_errors and self.store.check(["error"]):
                raise RunStopped(self.store.get("error").decode(), EXIT_RANK_LOST)
            if deadline is not None and time.monotonic() > deadline:
                raise RunStopped(
                    f"no {key} from the rollout ranks after {timeout_s:.0f} s (trainer.collective_timeout_s): a "
                    "rollout rank hangs or is too slow; see its log, or raise the timeout",
                    EXIT_RANK_LOST,
                )
            time.sleep(POLL_S)
        return json.loads(self.store.get(key))

    def arrived(self, *keys: str) -> str | None:
        """The first of `keys` that has been posted, or None."""
        return next((key for key in keys if self.store.check([key])), None)


def send_weights(
    link: RolloutLink, messages: Messages, weights: Iterator[tuple[str, torch.Tensor]], version: int, bucket_bytes: int
) -> int:
    """Streams `weights` (every trainer iterates them: their gathers are collective) from the main trainer to every
    rollout rank, in buckets of about `bucket_bytes`; returns the bytes sent (0 on the other trainers)."""
    sent, index, bucket, bucket_size = 0, 0, [], 0
    for name, tensor in weights:
        if link.bridge is None:  # another trainer: its part was to take part in the gather
            continue
        if bucket and bucket_size >= bucket_bytes:
            _send_bucket(link, messages, bucket, f"weights/{version}/{index}")
            index, bucket, bucket_size = index + 1, [], 0
        bucket.append((name, tensor))
        bucket_size += tensor.numel() * tensor.element_size()
        sent += tensor.numel() * tensor.element_size()
    if link.bridge is not None:
        if bucket:
            _send_bucket(link, messages, bucket, f"weights/{version}/{index}")
            index += 1
        messages.post(f"weights/{version}/{index}", {"done": True})
    return sent


def _send_bucket(link: RolloutLink, messages: Messages, bucket: list[tuple[str, torch.Tensor]], key: str) -> None:
    """Posts the bucket's header under `key`, then broadcasts its tensors as one flat tensor (one dtype)."""
    dtype = bucket[0][1].dtype
    header = {"names": [n for n, _ in bucket], "shapes": [list(t.shape) for _, t in bucket]}
    messages.post(key, {**header, "dtype": str(dtype).removeprefix("torch.")})
    flat = torch.cat([t.reshape(-1) for _, t in bucket])
    link.bridge.broadcast([flat], _root()).wait()


def receive_weights(
    link: RolloutLink, messages: Messages, version: int, device: torch.device
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of weight version `version` as `send_weights` streams them, one bucket at a time."""
    index = 0
    while True:
        header = messages.wait(f"weights/{version}/{index}", watch_errors=False)
        if header.get("done"):
            return
        sizes = [math.prod(shape) for shape in header["shapes"]]
        flat = torch.empty(sum(sizes), dtype=getattr(torch, header["dtype"]), device=device)
        link.bridge.broadcast([flat], _root()).wait()
        for name, shape, part in zip(header["names"], header["shapes"], flat.split(sizes), strict=True):
            yield name, part.view(shape)
        index += 1


def _root() -> dist.BroadcastOptions:
    """Broadcast options with the main trainer (the bridge's rank 0) as the source."""
    options = dist.BroadcastOptions()
    options.rootRank = 0
    return options


class RemoteRollouts:
    """The trainers' side of a separate placement: rollouts come from the rollout ranks, weights go to them."""

    def __init__(self, config: RewardMapConfig, world: World, parts: Components) -> None:
        self.config, self.world, self.parts = config, world, parts
        self.link = world.link
        self.messages = Messages(self.link, config.trainer.collective_timeout_s)
        self.staleness = config.rollout.max_staleness
        self.ready: dict[int, StepRollouts] = {}
        self.needed: set[int] = set()
        """The weight versions a step still to sample needs (`start` knows them)."""
        self.total = 0
        self.engine_dtype = torch.float32
        """The rollout ranks' engine dtype, which the weights are cast to (`start` asks them)."""

    def start(self, trained: int, total: int, pending: list[dict]) -> None:
        """Tells the rollout ranks where the run starts (after `trained` steps, the checkpoint's `pending` rollouts
        of the next steps already sampled) and sends them the current weights when a step will sample with them."""
        self.total = total
        for data in pending:
            self.ready[trained + 1 + len(self.ready)] = StepRollouts.from_json(data)
        first = trained + 1 + len(self.ready)
        self.needed = {sampling_version(step, self.staleness) for step in range(first, total + 1)}
        if self.world.is_main:
            self.messages.post("start", {"first": first, "total": total})
        self.engine_dtype = getattr(torch, self.messages.wait("ready")["dtype"])
        self.publish(self.parts.model, trained, {})

    def collect(self, trained: int, stage: int, batch: list[int], timings: dict[str, float]) -> StepRollouts:
        """The rollouts of step trained + 1, waiting for the rollout ranks if they are not there yet."""
        with timer(timings, "trainer_wait"):
            rollouts = self._fetch(trained + 1)
        del self.ready[trained + 1]
        return rollouts

    def publish(self, model: torch.nn.Module, version: int, timings: dict[str, float]) -> dict[str, float]:
        """Sends weight version `version` to the rollout ranks when a step still to sample needs it; its metrics."""
        if version not in self.needed:
            return {}
        began = time.perf_counter()
        weights = policy_weights(model, self.engine_dtype)
        sent = send_weights(self.link, self.messages, weights, version, self.config.rollout.weight_bucket_mb * 2**20)
        seconds = time.perf_counter() - began
        timings["weight_transfer"] = timings.get("weight_transfer", 0.0) + seconds
        if not self.world.is_main:
            return {}
        log = logger.info if version == min(self.needed) else logger.debug  # the first at INFO
        log(
            "weights after step %d: %.1f MB to %d rollout rank(s) in %.2f s",
            version,
            sent / 1e6,
            self.link.rollout_ranks,
            seconds,
        )
        return {"async/weight_bytes": float(sent)}

    def metrics(self, trained: int, rollouts: StepRollouts) -> dict[str, float]:
        """How old the step's samples are (optimizer steps) and what sampling them measured on the rollout ranks."""
        tokens = sum(len(c.token_ids) for g in rollouts.generated for c in g.completions)
        return {
            "async/staleness_mean": float(trained - rollouts.version),
            "timing/rollout_wait_s": rollouts.timings.get("rollout_wait", 0.0),
            "rollout/generate_s": rollouts.timings.get("rollout", 0.0),
            "rollout/reward_s": rollouts.timings.get("reward", 0.0),
            "rollout/tokens_per_s": tokens / max(rollouts.timings.get("rollout", 0.0), 1e-9),
        }

    def pending(self, trained: int) -> list[dict]:
        """The rollouts of the steps after `trained` that are sampled with weights older than the current ones (a
        checkpoint's share of the pipeline), waiting for them when needed."""
        last = min(trained + self.staleness, self.total)
        return [self._fetch(step).to_json() for step in range(trained + 1, last + 1)]

    def close(self) -> None:
        """Tells the rollout ranks to stop (the run is done or stopping)."""
        if self.world.is_main:
            self.messages.post("stop", True)

    def _fetch(self, step: int) -> StepRollouts:
        """Step `step`'s rollouts, from the store the first time (the main trainer reads, every trainer gets them)."""
        if step not in self.ready:
            data = [self.messages.wait(f"rollouts/{step}") if self.world.is_main else None]
            dist.broadcast_object_list(data, src=0)
            if self.world.is_main:
                self.link.store.delete_key(f"rollouts/{step}")
            self.ready[step] = StepRollouts.from_json(data[0])
        return self.ready[step]


def serve_rollouts(config: RewardMapConfig, world: World) -> None:
    """A rollout rank's whole run: samples each step the trainers will train, in order, with the weights it needs;
    returns when the trainers say stop. An error is posted for the trainers (naming this rank) before it is raised."""
    messages = Messages(world.link, None)
    try:
        _serve(config, world, messages)
    except Exception as error:
        messages.post("error", f"rollout rank {world.link.launch_rank} (torchrun rank) failed: {error!r}")
        raise


def _serve(config: RewardMapConfig, world: World, messages: Messages) -> None:
    """The loop of `serve_rollouts`."""
    for number in (signal.SIGTERM, signal.SIGINT):  # the trainers stop the run: they still need pending rollouts
        signal.signal(number, signal.SIG_IGN)
    parts: RolloutParts = build_rollout_parts(config, world)
    start = messages.wait("start", watch_errors=False)
    if world.is_main:
        messages.post("ready", {"dtype": str(parts.engine.dtype).removeprefix("torch.")})
    staleness, trainers = config.rollout.max_staleness, world.link.trainers
    version = -1
    for step in range(start["first"], start["total"] + 1):
        if messages.arrived("stop"):  # the trainers stopped early (a signal, an error): nothing more to sample
            return
        needed = sampling_version(step, staleness)
        waited = 0.0
        if version != needed:
            began = time.perf_counter()
            while messages.arrived(f"weights/{needed}/0", "stop") is None:
                time.sleep(POLL_S)
            if messages.arrived(f"weights/{needed}/0") is None:  # stopped before a step that needs them
                return
            waited = time.perf_counter() - began
            parts.engine.load_weights(receive_weights(world.link, messages, needed, world.device))
            version = needed
        stage, indices = parts.stream.batches[step - 1]
        rollouts = sample_step(parts, step - 1, stage, whole_batch(list(indices), trainers), version)
        rollouts.timings["rollout_wait"] = waited
        if world.is_main:
            messages.post(f"rollouts/{step}", rollouts.to_json())
    while messages.arrived("stop") is None:
        time.sleep(POLL_S)
