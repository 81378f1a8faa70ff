"""`python train_ray.py --shards DST --output RUN [options]`: train the sync expert on Ray Train.

Each of `--num-workers` workers (DDP over gloo on CPU, NCCL on GPU) streams segments from its own share of the
shards into a pool on its device and draws its batches there (model/loader/): in-sync face/mel windows and
shifted ones, balanced. Every rank runs exactly `--max-steps` steps from an endless stream, so no rank ever waits
at an epoch end for another.

Rank 0 logs loss, accuracy, samples/s and the learning rate every `--log-every` steps, validates every
`--val-every` steps (validation BCE and accuracy on the fixed, seeded validation pairs; offset accuracy on
validation segments with simulated audio delays), appends everything to RUN/metrics.jsonl and redraws
RUN/curves.png.
A checkpoint (model, optimizer, step, config) is reported every `--checkpoint-every` steps and at the end;
running the same command again resumes from the newest one, and a killed worker restarts from it
(`--max-failures`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from model.augment import AugmentConfig, augment_pairs
from model.checkpoint import (check_resumable, check_startable, find_checkpoint, load_weights, restore_checkpoint,
                              save_checkpoint)
from model.config import PRESETS
from model.expert import SyncExpert
from model.loader.pool import PoolConfig
from model.loader.stream import PairStream
from model.loader.windows import PairConfig
from model.loss import accuracy, sync_loss
from model.offset import offset_curve
from pipelines.audio import AudioConfig
from pipelines.core.clock import Clock
from pipelines.core.device import resolve_device
from pipelines.core.ray_session import train_runtime_env
from pipelines.core.storage import StorageConfig, check_output, write_bytes_atomic
from pipelines.shards.reader import iter_segments, list_shards, shards_holding

# Training pairs draw from entropy [run seed, the step the run resumed from, ...], validation's pairs and simulated
# delays from [run seed, purpose, ...], as the loader's streams do (model/loader/stream.py): the same run validates
# on the same pairs and delays at every validation. The purposes lie above any step a run reaches, so that no
# resumed run draws validation's stream.
VALIDATION_PAIRS, VALIDATION_DELAYS = 2**32 - 1, 2**32 - 2  # one 32-bit word each: SeedSequence splits larger ints
AUGMENTATION = 2**32 - 3  # the augmentation's draws: [run seed, AUGMENTATION, rank, the step the run resumed from]
# Decoding for the pool loader at the default windows per segment: what keeps one H200's step fed (bench/README.md).
LOADER_PROCESSES_PER_GPU = 4


@dataclass(frozen=True)
class TrainConfig:
    shards: str = field(metadata={"help": "folder or s3://bucket/prefix holding shard-*.tar from pipelines.preprocess"})
    output: str = field(default="runs/expert", metadata={"help": "run folder: checkpoints, metrics.jsonl, curves.png"})
    preset: str = field(default="cpu-small", metadata={"help": "model size", "choices": sorted(PRESETS)})
    num_workers: int = field(default=2, metadata={"help": "data-parallel workers (one per GPU with --use-gpu)"})
    use_gpu: bool = field(default=False, metadata={"help": "train on GPUs (bf16 autocast, channels_last)"})
    compile: bool = field(default=True, metadata={"help": "torch.compile the model on GPUs (about 40 s once, at the "
                                                     "first step; 1.3x the steps per second after); not on CPUs"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps (each rank)"})
    batch_size: int = field(default=64, metadata={"help": "pairs per step per worker"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (the peak, with a schedule)"})
    lr_schedule: str = field(default="constant", metadata={
        "help": "constant: --lr after the warmup; cosine: from --lr down to --min-lr-fraction of it at --max-steps",
        "choices": ["constant", "cosine"]})
    warmup_steps: int = field(default=0, metadata={"help": "steps of linear warmup to --lr"})
    min_lr_fraction: float = field(default=0.1, metadata={"help": "cosine: the last learning rate, a fraction of --lr"})
    scale_lr: bool = field(default=False, metadata={"help": "multiply --lr by --num-workers (the linear scaling rule: "
                                                    "about one worker's loss at equal samples seen)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    log_every: int = field(default=20, metadata={"help": "steps between training metrics"})
    val_every: int = field(default=200, metadata={"help": "steps between validations"})
    checkpoint_every: int = field(default=200, metadata={"help": "steps between checkpoints"})
    val_batches: int = field(default=8, metadata={"help": "validation batches for BCE and accuracy"})
    val_segments: int = field(default=32, metadata={"help": "validation segments for offset accuracy"})
    max_offset: int = field(default=15, metadata={"help": "offsets searched, in frames either way"})
    loader_workers: int = field(default=-1, metadata={"help": "DataLoader processes per training worker decoding "
                                                              f"shards (-1: {LOADER_PROCESSES_PER_GPU} per GPU, 1 on a CPU)"})
    init_from: str | None = field(default=None, metadata={
        "help": "start from this expert's weights (a checkpoint file or run folder, of this --preset) when the run "
                "has no checkpoint of its own: fine-tuning; its step and optimizer are not taken"})
    max_failures: int = field(default=2, metadata={"help": "worker failures to recover from (from the last checkpoint)"})
    launcher: str = field(default="ray", metadata={"help": "ray: Ray Train workers; local: this process alone (one device, no Ray)",
                                                   "choices": ["ray", "local"]})
    seed: int = field(default=0, metadata={"help": "seed for initialisation and pair sampling"})
    progress: bool = field(default=True, metadata={"help": "progress bar on rank 0"})
    pairs: PairConfig = field(default_factory=PairConfig, metadata={"help": "training pairs"})
    pool: PoolConfig = field(default_factory=PoolConfig, metadata={"help": "decoded segments on the training device"})
    augmentation: AugmentConfig = field(default_factory=AugmentConfig,
                                        metadata={"help": "augmentation of training pairs (model/augment.py)"})
    storage: StorageConfig = field(default_factory=StorageConfig, metadata={"help": "object storage for s3:// shards"})

    def __post_init__(self):
        problems = []
        if self.preset not in PRESETS:
            problems.append(f"--preset must be one of {sorted(PRESETS)}")
        for name in ("num_workers", "max_steps", "batch_size", "log_every", "val_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr_schedule not in ("constant", "cosine"):
            problems.append("--lr-schedule must be constant or cosine")
        if self.warmup_steps < 0:
            problems.append("--warmup-steps must not be negative")
        if not 0 <= self.min_lr_fraction <= 1:
            problems.append("--min-lr-fraction must lie in [0, 1]")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))


# --- the loop each worker runs -------------------------------------------------------------------------------

def train_loop_per_worker(loop_config: dict) -> None:
    """What every Ray Train worker runs."""
    config = loop_config["config"]
    run_loop(config, RaySession(config.output), loop_config["owner"])


class RaySession:
    """The four things the loop needs from its launcher, from Ray Train."""

    def __init__(self, output: str):
        import ray.train
        import ray.train.torch

        self.output = output
        self._train, self._torch = ray.train, ray.train.torch
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    @contextlib.contextmanager
    def latest_checkpoint(self):
        """The newest checkpoint that loads, as a checkpoint file (None for none): Ray's own, else the run folder's.

        Ray hands the checkpoint it last recorded, loadable or not (a disk that filled up while it was copied).
        And seen with Ray 2.60: workers restarted after a failure got no checkpoint although one had been
        reported. The run folder holds every persisted checkpoint, so the newest good one is there."""
        checkpoint = self._train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                given = _good_checkpoint(folder)
                if given is not None:
                    yield given
                    return
        yield _good_checkpoint(self.output)

    def prepare_model(self, model):
        return self._torch.prepare_model(model)  # DDP when world > 1

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        # Every rank reports at the same steps (Ray Train requires it); only rank 0 carries the checkpoint.
        self._train.report(metrics, checkpoint=self._train.Checkpoint.from_directory(checkpoint_dir)
                           if checkpoint_dir else None)


class LocalSession:
    """One process, one device, no Ray: for a single GPU machine without Ray, and for debugging.
    Checkpoints go to OUTPUT/checkpoints/step_NNNNNNN/, the newest two kept."""

    rank, world = 0, 1

    def __init__(self, output: str):
        self.folder = Path(output) / "checkpoints"
        self.device = resolve_device("auto")

    def latest_checkpoint(self):
        return contextlib.nullcontext(_good_checkpoint(self.folder))

    def prepare_model(self, model):
        return model

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        if checkpoint_dir:
            target = self.folder / f"step_{metrics['step']:07d}"
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(checkpoint_dir, target)
            for old in sorted(self.folder.glob("step_*"))[:-2]:
                shutil.rmtree(old)


def run_loop(config: TrainConfig, session, owner: str) -> None:
    rank, world, device = session.rank, session.world, session.device
    on_gpu = device.type == "cuda"
    torch.manual_seed(config.seed)

    expert = SyncExpert(PRESETS[config.preset]).to(device)
    if on_gpu:
        expert = expert.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(expert.parameters(), lr=learning_rate(0, config, world),
                                  weight_decay=config.weight_decay, fused=on_gpu)
    step = restore(expert, optimizer, session)
    if step == 0 and config.init_from:  # a run's own checkpoint, once it has one, always wins
        started_from = load_weights(config.init_from, expert)
        if rank == 0:
            say(f"starting from the weights of {started_from}")
    model = session.prepare_model(expert)
    compiled = config.compile and on_gpu
    if compiled:
        model = torch.compile(model)

    shard_uris = list_shards(config.shards, config.storage)
    validation = validation_data(config, shard_uris, expert.config.clock, device)
    # The step a run resumes from is part of the seed, so a resumed run does not replay the same pairs.
    stream = PairStream(shard_uris, config.storage, "train", config.pairs, expert.config.clock, config.batch_size,
                        seed=(config.seed, step), rank=rank, world_size=world, repeat=True, device=device,
                        pool=config.pool, loader_workers=loader_processes(config))
    batches = iter(stream)
    # On the training device, seeded like the pairs, so that a resumed run does not replay the same draws.
    augmenting = torch.Generator(device=device)
    augmenting.manual_seed(int(np.random.SeedSequence([config.seed, AUGMENTATION, rank, step]).generate_state(
        1, dtype=np.uint64)[0]))
    audio = AudioConfig(clock=expert.config.clock)  # the mels' normalisation, for the gain in dB
    log = RunLog(Path(config.output), owner) if rank == 0 else None
    if rank == 0 and compiled and config.progress:
        say("compiling the model at the first step (about 40 s, once)")
    bar = _progress(config, step) if rank == 0 else None
    window = _window(device)
    announce = rank == 0 and config.progress

    while step < config.max_steps:
        batch = next(batches)
        if announce:
            say(pool_summary(stream.counters, device))
            announce = False
        faces = expert.prepare_lower_faces(batch["faces"])
        mels = expert.prepare_mels(batch["mels"])
        faces, mels = augment_pairs(faces, mels, config.augmentation, augmenting, audio)
        if on_gpu:
            faces = faces.contiguous(memory_format=torch.channels_last)
        labels = batch["labels"]
        lr = learning_rate(step, config, world)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
            similarity = model(faces, mels)
        loss = sync_loss(similarity.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1

        # Summed on the device: reading a number back every step would make the host wait for the GPU each time.
        window["loss"] += loss.detach() * len(labels)
        window["correct"] += accuracy(similarity.detach().float(), labels) * len(labels)
        window["pairs"] += len(labels)
        window["segments"] = batch["segments"]
        if bar is not None:
            bar.update()

        due = {name: step % every == 0 or step == config.max_steps for name, every in
               (("log", config.log_every), ("val", config.val_every), ("checkpoint", config.checkpoint_every))}
        if not any(due.values()):
            continue
        metrics = {"step": step, "lr": lr, **_reduce(window, rank, world, step, device),
                   **loader_metrics(stream.counters)}
        window = _window(device)
        if due["val"]:
            metrics.update(validate(expert, config, validation))
        checkpoint_dir = tempfile.mkdtemp() if due["checkpoint"] and rank == 0 else None
        if checkpoint_dir:
            save_checkpoint(checkpoint_dir, expert, step, optimizer, train_config=asdict(config))
        if log is not None:
            log.write(metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}")
        session.report(metrics, checkpoint_dir)
    batches.close()  # stops the loader processes now, not at interpreter exit (a pin-memory thread would complain)
    if bar is not None:
        bar.close()


def learning_rate(step: int, config: TrainConfig, workers: int = 1) -> float:
    """The rate of the optimizer step after `step` steps: a function of the step alone, so a resumed run goes on
    where it stopped. Linear warmup over `warmup_steps` to --lr (times `workers` with --scale-lr), then constant,
    or a half cosine down to `min_lr_fraction` of it, reached at `max_steps`."""
    peak = config.lr * workers if config.scale_lr else config.lr
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return peak
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    floor = peak * config.min_lr_fraction
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def loader_processes(config: TrainConfig) -> int:
    if config.loader_workers >= 0:
        return config.loader_workers
    return LOADER_PROCESSES_PER_GPU if config.use_gpu else 1


def _window(device: torch.device) -> dict:
    zero = torch.zeros((), dtype=torch.float64, device=device)
    return {"loss": zero.clone(), "correct": zero.clone(), "pairs": 0, "segments": 0, "started": time.perf_counter()}


def say(line: str) -> None:
    """A worker's line for the user, on stderr beside its progress bar. Not through `print`: Ray Train replaces
    a worker's print with one that also logs the line, and its log handler puts it on the screen a second time."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def pool_summary(counters: dict, device: torch.device) -> str:
    """One line on the pool: what it holds and its bound (the bound is a flag, so a user must see it)."""
    held, bound = counters.get("pool_allocated_bytes", 0) / 2**30, counters.get("pool_max_bytes", 0) / 2**30
    return (f"pair pool on {device}: {counters.get('pool_segments', 0)} segments "
            f"({counters.get('pool_frames', 0)} frames, {held:.2f} GiB) at the first batch; it grows to at most "
            f"{bound:.2f} GiB (--memory-gib)")


LOADER_METRICS = ("segments_admitted", "pool_segments", "pool_tickets", "shards", "bad_shards", "bad_samples",
                  "ignored_members", "short_segments")


def loader_metrics(counters: dict) -> dict:
    """This rank's loader counts for metrics.jsonl (rank 0's; each rank reads its own share)."""
    found = {name: counters[name] for name in LOADER_METRICS if name in counters}
    if "pool_allocated_bytes" in counters:
        found["pool_gib"] = round(counters["pool_allocated_bytes"] / 2**30, 3)
    return found


def _good_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint under `folder` that loads (model.checkpoint.find_checkpoint), None for none."""
    try:
        return find_checkpoint(folder)
    except FileNotFoundError:
        return None


def restore(expert: SyncExpert, optimizer, session) -> int:
    """Load the newest good checkpoint of this run, if any (model.checkpoint.restore_checkpoint); returns the step
    to continue from."""
    with session.latest_checkpoint() as path:
        if path is None:
            return 0
        step = restore_checkpoint(path, expert, optimizer)
    if session.rank == 0:  # whoever reruns a command must see that it went on rather than started over
        say(f"resuming from step {step} (checkpoint {path})")
    return step


def _reduce(window: dict, rank: int, world: int, step: int, device: torch.device) -> dict:
    """Training metrics averaged over every rank's pairs since the last report, and each rank's step count
    (equal on every rank, or DDP would have hung: recorded so that a test can see it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the window's steps done, not only queued, before the clock is read
    elapsed = time.perf_counter() - window["started"]
    # On the training device: NCCL, the GPU backend, reduces nothing else.
    counts = torch.tensor([window["pairs"], elapsed], dtype=torch.float64, device=device)
    totals = torch.cat([torch.stack([window["loss"], window["correct"]]), counts])
    steps = torch.zeros(world, dtype=torch.float64, device=device)
    steps[rank] = step
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
        torch.distributed.all_reduce(steps)
    loss, correct, pairs, elapsed = totals.tolist()
    return {"loss": loss / max(pairs, 1), "accuracy": correct / max(pairs, 1),
            "samples_per_s": pairs / max(elapsed / world, 1e-9), "steps_per_rank": [int(x) for x in steps],
            "batch_segments": window["segments"]}


# --- validation ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ValidationData:
    """What validation reads, found once per run: the shards holding validation samples and a one-pass stream
    of seeded pairs from them (None when there are none), which gives the same batches at every iteration."""

    shard_uris: list[str]
    pairs: PairStream | None


def validation_data(config: TrainConfig, shard_uris: list[str], clock: Clock,
                    device: torch.device = torch.device("cpu")) -> ValidationData:
    held = shards_holding(shard_uris, config.storage, "val")
    # Validation measures the corpus as it is: its pairs are not weighted by source.
    unweighted = replace(config.pairs, source_weights=())
    pairs = PairStream(held, config.storage, "val", unweighted, clock, config.batch_size,
                       seed=(config.seed, VALIDATION_PAIRS), repeat=False, device=device,
                       pool=config.pool) if held else None
    return ValidationData(held, pairs)


@torch.no_grad()
def validate(expert: SyncExpert, config: TrainConfig, validation: ValidationData) -> dict:
    """BCE/accuracy on fixed validation pairs and offset accuracy on validation segments (every rank computes
    the same numbers, so they need no exchange and no rank waits for another)."""
    was_training = expert.training
    expert.eval()
    device = next(expert.parameters()).device
    losses, correct, pairs = 0.0, 0.0, 0
    for index, batch in enumerate(validation.pairs or ()):
        if index == config.val_batches:
            break
        similarity = expert(expert.prepare_lower_faces(batch["faces"].to(device)),
                            expert.prepare_mels(batch["mels"].to(device))).float()
        labels = batch["labels"].to(device)
        losses += sync_loss(similarity, labels).item() * len(labels)
        correct += accuracy(similarity, labels).item() * len(labels)
        pairs += len(labels)
    offsets = validation_offsets(expert, config, validation.shard_uris)
    expert.train(was_training)
    result = {"val_loss": losses / max(pairs, 1), "val_accuracy": correct / max(pairs, 1), "val_pairs": pairs}
    if offsets:
        errors = np.array([estimate - truth for truth, estimate in offsets])
        result.update(val_offset_exact=float(np.mean(errors == 0)), val_offset_within_1=float(np.mean(abs(errors) <= 1)),
                      val_offset_segments=len(offsets))
    return result


def validation_offsets(expert: SyncExpert, config: TrainConfig, shard_uris: list[str]) -> list[tuple[int, int]]:
    """(true, estimated) offsets on validation segments whose audio is delayed by a known, seeded amount."""
    rng = np.random.default_rng([config.seed, VALIDATION_DELAYS])
    delay_range = config.max_offset // 2  # simulated delays; the search still spans +-max_offset
    results = []
    for segment in iter_segments(shard_uris, config.storage, split="val"):
        needed = expert.config.window_frames + 2 * (config.max_offset + delay_range)
        if len(segment.faces) < needed:
            continue
        delay = int(rng.integers(-delay_range, delay_range + 1))
        result = offset_curve(expert, segment.faces, segment.mel, config.max_offset, audio_delay=delay)
        results.append((delay, result.offset_frames))
        if len(results) == config.val_segments:
            break
    return results


# --- logging ---------------------------------------------------------------------------------------------------

OWNER_FILE = "run.owner"  # the token of the command now running in the run folder


def claim_run(folder: Path) -> str:
    """Make the run folder this command's: a fresh token in OWNER_FILE, written whole, returned."""
    token = uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(str(folder / OWNER_FILE), token.encode(), StorageConfig())
    return token


class RunLog:
    """metrics.jsonl plus curves.png in the run folder (rank 0 only), written while `owner` owns the folder.

    Ray's workers outlive a SIGKILL of the driver by up to ~30 s; a command rerun in that window claims the
    folder, and the dying run's rank 0 then stops at its next write instead of interleaving its steps with the
    new run's."""

    def __init__(self, folder: Path, owner: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.owner = folder, owner
        self.jsonl, self.png = folder / "metrics.jsonl", folder / "curves.png"

    def write(self, metrics: dict) -> None:
        holder = (self.folder / OWNER_FILE).read_text()
        if holder != self.owner:
            raise RuntimeError(f"{self.folder} was claimed by another run ({holder}); this one ({self.owner}) stops")
        with self.jsonl.open("a") as out:
            out.write(json.dumps({**metrics, "time": time.time()}) + "\n")
        if "val_loss" in metrics:
            plot_curves(self.jsonl, self.png)


def plot_curves(jsonl: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("loss", "-"), ("val_loss", "o-")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            left.plot(*zip(*points), style, label=key)
    left.axhline(np.log(2), color="grey", linestyle=":", label="ln 2 (chance)")
    left.set(xlabel="step", ylabel="BCE", title="loss")
    left.legend()
    for key in ("accuracy", "val_accuracy", "val_offset_exact", "val_offset_within_1"):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            right.plot(*zip(*points), "-" if key == "accuracy" else "o-", label=key)
    right.set(xlabel="step", ylim=(0, 1.02), title="accuracy")
    right.legend()
    figure.tight_layout()
    figure.savefig(png, dpi=90)
    plt.close(figure)


def _progress(config: TrainConfig, start: int):
    from tqdm import tqdm

    # Under Ray a worker's output reaches the terminal line by line: refresh rarely enough to stay readable.
    return tqdm(total=config.max_steps, initial=start, unit="step", desc="train", disable=not config.progress,
                mininterval=10)


# --- entry point -----------------------------------------------------------------------------------------------

def train(config: TrainConfig):
    """Run (or resume) training; returns Ray Train's result (None with the local launcher)."""
    # Ray Train workers run in their own working folder: local paths must not depend on ours.
    config = replace(config, output=str(Path(config.output).resolve()),
                     shards=config.shards if "://" in config.shards else str(Path(config.shards).resolve()))
    check_output(config.output, config.storage)
    if not list_shards(config.shards, config.storage):
        raise ValueError(f"no shard-*.tar under {config.shards}: run `python -m pipelines.preprocess` first")
    # Here, before any worker starts: a worker's error would be retried --max-failures times, then wrapped by Ray.
    with contextlib.suppress(FileNotFoundError):
        check_resumable(config.output, PRESETS[config.preset])
    if config.init_from:
        try:
            check_startable(config.init_from, PRESETS[config.preset])
        except FileNotFoundError as error:
            raise ValueError(f"--init-from: {error}") from None
    owner = claim_run(Path(config.output))
    if config.launcher == "local":  # before importing Ray: the local launcher must work where Ray is absent
        run_loop(config, LocalSession(config.output), owner)
        return None
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING,
                 runtime_env=train_runtime_env(joins_cluster=bool(os.environ.get("RAY_ADDRESS"))))
    output = Path(config.output).resolve()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "owner": owner},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
        run_config=RunConfig(name=output.name, storage_path=str(output.parent),
                             failure_config=FailureConfig(max_failures=config.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             # Ray Train's worker-group lines stay in its log files (/tmp/ray/session_*/logs/train);
                             # its "Reporting training result" line is muted by the setup hook.
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    try:
        return trainer.fit()
    finally:
        if own_ray:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    from pipelines.core.cli import parse_config

    try:
        config = parse_config(TrainConfig, __doc__.split("\n")[0].strip("`"), argv)
        result = train(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in (Path(config.output) / "metrics.jsonl").read_text().splitlines()]
    final = next((row for row in reversed(rows) if "val_loss" in row), rows[-1])
    print("final:", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()}))
    if result is not None and result.checkpoint:
        print(f"checkpoint: {result.checkpoint.path}")
    print(f"curves: {Path(config.output) / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
