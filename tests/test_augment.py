"""Augmentation of training pairs (model/augment.py) and the learning-rate schedule (train_ray.learning_rate)."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from model.augment import (AugmentConfig, augment_faces, augment_mels, augment_pairs, blur, gain, mel_units_per_db,
                           reframe)
from model.config import PRESETS
from model.expert import SyncExpert
from pipelines.audio import AudioConfig, log_mel
from train_ray import TrainConfig, learning_rate

AUDIO = AudioConfig()
ON = AugmentConfig(augment=True)
# Everything off but the switch: each test turns on what it looks at.
NOTHING = replace(ON, **{f.name: 0 for f in fields(AugmentConfig) if f.name != "augment"})
PAIRS, FRAMES, SIDE = 6, PRESETS["full"].window_frames, PRESETS["full"].face_size


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _lower_faces(seed: int = 0, moving: bool = True) -> torch.Tensor:
    """uint8 lower halves [B, T, S/2, S, 3] as the loader holds them: a colour ramp, asymmetric left to right,
    with a dark 'mouth' whose height changes from frame to frame (unless `moving` is off), prepared by the expert."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:SIDE // 2, 0:SIDE]
    frames = np.zeros((PAIRS, FRAMES, SIDE // 2, SIDE, 3), np.uint8)
    for pair in range(PAIRS):
        tint = rng.uniform(0.3, 1.0, 3)
        for frame in range(FRAMES):
            image = (columns[..., None] / SIDE * 200 + rows[..., None] / SIDE * 50) * tint + 5
            opening = 2 + (frame * 2 if moving else 0)
            image[SIDE // 4 - opening:SIDE // 4 + opening, SIDE // 3:2 * SIDE // 3] = 60
            frames[pair, frame] = image.astype(np.uint8)
    return SyncExpert.prepare_lower_faces(torch.from_numpy(frames))


def _mels(seed: int = 0) -> torch.Tensor:
    """Mel windows [B, 1, M, W] cut from the log-mel of noise bursts (floor-clipped silence between them)."""
    rng = np.random.default_rng(seed)
    samples = np.zeros(AUDIO.clock.sample_rate, np.float32)
    for start in range(0, len(samples), 4000):
        samples[start:start + 2500] = rng.normal(0, rng.uniform(0.01, 0.3), 2500)
    mel = log_mel(samples, AUDIO)
    width = AUDIO.clock.mel_window
    windows = np.stack([mel[:, 6 * i:6 * i + width] for i in range(PAIRS)])
    return SyncExpert.prepare_mels(torch.from_numpy(windows))


def _frames(faces: torch.Tensor) -> torch.Tensor:
    return faces.view(len(faces), -1, 3, *faces.shape[2:])


def test_augmentation_keeps_shapes_dtypes_and_ranges_and_changes_the_pairs():
    faces, mels = _lower_faces(), _mels()
    assert mels.min() == -AUDIO.max_abs_value and mels.max() > 0  # floor-clipped silence and loud bins both
    strong = replace(ON, augment_brightness=0.5, augment_noise=0.2, augment_gain_db=40, augment_band_mask=1)
    new_faces, new_mels = augment_pairs(faces, mels, strong, _generator(0), AUDIO)
    assert new_faces.shape == faces.shape and new_faces.dtype == torch.float32
    assert new_mels.shape == mels.shape and new_mels.dtype == torch.float32
    assert 0 <= new_faces.min() and new_faces.max() <= 1
    assert -AUDIO.max_abs_value <= new_mels.min() and new_mels.max() <= AUDIO.max_abs_value
    assert new_faces.min() == 0 and new_faces.max() == 1  # clipped, not wrapped or rescaled
    assert ((new_faces - faces).abs().flatten(1).mean(1) > 0.01).all()  # every pair, faces and mels
    assert ((new_mels - mels).abs().flatten(1).mean(1) > 0.01).all()


def test_the_same_seed_gives_the_same_pairs_and_another_seed_others():
    faces, mels = _lower_faces(), _mels()
    first = augment_pairs(faces, mels, ON, _generator(7), AUDIO)
    again = augment_pairs(faces, mels, ON, _generator(7), AUDIO)
    other = augment_pairs(faces, mels, ON, _generator(8), AUDIO)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.allclose(first[0], other[0], atol=1e-3) and not torch.allclose(first[1], other[1], atol=1e-3)


def test_disabled_augmentation_is_the_identity():
    faces, mels = _lower_faces(), _mels()
    assert not AugmentConfig().augment
    generator = _generator(0)
    state = generator.get_state()
    out_faces, out_mels = augment_pairs(faces, mels, AugmentConfig(), generator, AUDIO)
    assert out_faces is faces and out_mels is mels
    assert torch.equal(generator.get_state(), state)  # and it draws nothing


def test_nothing_but_the_switch_changes_nothing():
    faces, mels = _lower_faces(), _mels()
    out_faces, out_mels = augment_pairs(faces, mels, NOTHING, _generator(0), AUDIO)
    assert torch.allclose(out_faces, faces, atol=1e-6) and torch.equal(out_mels, mels)


def test_a_flip_mirrors_every_frame_of_the_window_left_to_right():
    faces = _lower_faces()
    always, never = replace(NOTHING, augment_flip=1.0), replace(NOTHING, augment_flip=0.0)
    assert torch.allclose(augment_faces(faces, always, _generator(0)), faces.flip(-1), atol=1e-6)
    assert torch.allclose(augment_faces(faces, never, _generator(0)), faces, atol=1e-6)
    half = augment_faces(faces, replace(NOTHING, augment_flip=0.5), _generator(3))
    flipped = [torch.allclose(half[i], faces[i].flip(-1), atol=1e-6) for i in range(PAIRS)]
    kept = [torch.allclose(half[i], faces[i], atol=1e-6) for i in range(PAIRS)]
    assert all(f != k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


@pytest.mark.parametrize("part", ["colour", "framing", "blur", "all"])
def test_each_window_shares_its_parameters_across_its_frames(part):
    """Identical frames stay identical to one another (the motion between frames is the original's), while the
    pairs of the batch, all alike, get different draws."""
    parts = {"colour": dict(augment_brightness=0.2, augment_contrast=0.3, augment_saturation=0.5),
             "framing": dict(augment_flip=0.5, augment_shift=0.1, augment_scale=0.2),
             "blur": dict(augment_blur=0.5, augment_blur_sigma=1.5),
             "all": {f.name: getattr(ON, f.name) for f in fields(ON) if f.name != "augment_noise"}}
    still = _lower_faces(moving=False)
    still = still[:1].expand_as(still).contiguous()  # every pair the same window, every frame the same image
    frames = _frames(augment_faces(still, replace(NOTHING, **parts[part]), _generator(1)))
    assert torch.allclose(frames, frames[:, :1].expand_as(frames), atol=1e-6)
    per_pair = frames[:, 0].flatten(1)
    differing = sum(not torch.allclose(per_pair[0], per_pair[i], atol=1e-4) for i in range(1, PAIRS))
    assert differing >= (PAIRS - 1) // 2  # flips and blurs are drawn, so some pairs may match the first


def test_a_window_keeps_its_motion_under_colour_changes():
    """Colour maps every pixel of a window through the same affine function: frame differences scale by the
    contrast factor alone, the same for every frame, so where the mouth moves is unchanged."""
    faces = _lower_faces()
    frames = _frames(faces)
    config = replace(NOTHING, augment_contrast=0.3, augment_brightness=0.1)  # saturation off: grey stays grey
    out = _frames(augment_faces(faces, config, _generator(2)))
    inside = (out > 0.01) & (out < 0.99)  # clipping would break the proportion
    motion, out_motion = frames - frames[:, :1], out - out[:, :1]
    moved = (motion.abs() > 0.05) & inside & inside[:, :1]
    ratio = out_motion[moved] / motion[moved]
    pair = torch.arange(PAIRS).view(-1, 1, 1, 1, 1).expand_as(moved)[moved]
    for i in range(PAIRS):
        assert (pair == i).sum() > 100
        assert ratio[pair == i].std() < 1e-4 and 0.7 - 1e-5 <= ratio[pair == i].mean() <= 1.3 + 1e-5


def test_reframing_moves_the_face_by_the_fraction_of_the_crop_side_asked_for():
    frames = _frames(_lower_faces())
    step = SIDE // 8  # 0.125 of the side: 12 pixels, a whole number, so bilinear sampling is exact
    right = reframe(frames, torch.ones(PAIRS), torch.tensor([[0.125, 0.0]] * PAIRS))
    assert torch.allclose(right[..., step:], frames[..., :-step], atol=1e-5)
    down = reframe(frames, torch.ones(PAIRS), torch.tensor([[0.0, 0.125]] * PAIRS))  # rows are S/2: same pixels
    assert torch.allclose(down[..., step:, :], frames[..., :-step, :], atol=1e-5)
    assert torch.allclose(down[..., :step, :], frames[..., :1, :].expand_as(down[..., :step, :]), atol=1e-5)  # edge
    mouth = torch.ones(1, 1, 3, SIDE // 2, SIDE)
    mouth[..., 20:28, 40:56] = 0  # 8 x 16 pixels about the centre
    closer = reframe(mouth, torch.tensor([2.0]), torch.zeros(1, 2))[0, 0, 0] < 0.5
    assert closer.sum(dim=0).max() == 16 and closer.sum(dim=1).max() == 32  # twice as high, twice as wide


def test_jitter_moves_each_frame_of_a_window_by_its_own_small_amount():
    """A shift per frame moves that frame alone; jitter draws one per frame about the pair's framing, so a still
    window starts to shake, by about the standard deviation asked for."""
    frames = _frames(_lower_faces())
    step = SIDE // 8
    per_frame = torch.zeros(PAIRS, FRAMES, 2)
    per_frame[:, 2, 0] = 0.125  # the third frame only, 12 pixels right
    moved = reframe(frames, torch.ones(PAIRS), per_frame)
    assert torch.allclose(moved[:, 2, ..., step:], frames[:, 2, ..., :-step], atol=1e-5)
    others = [i for i in range(FRAMES) if i != 2]
    assert torch.allclose(moved[:, others], frames[:, others], atol=1e-5)
    # A vertical bar on a flat face: where its edge lands in each frame measures the shake.
    still = torch.full((PAIRS, FRAMES, 3, SIDE // 2, SIDE), 0.8)
    still[..., SIDE // 2:] = 0.2
    shaken = augment_faces(still.reshape(PAIRS, -1, SIDE // 2, SIDE), replace(NOTHING, augment_jitter=0.02),
                           _generator(4))
    edge = (_frames(shaken)[:, :, 0, SIDE // 4] < 0.5).float().argmax(dim=-1).float()  # first dark column [B, T]
    assert (edge.std(dim=1) > 0).all()  # every window shakes
    offsets = (edge - SIDE / 2) / SIDE
    assert 0.01 < offsets.std() < 0.03  # about 0.02 of the side
    steady = augment_faces(still.reshape(PAIRS, -1, SIDE // 2, SIDE), replace(NOTHING, augment_shift=0.1),
                           _generator(4))
    assert torch.allclose(_frames(steady), _frames(steady)[:, :1].expand(PAIRS, FRAMES, -1, -1, -1), atol=1e-6)


def test_blur_smooths_and_keeps_the_mean_and_flat_images():
    rows, columns = torch.meshgrid(torch.arange(SIDE // 2), torch.arange(SIDE), indexing="ij")
    checks = ((rows // 2 + columns // 2) % 2).float().expand(2, FRAMES, 3, -1, -1)
    blurred = blur(checks, sigma=1.0)
    assert blurred.std() < 0.3 * checks.std() and blurred.mean() == pytest.approx(checks.mean().item(), abs=0.01)
    flat = torch.full((1, FRAMES, 3, SIDE // 2, SIDE), 0.4)
    assert torch.allclose(blur(flat, sigma=2.0), flat, atol=1e-6)
    # In a batch, the share asked for is blurred, the others left alone.
    batch = checks[:1].expand(PAIRS, -1, -1, -1, -1).reshape(PAIRS, -1, SIDE // 2, SIDE).contiguous()
    out = _frames(augment_faces(batch, replace(NOTHING, augment_blur=0.5, augment_blur_sigma=1.0), _generator(0)))
    smoothed = [torch.allclose(out[i], blurred[0], atol=1e-5) for i in range(PAIRS)]
    kept = [torch.allclose(out[i], checks[0], atol=1e-5) for i in range(PAIRS)]
    assert sum(smoothed) == PAIRS // 2 and sum(kept) == PAIRS - PAIRS // 2


def test_noise_is_light_and_unbiased():
    faces = _lower_faces()
    out = augment_faces(faces, replace(NOTHING, augment_noise=0.02), _generator(0))
    inside = (faces > 0.1) & (faces < 0.9)
    difference = (out - faces)[inside]
    assert 0.003 < difference.std() < 0.02 and abs(difference.mean()) < 1e-3


def test_the_gain_moves_the_normalised_mel_as_that_many_decibels_of_louder_audio():
    assert mel_units_per_db(AUDIO) == pytest.approx(2 * 4.0 / 100)  # the default [-100, 0] dB onto [-4, 4]
    rng = np.random.default_rng(0)
    samples = rng.normal(0, 0.05, AUDIO.clock.sample_rate).astype(np.float32)
    quiet = torch.from_numpy(log_mel(samples, AUDIO))[None, None]
    louder = torch.from_numpy(log_mel(samples * 2, AUDIO))[None, None]  # 20 log10 2 = 6.02 dB
    moved = gain(quiet, torch.tensor([20 * np.log10(2)]), AUDIO)
    unclipped = (quiet.abs() < 3.5) & (louder.abs() < 3.5)
    assert unclipped.float().mean() > 0.5
    assert torch.allclose(moved[unclipped], louder[unclipped], atol=1e-4)
    assert torch.allclose(gain(quiet, torch.tensor([-10.0]), AUDIO), (quiet - 0.8).clamp(-4, 4), atol=1e-6)


def test_the_mel_augmentation_shifts_each_window_by_one_gain_and_masks_a_band_of_all_columns():
    mels = _mels()
    only_gain = augment_mels(mels, replace(NOTHING, augment_gain_db=6), _generator(0), AUDIO)
    limit = AUDIO.max_abs_value
    for i in range(PAIRS):
        unclipped = (mels[i].abs() < limit - 0.5)
        shift = (only_gain[i] - mels[i])[unclipped]
        assert shift.std() < 1e-5 and abs(shift.mean()) <= 6 * mel_units_per_db(AUDIO) + 1e-6
    assert len({round(float((only_gain[i] - mels[i])[mels[i].abs() < 3.5].mean()), 4) for i in range(PAIRS)}) > 1

    masked = augment_mels(mels, replace(NOTHING, augment_band_mask=1.0, augment_band_bins=8), _generator(0), AUDIO)
    for i in range(PAIRS):
        rows = (masked[i, 0] != mels[i, 0]).any(dim=1).nonzero().flatten()
        assert 1 <= len(rows) <= 8 and torch.equal(rows, torch.arange(rows[0], rows[0] + len(rows)))
        band = masked[i, 0, rows[0]:rows[0] + len(rows)]
        assert torch.allclose(band, mels[i].mean().expand_as(band))  # the whole band, every column: no time mask
        outside = torch.ones(mels.shape[2], dtype=torch.bool)
        outside[rows[0]:rows[0] + len(rows)] = False
        assert torch.equal(masked[i, 0, outside], mels[i, 0, outside])


def test_augmentation_options_are_checked():
    with pytest.raises(ValueError, match="--augment-flip must be at most 1"):
        AugmentConfig(augment_flip=1.5)
    with pytest.raises(ValueError, match="--augment-gain-db must not be negative"):
        AugmentConfig(augment_gain_db=-1)
    with pytest.raises(ValueError, match="--augment-jitter must be at most 0.1"):
        AugmentConfig(augment_jitter=0.2)


def test_the_learning_rate_warms_up_then_follows_a_half_cosine_to_its_floor():
    config = TrainConfig(shards="x", lr=1e-3, lr_schedule="cosine", warmup_steps=100, min_lr_fraction=0.1,
                         max_steps=1100)
    assert learning_rate(0, config) == pytest.approx(1e-5)  # the first step already moves, at 1/100 of --lr
    assert learning_rate(49, config) == pytest.approx(5e-4)
    assert learning_rate(99, config) == learning_rate(100, config) == pytest.approx(1e-3)  # warmup done
    assert learning_rate(600, config) == pytest.approx((1e-3 + 1e-4) / 2)  # halfway down the cosine
    assert learning_rate(1100, config) == pytest.approx(1e-4)  # the floor at --max-steps
    rates = [learning_rate(step, config) for step in range(100, 1101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    scaled = replace(config, scale_lr=True)
    assert learning_rate(600, scaled, workers=4) == pytest.approx(4 * learning_rate(600, config))


def test_the_constant_schedule_is_the_old_constant_rate_unless_warmed_up():
    plain = TrainConfig(shards="x", lr=2e-3, max_steps=50)
    assert {learning_rate(step, plain) for step in range(51)} == {2e-3}
    assert learning_rate(10, replace(plain, scale_lr=True), workers=2) == 4e-3
    warm = replace(plain, warmup_steps=10)
    assert learning_rate(4, warm) == pytest.approx(1e-3) and learning_rate(9, warm) == learning_rate(40, warm) == 2e-3


def test_schedule_options_are_checked():
    with pytest.raises(ValueError, match="--lr-schedule must be constant or cosine"):
        TrainConfig(shards="x", lr_schedule="linear")
    with pytest.raises(ValueError, match="--min-lr-fraction must lie in"):
        TrainConfig(shards="x", min_lr_fraction=2)
