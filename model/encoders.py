"""The expert's two convolutional encoders (the SyncNet layout of the Wav2Lip expert).

Each encoder is a list of stages read top to bottom: one (usually downsampling) convolution, then residual blocks
at that resolution. Channel counts are multiples of ``config.width``, so width 32 gives the Wav2Lip expert and
8 or 16 a model small enough for a CPU. Both end in a 1x1 map of ``embedding_dim`` channels after a ReLU.

Dimension legend: ``B`` batch, ``T`` window frames, ``S`` crop side, ``M`` mel bins, ``W`` mel window,
``D`` embedding dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig

Pair = int | tuple[int, int]


class ConvBlock(nn.Module):
    """conv -> batch norm -> (+ input) -> ReLU.

    The convolution has no bias because batch norm's shift replaces it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Pair, stride: Pair = 1, padding: Pair = 0,
                 residual: bool = False) -> None:
        super().__init__()
        if residual and (in_channels != out_channels or stride not in (1, (1, 1))):
            raise ValueError(f"a residual ConvBlock must keep the shape, got {in_channels}->{out_channels} "
                             f"channels at stride {stride}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        if self.residual:
            y = y + x
        return F.relu(y)


@dataclass(frozen=True)
class Stage:
    """One convolution to ``multiple * width`` channels, then ``residual_blocks`` 3x3 residual blocks."""

    multiple: int
    kernel: Pair
    stride: Pair
    padding: Pair
    residual_blocks: int


# Wav2Lip's face encoder on 15x48x96: 48x96 -> 46x47 -> 23x24 -> 12x12 -> 6x6 -> 3x3 -> 1x1.
# The (1, 2) stride halves only the width, which makes the 1:2 lower half roughly square.
FACE_STAGES: tuple[Stage, ...] = (
    Stage(1, 7, 1, 3, 0),
    Stage(2, 5, (1, 2), 1, 2),
    Stage(4, 3, 2, 1, 3),
    Stage(8, 3, 2, 1, 2),
    Stage(16, 3, 2, 1, 2),
    Stage(16, 3, 2, 1, 0),
    Stage(16, 3, 1, 0, 0),
)

# Wav2Lip's audio encoder on 1x80x16: 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1. Mel bins shrink 3x per stage while
# time shrinks slowly, because the window is only 16 frames long but 80 bins tall.
AUDIO_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 2),
    Stage(2, 3, (3, 1), 1, 2),
    Stage(4, 3, 3, 1, 2),
    Stage(8, 3, (3, 2), 1, 2),
    Stage(16, 3, 1, 0, 0),
)


def _pair(value: Pair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


def _output_size(size: tuple[int, int], stage: Stage) -> tuple[int, int]:
    """Spatial size after the stage's convolution (its residual blocks keep it)."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(stage.kernel), _pair(stage.stride), _pair(stage.padding)
    return (size[0] + 2 * ph - kh) // sh + 1, (size[1] + 2 * pw - kw) // sw + 1


class Encoder(nn.Module):
    """A stack of stages from ``in_channels`` x ``input_size`` to an embedding ``[B, D]`` (after a ReLU).

    Where the stages do not land exactly on 1x1 (inputs larger than the Wav2Lip sizes), the last map is averaged
    before the final 1x1 convolution; inputs too small for the stages are refused here, at construction.
    """

    def __init__(self, name: str, stages: Sequence[Stage], in_channels: int, input_size: tuple[int, int],
                 config: ModelConfig) -> None:
        super().__init__()
        self.input_shape = (in_channels, *input_size)
        layers: list[nn.Module] = []
        channels, size = in_channels, input_size
        for index, stage in enumerate(stages):
            size = _output_size(size, stage)
            if min(size) < 1:
                raise ValueError(f"{name} input {in_channels}x{input_size[0]}x{input_size[1]} shrinks to nothing "
                                 f"at stage {index}; the config ({config}) needs a larger input")
            out_channels = stage.multiple * config.width
            layers.append(ConvBlock(channels, out_channels, stage.kernel, stage.stride, stage.padding))
            layers.extend(ConvBlock(out_channels, out_channels, 3, 1, 1, residual=True)
                          for _ in range(stage.residual_blocks))
            channels = out_channels
        if size != (1, 1):
            layers.append(nn.AdaptiveAvgPool2d(1))
        layers.append(ConvBlock(channels, config.embedding_dim, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected input [B, {', '.join(map(str, self.input_shape))}], got {list(x.shape)}")
        return self.layers(x).flatten(1)


class FaceEncoder(Encoder):
    """Face window ``[B, 3*T, S/2, S]`` (floats in [0, 1]) -> non-negative embedding ``[B, D]``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__("face encoder", FACE_STAGES, config.face_channels, (config.face_height, config.face_size),
                         config)


class AudioEncoder(Encoder):
    """Mel window ``[B, 1, M, W]`` -> non-negative embedding ``[B, D]``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__("audio encoder", AUDIO_STAGES, 1, (config.mel_bins, config.mel_window), config)
