"""The one checkpoint format: save -> load, the crop and origin it records, files of formats 0 and 1, the newest of
a run, resuming."""

from __future__ import annotations

import pytest
import torch

from dataclasses import replace

from model.checkpoint import (FORMAT, Checkpoint, CheckpointWarning, find_checkpoint, read_checkpoint,
                              restore_checkpoint, save_checkpoint, write_checkpoint)
from model.config import PRESETS
from model.expert import SyncExpert
from model.loss import sync_loss

CONFIG = PRESETS["cpu-small"]


def _inputs(batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    faces = torch.randint(0, 256, (batch, CONFIG.window_frames, CONFIG.face_size, CONFIG.face_size, 3),
                          generator=gen, dtype=torch.uint8)
    mels = 8 * torch.rand(batch, CONFIG.mel_bins, CONFIG.mel_window, generator=gen) - 4
    return faces, mels


def _trained(steps: int = 2) -> tuple[SyncExpert, torch.optim.Optimizer]:
    """An expert a few steps away from its initialisation: batch-norm statistics and Adam moments included."""
    torch.manual_seed(0)
    expert = SyncExpert(CONFIG)
    optimizer = torch.optim.AdamW(expert.parameters(), lr=1e-3)
    for step in range(steps):
        similarity = expert.similarity(*_inputs(seed=step))
        loss = sync_loss(similarity, torch.tensor([1.0, 0.0, 1.0, 0.0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return expert.eval(), optimizer


def test_save_then_load_gives_the_same_outputs_exactly(tmp_path):
    expert, optimizer = _trained()
    path = save_checkpoint(tmp_path, expert, step=2, optimizer=optimizer, train_config={"preset": "cpu-small"})
    assert torch.load(path, weights_only=True)["format"] == FORMAT
    loaded = SyncExpert.from_checkpoint(tmp_path)
    assert loaded.config == CONFIG and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    faces, mels = _inputs(seed=9)
    with torch.no_grad():
        assert torch.equal(loaded.similarity(faces, mels), expert.similarity(faces, mels))
    assert read_checkpoint(path).train_config == {"preset": "cpu-small"}


def test_a_checkpoint_of_format_0_loads(tmp_path):
    """Written as runs did before the format had a version: no "format", the flat model config."""
    expert, optimizer = _trained()
    flat = {"window_frames": 5, "face_size": 96, "mel_bins": 80, "video_fps": 25, "mel_fps": 80.0, "width": 8,
            "embedding_dim": 512}
    torch.save({"model": expert.state_dict(), "optimizer": optimizer.state_dict(), "step": 2, "model_config": flat,
                "train_config": {"preset": "cpu-small"}}, tmp_path / "expert.pt")
    checkpoint = read_checkpoint(tmp_path / "expert.pt")
    assert checkpoint.step == 2 and checkpoint.model_config == CONFIG
    faces, mels = _inputs(seed=9)
    with torch.no_grad():
        assert torch.equal(SyncExpert.from_checkpoint(tmp_path).similarity(faces, mels),
                           expert.similarity(faces, mels))


def test_the_crop_and_the_origin_round_trip(tmp_path):
    config = replace(CONFIG, crop="box", crop_pad_bottom=0.1)
    expert = SyncExpert(config)
    source = {"project": "wav2lip", "sha256": "0" * 64}
    path = write_checkpoint(tmp_path / "imported.pt", Checkpoint(step=3, model=expert.state_dict(),
                                                                 model_config=config, source=source))
    checkpoint = read_checkpoint(path)
    assert checkpoint.model_config == config and checkpoint.source == source
    assert SyncExpert.from_checkpoint(path).config.crop == "box"
    with pytest.raises(ValueError, match="--crop-pad-bottom"):
        replace(CONFIG, crop_pad_bottom=0.1)  # padding a box that aligned crops do not have


def test_a_checkpoint_of_format_1_holds_an_aligned_expert(tmp_path):
    expert, _ = _trained(steps=0)
    path = save_checkpoint(tmp_path, expert, step=0)
    values = torch.load(path, weights_only=True)
    config = {name: value for name, value in values.pop("model_config").items() if not name.startswith("crop")}
    del values["source"]
    torch.save({**values, "format": 1, "model_config": config}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.model_config == CONFIG and checkpoint.model_config.crop == "aligned"
    assert checkpoint.source is None


def test_a_newer_format_is_refused(tmp_path):
    expert, _ = _trained(steps=0)
    path = save_checkpoint(tmp_path, expert, step=0)
    torch.save({**torch.load(path, weights_only=True), "format": FORMAT + 1}, path)
    with pytest.raises(ValueError, match=f"format {FORMAT + 1}"):
        read_checkpoint(path)


def test_find_checkpoint_picks_the_highest_step_not_the_newest_file(tmp_path):
    expert, _ = _trained(steps=0)
    for step in (20, 10, 5):  # the highest step written first: the newest file is step 5's
        (tmp_path / f"checkpoint_{step}").mkdir()
        save_checkpoint(tmp_path / f"checkpoint_{step}", expert, step=step)
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint_20" / "expert.pt"
    assert read_checkpoint(tmp_path).step == 20
    assert find_checkpoint(tmp_path / "checkpoint_5" / "expert.pt") == tmp_path / "checkpoint_5" / "expert.pt"


def test_restore_continues_training_where_it_stopped_with_the_new_learning_rate(tmp_path):
    expert, optimizer = _trained()
    save_checkpoint(tmp_path, expert, step=2, optimizer=optimizer)
    torch.manual_seed(1)
    fresh = SyncExpert(CONFIG)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=5e-4)
    assert restore_checkpoint(tmp_path, fresh, fresh_optimizer) == 2
    faces, mels = _inputs(seed=9)
    with torch.no_grad():
        assert torch.equal(fresh.eval().similarity(faces, mels), expert.similarity(faces, mels))
    assert fresh_optimizer.param_groups[0]["lr"] == 5e-4  # the resumed run's, not the checkpoint's 1e-3
    for restored, saved in zip(fresh.parameters(), expert.parameters()):  # Adam's moments, so the run goes on
        assert torch.equal(fresh_optimizer.state[restored]["exp_avg"], optimizer.state[saved]["exp_avg"])


def test_a_truncated_newest_checkpoint_falls_back_to_the_older_good_one(tmp_path):
    expert, optimizer = _trained()
    older = save_checkpoint(tmp_path / "checkpoint_10", expert, step=10, optimizer=optimizer)
    newer = save_checkpoint(tmp_path / "checkpoint_20", expert, step=20, optimizer=optimizer)
    newer.write_bytes(newer.read_bytes()[: newer.stat().st_size // 2])  # a disk that filled up mid-copy
    with pytest.warns(CheckpointWarning, match=f"checkpoint {newer} passed over"):
        assert find_checkpoint(tmp_path) == older
    fresh = SyncExpert(CONFIG)
    with pytest.warns(CheckpointWarning, match=str(newer)):
        assert restore_checkpoint(tmp_path, fresh, torch.optim.AdamW(fresh.parameters())) == 10
    older.write_bytes(b"not a checkpoint")
    with pytest.warns(CheckpointWarning), pytest.raises(FileNotFoundError, match="all 2 are damaged"):
        find_checkpoint(tmp_path)
