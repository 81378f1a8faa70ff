"""Tests for the sync expert: shapes, input preparation, the loss, mixed precision, and that it learns sync."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch

from model.config import PRESETS, ModelConfig
from model.encoders import ConvBlock
from model.expert import SyncExpert
from model.loss import accuracy, sync_loss
from pipelines.core.clock import Clock


def _inputs(config: ModelConfig, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    windows = torch.randint(0, 256, (batch, config.window_frames, config.face_size, config.face_size, 3),
                            generator=gen, dtype=torch.uint8)
    mels = 8 * torch.rand(batch, config.mel_bins, config.mel_window, generator=gen) - 4
    return SyncExpert.prepare_faces(windows), SyncExpert.prepare_mels(mels)


def _model(config: ModelConfig, seed: int = 0) -> SyncExpert:
    torch.manual_seed(seed)
    return SyncExpert(config)


# --- Config ------------------------------------------------------------------------------------------------


def test_mel_window_is_derived_from_the_rates() -> None:
    assert ModelConfig().mel_window == 16
    assert all(config.mel_window == 16 for config in PRESETS.values())
    assert ModelConfig(clock=Clock(window_frames=6, fps=30, sample_rate=24000, hop_length=300)).mel_window == 16
    assert ModelConfig(clock=Clock(window_frames=10)).mel_window == 32


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="face_size"):
        ModelConfig(face_size=95)
    with pytest.raises(ValueError, match="width"):
        ModelConfig(width=0)
    with pytest.raises(ValueError, match="shrinks to nothing"):
        SyncExpert(ModelConfig(face_size=16))


def test_residual_block_must_keep_its_shape() -> None:
    with pytest.raises(ValueError, match="residual"):
        ConvBlock(8, 16, 3, 1, 1, residual=True)


# --- Input preparation -------------------------------------------------------------------------------------


def test_prepare_faces_takes_lower_half_in_time_order() -> None:
    frames, side = 5, 8
    windows = torch.zeros(2, frames, side, side, 3, dtype=torch.uint8)
    for t in range(frames):
        for c in range(3):
            windows[:, t, : side // 2, :, c] = 50 * t + 10 * c  # upper half
            windows[:, t, side // 2:, :, c] = 50 * t + 10 * c + 5  # lower half: the only part kept
    faces = SyncExpert.prepare_faces(windows)
    assert faces.shape == (2, 3 * frames, side // 2, side) and faces.dtype == torch.float32
    for t in range(frames):
        for c in range(3):
            torch.testing.assert_close(faces[:, 3 * t + c], torch.full((2, side // 2, side), (50 * t + 10 * c + 5) / 255))


def test_prepare_faces_rejects_wrong_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        SyncExpert.prepare_faces(torch.zeros(1, 5, 8, 8, 3))
    with pytest.raises(ValueError, match="uint8"):
        SyncExpert.prepare_faces(torch.zeros(1, 5, 8, 6, 3, dtype=torch.uint8))


def test_prepare_mels_adds_a_channel() -> None:
    mels = SyncExpert.prepare_mels(torch.zeros(3, 80, 16, dtype=torch.float64))
    assert mels.shape == (3, 1, 80, 16) and mels.dtype == torch.float32
    with pytest.raises(ValueError, match="float"):
        SyncExpert.prepare_mels(torch.zeros(3, 80, 16, dtype=torch.int16))


# --- Model -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_shapes_dtypes_and_ranges(preset: str) -> None:
    config = PRESETS[preset]
    model = _model(config)
    faces, mels = _inputs(config, batch=3)
    face_embedding, audio_embedding = model.embed_faces(faces), model.embed_audio(mels)
    for embedding in (face_embedding, audio_embedding):
        assert embedding.shape == (3, config.embedding_dim) and embedding.dtype == torch.float32
        assert (embedding >= 0).all()
        torch.testing.assert_close(embedding.norm(dim=1), torch.ones(3))
    similarity = model(faces, mels)
    assert similarity.shape == (3,) and similarity.dtype == torch.float32
    assert ((similarity >= 0) & (similarity <= 1 + 1e-6)).all()


def test_sizes_scale_with_width() -> None:
    counts = {name: sum(p.numel() for p in SyncExpert(config).parameters()) for name, config in PRESETS.items()}
    assert 15e6 < counts["full"] < 18e6  # the Wav2Lip expert's size
    assert counts["cpu-small"] < counts["full"] / 10


def test_encoders_reject_wrong_shapes_and_pool_larger_inputs() -> None:
    model = _model(PRESETS["cpu-small"]).eval()
    faces, mels = _inputs(PRESETS["cpu-small"])
    with pytest.raises(ValueError, match="expected input"):
        model.embed_faces(faces[:, :, :, :64])
    with pytest.raises(ValueError, match="expected input"):
        model.embed_audio(mels[:, :, :, :12])
    larger = dataclasses.replace(PRESETS["cpu-small"], face_size=128, clock=Clock(window_frames=7))  # lands above 1x1
    faces, mels = _inputs(larger)
    assert _model(larger).eval()(faces, mels).shape == (2,)


def test_channels_last_and_bf16_autocast_on_cpu() -> None:
    config = PRESETS["cpu-small"]
    model = _model(config).eval()
    faces, mels = _inputs(config, batch=4)
    with torch.no_grad():
        reference = model(faces, mels)
    model = model.to(memory_format=torch.channels_last)
    faces = faces.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        similarity = model(faces, mels)
        loss = sync_loss(similarity, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert similarity.dtype == torch.float32 and loss.dtype == torch.float32
    torch.testing.assert_close(similarity, reference, atol=0.05, rtol=0)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_gradient_reaches_the_face_input() -> None:
    # A generator trained against the expert learns only through this gradient.
    config = PRESETS["cpu-small"]
    model = _model(config).eval()
    faces, mels = _inputs(config)
    faces.requires_grad_(True)
    sync_loss(model(faces, mels), torch.ones(2)).backward()
    assert faces.grad is not None and faces.grad.abs().sum() > 0


# --- Loss and accuracy -------------------------------------------------------------------------------------


def test_loss_is_finite_at_zero_and_one() -> None:
    similarity = torch.tensor([0.0, 1.0, 0.0, 1.0], requires_grad=True)
    loss = sync_loss(similarity, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 5  # two confident mistakes
    assert torch.isfinite(similarity.grad).all()


def test_loss_at_one_half_is_log_two() -> None:
    similarity = torch.full((4,), 0.5)
    for labels in (torch.ones(4), torch.zeros(4), torch.tensor([1.0, 0.0, 1.0, 0.0])):
        assert sync_loss(similarity, labels).item() == pytest.approx(math.log(2))
    assert math.log(2) == pytest.approx(0.693, abs=1e-3)


def test_loss_runs_in_fp32_under_autocast() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sync_loss(torch.full((2,), 0.5, dtype=torch.bfloat16), torch.ones(2))
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(math.log(2))


def test_accuracy_on_a_hand_example() -> None:
    similarity = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.5])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    # right, right, wrong (0.6 says sync), wrong (0.4 says not), right (0.5 is not above the threshold)
    assert accuracy(similarity, labels).item() == pytest.approx(3 / 5)
    assert accuracy(similarity, labels, threshold=0.3).item() == pytest.approx(3 / 5)


# --- Learning ----------------------------------------------------------------------------------------------


def _sync_task(config: ModelConfig, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
    """Pairs whose face and mel share a hidden amplitude when in sync, and differ by 0.3-0.7 when not.

    The face carries it as the height of a bright band across the mouth region on a noisy background, the mel as
    the level of its lower half of bins. Each modality alone is uniformly distributed under both labels, so only
    comparing the two can beat chance.
    """
    frames, side = config.window_frames, config.face_size
    amplitude = torch.rand(batch, generator=gen)
    labels = (torch.rand(batch, generator=gen) < 0.5).float()
    offset = 0.3 + 0.4 * torch.rand(batch, generator=gen)
    mel_amplitude = torch.where(labels > 0, amplitude, (amplitude + offset) % 1.0)

    height = (1 + amplitude * (side // 4 - 1)).round().long()
    top = 3 * side // 4 - height // 2  # centred on the mouth, in the middle of the lower half
    rows, cols = torch.arange(side), torch.arange(side)
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])  # [B, S]
    in_cols = (cols >= side // 4) & (cols < 3 * side // 4)  # [S]
    band = (in_rows[:, :, None] & in_cols)[:, None, :, :, None]  # [B, 1, S, S, 1]
    noise = torch.randint(0, 60, (batch, frames, side, side, 3), generator=gen, dtype=torch.uint8)
    windows = torch.where(band, torch.tensor(230, dtype=torch.uint8), noise)

    mels = -4 + 0.5 * torch.randn(batch, config.mel_bins, config.mel_window, generator=gen)
    mels[:, : config.mel_bins // 2] += 8 * mel_amplitude[:, None, None]
    return SyncExpert.prepare_faces(windows), SyncExpert.prepare_mels(mels), labels


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Small convolutions on 2 threads hit an OpenMP barrier every layer: on a busy 2-core box each barrier waits
    # for a descheduled thread and 12 s became 225 s; one thread stays near 20 s under the same load.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_learns_a_synthetic_sync_task(seed: int, one_thread: None) -> None:
    config = PRESETS["cpu-small"]
    model = _model(config, seed)
    steps = 60
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    # Decaying to zero lets the batch-norm running statistics catch up with the weights: at a constant 1e-3 the
    # weights still move in the last steps, and 1 seed in 15 scored 0.64 in eval mode against 0.96 in train mode.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        faces, mels, labels = _sync_task(config, 32, gen)
        loss = sync_loss(model(faces, mels), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()

    model.eval()
    faces, mels, labels = _sync_task(config, 256, torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        similarity = model(faces, mels)
    assert labels.mean().item() == pytest.approx(0.5, abs=0.1)
    assert sync_loss(similarity, labels).item() < 0.4
    assert accuracy(similarity, labels).item() > 0.8
