"""Augmentation of training pairs on the device: the face window's look and the mel window's level and bands.

Against overfitting at scale and the gap between synthetic and real faces: the expert should judge lip motion
against speech whatever the lighting, colour, framing, sharpness or loudness. What sync is made of is left alone:

- every parameter is drawn per pair and shared by the T frames of its window, so the motion between frames is
  the original's (only light pixel noise differs from frame to frame, and, when asked, a shake of the crop: real
  faces' alignment shakes from frame to frame where synthetic faces' barely does);
- no time shift, stretch or mask on the mels: timing is the label;
- nothing is drawn from the label, so the augmentation tells nothing about it.

Inputs are the expert's prepared tensors (`SyncExpert.prepare_lower_faces`, `SyncExpert.prepare_mels`); legend:
``B`` pairs, ``T`` window frames, ``H`` = S/2 rows of the lower half, ``S`` crop side, ``M`` mel bins, ``W`` mel
columns. Draws come from an explicit `torch.Generator` on the tensors' device: one seed, one result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from pipelines.audio import AudioConfig

# ITU-R BT.601 luma weights: the grey a saturation change blends towards.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """Option names carry the `augment` prefix: the command line flattens sub-configs into one namespace."""

    augment: bool = field(default=False, metadata={"help": "augment training pairs (never validation's): the "
                                                          "options below; regularises at scale, narrows sim-to-real"})
    augment_brightness: float = field(default=0.1, metadata={"help": "brightness shift, up to this either way "
                                                                     "(pixel values in [0, 1])"})
    augment_contrast: float = field(default=0.2, metadata={"help": "contrast factor in [1 - this, 1 + this]"})
    augment_saturation: float = field(default=0.2, metadata={"help": "saturation factor in [1 - this, 1 + this]"})
    augment_flip: float = field(default=0.5, metadata={"help": "probability of a horizontal flip"})
    augment_shift: float = field(default=0.04, metadata={"help": "translation, up to this fraction of the crop "
                                                                 "side either way, each axis"})
    augment_scale: float = field(default=0.05, metadata={"help": "zoom factor in [1 - this, 1 + this]"})
    augment_jitter: float = field(default=0.0, metadata={"help": "shake of the crop from frame to frame: a translation "
                                                                 "per frame, standard deviation this fraction of the "
                                                                 "crop side (0: off)"})
    augment_blur: float = field(default=0.1, metadata={"help": "share of each batch's pairs given a Gaussian blur "
                                                               "(chosen at random)"})
    augment_blur_sigma: float = field(default=1.0, metadata={"help": "that blur's sigma, in pixels"})
    augment_noise: float = field(default=0.02, metadata={"help": "pixel noise, standard deviation up to this"})
    augment_gain_db: float = field(default=6.0, metadata={"help": "audio gain, up to this many dB either way"})
    augment_band_mask: float = field(default=0.2, metadata={"help": "probability of masking a band of mel bins "
                                                                    "(all columns: never a time mask)"})
    augment_band_bins: int = field(default=8, metadata={"help": "that band's width, 1 to this many bins"})

    def __post_init__(self):
        problems = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name != "augment" and value < 0:
                problems.append(f"--{spec.name.replace('_', '-')} must not be negative")
        for name in ("augment_flip", "augment_blur", "augment_band_mask", "augment_contrast", "augment_saturation",
                     "augment_scale"):
            if getattr(self, name) > 1:
                problems.append(f"--{name.replace('_', '-')} must be at most 1")
        if self.augment_shift >= 0.5:
            problems.append("--augment-shift must be below 0.5 (half the crop)")
        if self.augment_jitter > 0.1:
            problems.append("--augment-jitter must be at most 0.1 (a tenth of the crop, frame to frame)")
        if problems:
            raise ValueError("invalid augmentation config: " + "; ".join(problems))


def augment_pairs(faces: torch.Tensor, mels: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                  audio: AudioConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepared faces ``[B, 3*T, H, S]`` in [0, 1] and mels ``[B, 1, M, W]`` -> the same shapes and ranges,
    augmented (returned as they are when `config.augment` is off). `audio` is the mels' normalisation."""
    if not config.augment:
        return faces, mels
    return augment_faces(faces, config, generator), augment_mels(mels, config, generator, audio)


def _uniform(batch: int, spread: float, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[B] draws in [-spread, spread]."""
    return (torch.rand(batch, generator=generator, device=like.device) * 2 - 1) * spread


def _chance(batch: int, probability: float, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[B] booleans, each true with `probability`."""
    return torch.rand(batch, generator=generator, device=like.device) < probability


def augment_faces(faces: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Colour, flip, framing, blur and noise, drawn per pair: ``[B, 3*T, H, S]`` in [0, 1] -> the same."""
    if faces.ndim != 4 or faces.shape[1] % 3 or not faces.is_floating_point():
        raise ValueError(f"expected prepared float faces [B, 3*T, H, S], got {faces.dtype} {list(faces.shape)}")
    batch = len(faces)
    frames = faces.reshape(batch, faces.shape[1] // 3, 3, *faces.shape[2:])
    frames = adjust_colour(frames, 1 + _uniform(batch, config.augment_contrast, faces, generator),
                           1 + _uniform(batch, config.augment_saturation, faces, generator),
                           _uniform(batch, config.augment_brightness, faces, generator))
    frames = flip(frames, _chance(batch, config.augment_flip, faces, generator))
    if config.augment_shift or config.augment_scale or config.augment_jitter:
        shift = torch.stack([_uniform(batch, config.augment_shift, faces, generator) for _ in range(2)], dim=1)
        shift = shift.unsqueeze(1).expand(batch, frames.shape[1], 2)
        if config.augment_jitter:
            shift = shift + torch.randn(shift.shape, generator=generator, device=faces.device) * config.augment_jitter
        frames = reframe(frames, 1 + _uniform(batch, config.augment_scale, faces, generator), shift)
    blurred = round(config.augment_blur * batch) if config.augment_blur_sigma else 0
    if blurred:
        # A fixed share, so that its count is known without asking the device: only those pairs are blurred.
        chosen = torch.randperm(batch, generator=generator, device=faces.device)[:blurred]
        frames = frames.index_copy(0, chosen, blur(frames[chosen], config.augment_blur_sigma))
    if config.augment_noise:
        spread = torch.rand(batch, generator=generator, device=faces.device) * config.augment_noise
        noise = torch.randn(frames.shape, generator=generator, device=faces.device)
        frames = torch.addcmul(frames, noise, spread.view(batch, 1, 1, 1, 1))
    return frames.clamp_(0, 1).reshape(faces.shape)


def adjust_colour(frames: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor,
                  brightness: torch.Tensor) -> torch.Tensor:
    """frames ``[B, T, 3, H, S]``; factors and shift ``[B]``. Contrast pivots on the window's mean grey (one
    number for all T frames, so each frame gets the same mapping); saturation blends each pixel with its grey."""
    shape = (len(frames), 1, 1, 1, 1)
    contrast, saturation, brightness = contrast.view(shape), saturation.view(shape), brightness.view(shape)
    grey = sum(weight * frames[:, :, channel:channel + 1] for channel, weight in enumerate(LUMA))
    pivot = grey.mean(dim=(1, 2, 3, 4), keepdim=True)
    # (grey + (x - grey) * saturation - pivot) * contrast + pivot + brightness, in two passes over the pixels.
    offset = grey * (contrast * (1 - saturation)) + (pivot * (1 - contrast) + brightness)
    return torch.addcmul(offset, frames, contrast * saturation)


def flip(frames: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """frames ``[B, T, 3, H, S]`` mirrored left to right where `chosen` ``[B]`` is true."""
    return torch.where(chosen.view(-1, 1, 1, 1, 1), frames.flip(-1), frames)


def reframe(frames: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """frames ``[B, T, 3, H, S]`` zoomed by `zoom` ``[B]`` (above 1: closer) about the centre and moved by `shift`
    ``[B, 2]``, or ``[B, T, 2]`` frame by frame (x, y as fractions of the crop side S; the rows are S/2): one
    `grid_sample`, edges repeated."""
    batch, steps, _, height, side = frames.shape
    shift = shift.reshape(batch, -1, 2).expand(batch, steps, 2).reshape(batch * steps, 2)
    theta = torch.zeros(batch * steps, 2, 3, dtype=frames.dtype, device=frames.device)
    theta[:, 0, 0] = theta[:, 1, 1] = (1 / zoom).repeat_interleave(steps)
    # The sampling grid spans [-1, 1] on each axis: 2 units are S pixels across and H pixels down.
    theta[:, 0, 2] = -shift[:, 0] * 2
    theta[:, 1, 2] = -shift[:, 1] * 2 * side / height
    images = frames.reshape(batch * steps, 3, height, side)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return moved.view(frames.shape)


def blur(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    """frames ``[B, T, 3, H, S]`` blurred by a Gaussian of `sigma` pixels, edges repeated."""
    radius = max(1, math.ceil(2 * sigma))
    weights = [math.exp(-offset**2 / (2 * sigma**2)) for offset in range(-radius, radius + 1)]
    weights = [weight / sum(weights) for weight in weights]
    height, side = frames.shape[-2:]
    padded = F.pad(frames.reshape(-1, 1, height, side), (radius,) * 4, mode="replicate")[:, 0]
    # Weighted sums of shifted views, rows then columns: 3.5x faster than a one-channel conv2d on a CPU.
    across = sum(weight * padded[:, :, tap:tap + side] for tap, weight in enumerate(weights))
    blurred = sum(weight * across[:, tap:tap + height] for tap, weight in enumerate(weights))
    return blurred.view(frames.shape)


def augment_mels(mels: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                 audio: AudioConfig) -> torch.Tensor:
    """Gain and a frequency band mask, drawn per pair: ``[B, 1, M, W]`` -> the same, within +-max_abs_value."""
    if mels.ndim != 4 or mels.shape[1] != 1 or not mels.is_floating_point():
        raise ValueError(f"expected prepared float mels [B, 1, M, W], got {mels.dtype} {list(mels.shape)}")
    batch, bins = len(mels), mels.shape[2]
    mels = gain(mels, _uniform(batch, config.augment_gain_db, mels, generator), audio)
    if config.augment_band_mask and config.augment_band_bins:
        widest = min(config.augment_band_bins, bins)
        width = torch.randint(1, widest + 1, (batch,), generator=generator, device=mels.device)
        start = (torch.rand(batch, generator=generator, device=mels.device) * (bins - width + 1)).long()
        mels = mask_band(mels, _chance(batch, config.augment_band_mask, mels, generator), start, width)
    return mels


def mel_units_per_db(audio: AudioConfig) -> float:
    """How far one dB moves a normalised log-mel value: `pipelines.audio` maps [min_level_db, 0] dB linearly
    onto [-max_abs_value, max_abs_value]."""
    return 2 * audio.max_abs_value / -audio.min_level_db


def gain(mels: torch.Tensor, decibels: torch.Tensor, audio: AudioConfig) -> torch.Tensor:
    """mels ``[B, 1, M, W]`` as though the audio were `decibels` ``[B]`` louder, clipped as preprocessing clips."""
    moved = mels + (decibels * mel_units_per_db(audio)).to(mels.dtype).view(-1, 1, 1, 1)
    return moved.clamp(-audio.max_abs_value, audio.max_abs_value)


def mask_band(mels: torch.Tensor, chosen: torch.Tensor, start: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """mels ``[B, 1, M, W]`` with bins [start, start + width) ``[B]`` set to the window's mean over all its columns
    where `chosen` ``[B]`` is true (SpecAugment's frequency mask: the band's content gone, not its timing)."""
    bins = torch.arange(mels.shape[2], device=mels.device).view(1, -1)
    band = (bins >= start.view(-1, 1)) & (bins < (start + width).view(-1, 1)) & chosen.view(-1, 1)
    mean = mels.mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(band.view(len(mels), 1, -1, 1), mean, mels)
