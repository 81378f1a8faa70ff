"""Training on Ray Train from real (synthetic) shards: DDP, equal steps, checkpoints, resume, failures, s3."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointWarning, find_checkpoint, save_checkpoint
from model.config import PRESETS
from model.expert import SyncExpert
from pipelines.core.clock import Clock
from pipelines.faces.base import FaceConfig
from pipelines.shards.reader import list_shards
from train_ray import LocalSession, RunLog, TrainConfig, claim_run, main, restore, train, validate, validation_data

FAST = dict(preset="cpu-small", batch_size=16, log_every=5, val_every=10, checkpoint_every=10, val_batches=2,
            val_segments=2, loader_workers=0, progress=False)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from pipelines.preprocess import PreprocessConfig, run
    from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus

    root = tmp_path_factory.mktemp("train")
    generate_corpus(SyntheticConfig(out=root / "corpus", num_videos=6, seed=5, heldout_fraction=0, min_seconds=4,
                                    max_seconds=5, workers=2), progress=False)
    run(PreprocessConfig(input=str(root / "corpus" / "videos"), output=str(root / "shards"), val_fraction=0.34,
                         progress=False, faces=FaceConfig(aligner="dlib")))
    return root / "shards"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_refuses_an_output_under_a_file_before_it_starts(tmp_path, capsys):
    from train_ray import main

    (tmp_path / "file").write_bytes(b"x")
    assert main(["--shards", str(tmp_path), "--output", str(tmp_path / "file" / "run")]) == 2
    output, blocking = str(tmp_path / "file" / "run"), str(tmp_path / "file")
    assert capsys.readouterr().err == f"error: output {output!r} cannot be created: {blocking!r} is not a folder; " \
                                      f"name a new folder, or one that exists\n"


def test_two_ddp_workers_on_one_shard_take_equal_steps(shards, tmp_path, capfd):
    assert len(list(shards.glob("shard-*.tar"))) == 1  # fewer shards than workers: the classic hang
    result = train(TrainConfig(shards=str(shards), output=str(tmp_path / "run"), num_workers=2, max_steps=20,
                               lr=1e-3, scale_lr=True, **{**FAST, "progress": True}))
    # Without the dashboard, Ray Train's placement-group cleaner used to log this every second of the run.
    console = "".join(capfd.readouterr())
    assert "Failed to query Ray Train Controller" not in console
    assert "Reporting training result" not in console  # each rank's every report, at INFO: Ray's log files only
    assert "Started a local Ray instance" not in console
    assert "core_worker" not in console  # the preemption watcher's restartable-arguments line (Ray issue 53727)
    assert console.count("pair pool on cpu:") == 1  # rank 0's line, once: not again through Ray Train's print
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert all(r["steps_per_rank"] == [r["step"], r["step"]] for r in rows)
    # Each rank holds its own share (about 2 training segments of the 4) in its pool and mixes them in a batch.
    assert all(1 <= r["batch_segments"] <= 4 and 1 <= r["pool_segments"] <= 4 for r in rows)
    # 20 steps on two ranks' two segments each: training BCE falls (0.71 -> 0.67 when measured); validation, on
    # the same seeded pairs at both validations, is too few pairs of too few segments to fall reliably as well.
    first, final = rows[1], rows[-1]
    assert final["val_pairs"] == first["val_pairs"] > 0 and rows[-1]["loss"] < rows[0]["loss"]
    assert all(0 < r["val_loss"] < 2 for r in (first, final))
    assert result.checkpoint is not None and (Path(result.checkpoint.path) / "expert.pt").is_file()
    state = torch.load(Path(result.checkpoint.path) / "expert.pt", map_location="cpu", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-3)  # --scale-lr: lr times 2 workers
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


def test_rerunning_the_command_resumes(shards, tmp_path):
    output = str(tmp_path / "run")
    train(TrainConfig(shards=str(shards), output=output, num_workers=1, max_steps=10, **FAST))
    train(TrainConfig(shards=str(shards), output=output, num_workers=1, max_steps=20, lr=5e-4, **FAST))
    assert [r["step"] for r in metrics(tmp_path / "run")] == [5, 10, 15, 20]  # 15 and 20 only: it went on
    # Scoring's --checkpoint: a run folder gives its newest checkpoint, a file gives itself.
    newest = find_checkpoint(output)
    state = torch.load(newest, map_location="cpu", weights_only=True)
    assert state["step"] == 20 and state["optimizer"]["param_groups"][0]["lr"] == 5e-4  # the resumed run's --lr
    older = [path for path in Path(output).rglob("expert.pt") if path != newest]
    assert older and all(find_checkpoint(path) == path for path in older)


def _descendants(pid: int) -> list[int]:
    """The processes under `pid`, from /proc. Ray started by this process runs its raylet as our child and its
    workers under that, so this finds this test's workers and never those of another Ray on the machine."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue  # it has just exited
        children.setdefault(parent, []).append(int(entry.name))
    found, waiting = [], [pid]
    while waiting:
        below = children.get(waiting.pop(), [])
        found += below
        waiting += below
    return found


def _kill_a_train_worker_once(run: Path, after_step: int, stop: threading.Event, killed: list) -> None:
    """Wait until the run has checkpointed past `after_step`, then SIGKILL one of its Ray Train worker processes."""
    while not stop.is_set():
        checkpointed = [p for p in run.glob("checkpoint_*/expert.pt")]
        if checkpointed and (run / "metrics.jsonl").exists() and any(r["step"] > after_step for r in metrics(run)):
            for pid in _descendants(os.getpid()):
                try:
                    command = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"RayTrainWorker" in command:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
        time.sleep(0.2)


def test_killed_worker_restarts_from_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_a_train_worker_once, args=(run, 10, stop, killed), daemon=True)
    killer.start()
    try:
        train(TrainConfig(shards=str(shards), output=str(run), num_workers=2, max_steps=30, max_failures=2, **FAST))
    finally:
        stop.set()
    steps = [r["step"] for r in metrics(run)]
    assert killed, "no training worker was killed"
    assert steps[-1] == 30
    # A restart from zero would log step 5 again; from the step-10 checkpoint it logs only later steps.
    assert steps.count(5) == 1 and steps.count(10) == 1


@pytest.mark.parametrize("theirs, named", [
    (PRESETS["full"], "(preset 'full') has width=32, this run's (preset 'cpu-small') width=8"),
    (replace(PRESETS["cpu-small"], clock=Clock(window_frames=7)),
     "(no preset) has clock.window_frames=7, this run's (preset 'cpu-small') clock.window_frames=5"),
])
def test_resuming_with_another_model_stops_and_says_what_to_do(tmp_path, theirs, named):
    session = LocalSession(str(tmp_path / "run"))
    folder = session.folder / "step_0000010"
    folder.mkdir(parents=True)
    theirs_expert = SyncExpert(theirs)
    path = save_checkpoint(folder, theirs_expert, step=10, optimizer=torch.optim.AdamW(theirs_expert.parameters()))
    ours = SyncExpert(PRESETS["cpu-small"])
    with pytest.raises(ValueError) as error:
        restore(ours, torch.optim.AdamW(ours.parameters()), session)
    message = str(error.value)
    assert str(path) in message and named in message
    assert "--preset" in message and "another --output" in message


def test_a_local_resume_says_where_it_goes_on_from_and_passes_over_a_truncated_checkpoint(tmp_path, capsys):
    session = LocalSession(str(tmp_path / "run"))
    expert = SyncExpert(PRESETS["cpu-small"])
    good = save_checkpoint(session.folder / "step_0000010", expert, step=10,
                           optimizer=torch.optim.AdamW(expert.parameters()))
    bad = save_checkpoint(session.folder / "step_0000020", expert, step=20,
                          optimizer=torch.optim.AdamW(expert.parameters()))
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.warns(CheckpointWarning, match=str(bad)):
        assert restore(expert, torch.optim.AdamW(expert.parameters()), session) == 10
    assert f"resuming from step 10 (checkpoint {good})" in capsys.readouterr().err  # with the progress bar, on stderr


def test_the_command_refuses_a_mismatched_resume_before_any_worker_starts(shards, tmp_path, capsys):
    import ray

    run = tmp_path / "run"
    save_checkpoint(LocalSession(str(run)).folder / "step_0000010", SyncExpert(PRESETS["full"]), step=10)
    assert main(["--shards", str(shards), "--output", str(run), "--preset", "cpu-small", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: cannot resume from") and "width=32" in error and "width=8" in error
    assert not ray.is_initialized()


def test_validation_is_the_same_at_every_validation_and_on_every_rank(shards):
    config = TrainConfig(shards=str(shards), **FAST)
    shard_uris = list_shards(config.shards, config.storage)
    torch.manual_seed(0)
    expert = SyncExpert(PRESETS[config.preset])
    first = validate(expert, config, validation_data(config, shard_uris, expert.config.clock))
    assert first["val_pairs"] > 0 and first["val_offset_segments"] > 0
    validation = validation_data(config, shard_uris, expert.config.clock)  # as another rank builds it
    assert validate(expert, config, validation) == first
    assert validate(expert, config, validation) == first  # and again, at the next validation
    other_seed = replace(config, seed=1)  # the pairs come from the run's seed, not from a constant
    assert validate(expert, other_seed, validation_data(other_seed, shard_uris, expert.config.clock)) != first


def test_local_launcher_from_s3_shards(shards, s3_server, tmp_path):
    from pipelines.core.storage import StorageConfig, write_bytes_atomic
    from s3_server import make_bucket

    storage = StorageConfig(endpoint=s3_server)
    make_bucket(s3_server, "training")
    for path in shards.glob("shard-*"):
        write_bytes_atomic(f"s3://training/shards/{path.name}", path.read_bytes(), storage)
    train(TrainConfig(shards="s3://training/shards", storage=storage, output=str(tmp_path / "run"),
                      launcher="local", max_steps=10, **FAST))
    rows = metrics(tmp_path / "run")
    assert rows[-1]["step"] == 10 and rows[-1]["val_pairs"] > 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_0000010"]


def test_a_local_run_with_augmentation_and_a_cosine_schedule_records_both(shards, tmp_path):
    from model.augment import AugmentConfig
    from model.checkpoint import read_checkpoint
    from train_ray import learning_rate

    config = TrainConfig(shards=str(shards), output=str(tmp_path / "run"), launcher="local", max_steps=10,
                         lr_schedule="cosine", warmup_steps=3, min_lr_fraction=0.2,
                         augmentation=AugmentConfig(augment=True, augment_flip=1.0), **FAST)
    train(config)
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [5, 10] and rows[-1]["val_pairs"] > 0 and rows[-1]["loss"] < 2
    # Each row's rate is its last step's: step 5 is the cosine's second step, step 10 the last before the floor.
    assert [r["lr"] for r in rows] == [pytest.approx(learning_rate(s - 1, config)) for s in (5, 10)]
    assert rows[0]["lr"] > rows[1]["lr"] > 0.2 * config.lr
    checkpoint = read_checkpoint(tmp_path / "run")
    assert checkpoint.train_config["lr_schedule"] == "cosine" and checkpoint.train_config["warmup_steps"] == 3
    assert checkpoint.train_config["augmentation"] == {**asdict(AugmentConfig()), "augment": True, "augment_flip": 1.0}
    state = torch.load(find_checkpoint(tmp_path / "run"), map_location="cpu", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(learning_rate(9, config))


def test_init_from_starts_a_new_run_from_an_experts_weights_and_only_a_new_one(shards, tmp_path, capsys):
    """--init-from: a fine-tuning run begins at step 0 from the given weights (at lr 0 it keeps them exactly), says
    so, and once it has a checkpoint of its own resumes from that instead; a mismatched or missing expert is one
    line before anything starts."""
    import ray

    from model.checkpoint import read_checkpoint

    torch.manual_seed(7)
    given = tmp_path / "given"
    save_checkpoint(given, SyncExpert(PRESETS["cpu-small"]), step=500)  # weights unlike a seed-0 start's
    weights = read_checkpoint(given).model
    config = TrainConfig(shards=str(shards), output=str(tmp_path / "tuned"), launcher="local", max_steps=10, lr=0.0,
                         weight_decay=0.0, init_from=str(given), **FAST)
    train(config)
    assert "starting from the weights of" in capsys.readouterr().err
    tuned = read_checkpoint(tmp_path / "tuned")
    assert tuned.step == 10
    parameters = [name for name, _ in SyncExpert(PRESETS["cpu-small"]).named_parameters()]  # not BatchNorm's stats
    assert parameters and all(torch.equal(tuned.model[name], weights[name]) for name in parameters)
    train(replace(config, max_steps=20))  # its own checkpoint now: resumed, not started again
    err = capsys.readouterr().err
    assert "resuming from step 10" in err and "starting from the weights" not in err
    assert read_checkpoint(tmp_path / "tuned").step == 20

    save_checkpoint(tmp_path / "full", SyncExpert(PRESETS["full"]), step=1)
    for start, expected in ((tmp_path / "full", "cannot start from"), (tmp_path / "nowhere", "--init-from: no expert.pt")):
        assert main(["--shards", str(shards), "--output", str(tmp_path / "other"), "--preset", "cpu-small",
                     "--init-from", str(start), "--no-progress"]) == 2
        assert capsys.readouterr().err.startswith(f"error: {expected}")
    assert not ray.is_initialized()


def test_a_run_killed_and_rerun_at_once_stops_writing_when_the_new_one_claims_the_folder(tmp_path):
    """Ray's workers outlive a killed driver for a while: the dying run's rank 0 must not append to the new run's
    metrics. Each command claims the folder; a log whose claim is gone stops, and writes nothing."""
    dying = RunLog(tmp_path, claim_run(tmp_path))
    dying.write({"step": 10, "loss": 0.5})
    rerun = RunLog(tmp_path, claim_run(tmp_path))
    rerun.write({"step": 10, "loss": 0.5})
    with pytest.raises(RuntimeError, match="claimed by another run"):
        dying.write({"step": 20, "loss": 0.4})
    rerun.write({"step": 20, "loss": 0.4})
    assert [r["step"] for r in metrics(tmp_path)] == [10, 10, 20]
