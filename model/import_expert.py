"""`python -m model.import_expert wav2lip CHECKPOINT --out expert.pt`: a sync expert trained elsewhere, in our format.

Wav2Lip's released expert (`lipsync_expert.pth`, trained on LRS2, linked from its README; download it yourself,
nothing here fetches it) is our "full" preset layer for layer: its `models/syncnet.py` stacks the same
conv -> batch norm -> (+ input) -> ReLU blocks (`models/conv.py`), 17 in the face encoder and 14 in the audio
encoder, in the order of `model.encoders`' stages. Three differences are settled here, exactly and once, so that
everything downstream treats the result as any expert of ours:

- Its convolutions have a bias, ours none. Each is followed by batch norm, which subtracts its running mean from
  the conv output, so the bias folds into that mean: norm(conv(x) + b) with mean m is norm(conv(x)) with m - b.
- It read faces in OpenCV's BGR order, ours are RGB: the first face convolution's input channels are reordered
  per frame, so it sees on our RGB input what it saw on BGR.
- It was trained on face-detector boxes (Wav2Lip's `preprocess.py`: S3FD box, no alignment, resized to 96x96),
  not on our aligned crops: the model config records crop "box", and score, fix, curate, evaluate and
  `SyncLoss` cut faces that way for it (`pipelines.faces.align.box_crops`).

Its mel is ours: 16 kHz, pre-emphasis 0.97, n_fft 800, hop 200, 80 bins from 55 to 7600 Hz, [-4, 4]
(`pipelines.audio.AudioConfig`). One sub-frame difference remains: its loader starts the mel window of frame f at
int(80 f / 25), our clock rounds (`Clock.mel_column`), one column (12.5 ms) later on 2 frames in 5.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from model.checkpoint import Checkpoint, write_checkpoint
from model.config import PRESETS
from model.encoders import ConvBlock
from model.expert import SyncExpert

# Their block's conv is conv_block.0, its batch norm conv_block.1; batch norm's entries as ours names them.
CONV, NORM = "conv_block.0", "conv_block.1"
NORM_ENTRIES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class ConversionError(ValueError):
    """A checkpoint that is not the expert it is imported as; the message names the file and what differs."""


@dataclass(frozen=True)
class ImportConfig:
    project: str = field(metadata={"help": "whose expert it is: wav2lip (its lipsync_expert.pth)"})
    checkpoint: Path = field(metadata={"help": "the downloaded checkpoint file"})
    out: Path = field(metadata={"help": "where to write our checkpoint (pass it as --checkpoint to every command)"})
    crop_pad_bottom: float = field(default=0.0, metadata={
        "help": "extend the detector's box downward by this fraction of its height; 0 is what Wav2Lip's "
                "preprocess.py cut for training (its inference pads 10 px below, about 0.1 of an LRS2 face)"})

    def __post_init__(self):
        if self.project not in PROJECTS:
            raise ValueError(f"unknown project {self.project!r}: this imports {', '.join(PROJECTS)}")


def wav2lip_expert(state: dict[str, torch.Tensor], path: str | Path, crop_pad_bottom: float = 0.0) -> SyncExpert:
    """Our expert holding the weights of Wav2Lip's `SyncNet_color` state dict `state` (read from `path`, which
    messages name). Raises ConversionError on a key missing, a key left over, or a shape that differs."""
    config = replace(PRESETS["full"], crop="box", crop_pad_bottom=crop_pad_bottom)
    expert = SyncExpert(config)
    theirs = dict(state)
    ours = {}
    for name, block in expert.named_modules():
        if isinstance(block, ConvBlock):
            ours.update(_converted_block(theirs, _their_prefix(name), name, block, path))
    if theirs:
        raise ConversionError(f"{path}: {len(theirs)} key(s) that Wav2Lip's SyncNet_color does not have: "
                              f"{_some(theirs)}. Is it lipsync_expert.pth (the expert), not wav2lip.pth or "
                              f"wav2lip_gan.pth (the generators)?")
    # The first face convolution reads its 15 channels as frame t's B, G, R at 3t, 3t+1, 3t+2; ours are R, G, B.
    first = "face_encoder.layers.0.conv.weight"
    weight = ours[first]
    ours[first] = weight.unflatten(1, (config.window_frames, 3)).flip(2).flatten(1, 2).contiguous()
    expert.load_state_dict(ours)  # strict: every tensor of ours came from theirs
    return expert.eval().requires_grad_(False)


def _their_prefix(name: str) -> str:
    """Our block `face_encoder.layers.3` is their `face_encoder.3.`: both number their blocks in one sequence."""
    encoder, _, index = name.split(".")
    return f"{encoder}.{index}."


def _converted_block(theirs: dict, prefix: str, name: str, block: ConvBlock, path: str | Path) -> dict:
    """Our tensors of `block` (`name`) from their block at `prefix`, removed from `theirs` as they are used."""
    norm = block.norm.state_dict()
    wanted = {f"{CONV}.weight": block.conv.weight.shape, f"{CONV}.bias": block.conv.weight.shape[:1],
              **{f"{NORM}.{entry}": norm[entry].shape for entry in NORM_ENTRIES}}
    # Batch norm counts its updates only to average without momentum, which neither model does; checkpoints of
    # some torch versions lack the counter, and its value changes nothing in eval mode.
    if f"{prefix}{NORM}.num_batches_tracked" not in theirs:
        theirs[f"{prefix}{NORM}.num_batches_tracked"] = torch.tensor(0)
    missing = [prefix + key for key in wanted if prefix + key not in theirs]
    if missing:
        raise ConversionError(f"{path}: missing {len(missing)} key(s) of Wav2Lip's SyncNet_color: {_some(missing)}; "
                              f"the file is not its lipsync_expert.pth, or is cut short")
    tensors = {key: theirs.pop(prefix + key) for key in wanted}
    for key, shape in wanted.items():
        if tuple(tensors[key].shape) != tuple(shape):
            raise ConversionError(f"{path}: {prefix}{key} has shape {list(tensors[key].shape)}, Wav2Lip's "
                                  f"SyncNet_color {list(shape)}: another network of a similar name")
    converted = {f"{name}.conv.weight": tensors[f"{CONV}.weight"].float()}
    converted.update({f"{name}.norm.{entry}": tensors[f"{NORM}.{entry}"] for entry in NORM_ENTRIES})
    mean = tensors[f"{NORM}.running_mean"].double() - tensors[f"{CONV}.bias"].double()
    converted[f"{name}.norm.running_mean"] = mean.float()
    return converted


def _some(keys, shown: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def read_wav2lip(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The state dict of a Wav2Lip checkpoint file (under "state_dict", prefixed "module." by DataParallel or
    not) and the step it was saved at (0 if it does not say)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: download Wav2Lip's lipsync_expert.pth (its README links "
                                f"it) and pass that file")
    try:
        values = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ConversionError(f"{path} does not load as a torch checkpoint of tensors only "
                              f"({type(error).__name__}: {str(error).splitlines()[0]})") from error
    state = values.get("state_dict", values) if isinstance(values, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ConversionError(f"{path} holds no state dict of tensors (neither under 'state_dict' nor at its top)")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state, int(values.get("global_step", 0))


def import_wav2lip(path: Path, out: Path, crop_pad_bottom: float = 0.0) -> Path:
    """Convert Wav2Lip's expert at `path` and write it, with where it came from, to `out`."""
    path = Path(path)
    state, step = read_wav2lip(path)
    expert = wav2lip_expert(state, path, crop_pad_bottom)
    source = {"project": "wav2lip", "file": str(path.resolve()), "sha256": _sha256(path), "global_step": step,
              "conversion": "conv biases folded into batch-norm running means; first face conv's input channels "
                            "reordered from BGR to RGB; crop 'box' (detector box, no alignment)"}
    return write_checkpoint(out, Checkpoint(step=step, model=expert.state_dict(), model_config=expert.config,
                                            source=source))


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


PROJECTS = {"wav2lip": import_wav2lip}


def main(argv: list[str] | None = None) -> int:
    from pipelines.core.cli import parse_config

    try:
        config = parse_config(ImportConfig, __doc__.split("\n")[0].replace("`", ""), argv,
                              positional=("project", "checkpoint"))
        if config.out.resolve() == config.checkpoint.resolve():
            raise ValueError(f"--out {config.out} is the input itself; write the converted expert elsewhere")
        written = PROJECTS[config.project](config.checkpoint, config.out, config.crop_pad_bottom)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written}: {config.project}'s expert from {config.checkpoint}, crop 'box'; use it as "
          f"--checkpoint {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
