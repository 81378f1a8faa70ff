"""Importing Wav2Lip's expert: every tensor mapped, biases folded exactly, BGR read as RGB, bad files refused by name,
and the converted expert used end to end with box crops.

No real weights exist here: the Wav2Lip checkpoint is a random state dict in its exact layout (key names and
shapes from its `models/syncnet.py` and `models/conv.py`), and its forward pass is written out below with plain
torch ops, independently of `model.encoders`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.checkpoint import read_checkpoint
from model.config import PRESETS
from model.expert import SyncExpert
from model.import_expert import ConversionError, import_wav2lip, main, wav2lip_expert
from model.loss import SyncLoss

# Wav2Lip's SyncNet_color, block by block: (in, out, kernel, stride, padding, residual).
FACE_BLOCKS = [
    (15, 32, 7, 1, 3, False),
    (32, 64, 5, (1, 2), 1, False), (64, 64, 3, 1, 1, True), (64, 64, 3, 1, 1, True),
    (64, 128, 3, 2, 1, False), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True),
    (128, 256, 3, 2, 1, False), (256, 256, 3, 1, 1, True), (256, 256, 3, 1, 1, True),
    (256, 512, 3, 2, 1, False), (512, 512, 3, 1, 1, True), (512, 512, 3, 1, 1, True),
    (512, 512, 3, 2, 1, False), (512, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False),
]
AUDIO_BLOCKS = [
    (1, 32, 3, 1, 1, False), (32, 32, 3, 1, 1, True), (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False), (64, 64, 3, 1, 1, True), (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False), (256, 256, 3, 1, 1, True), (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False),
]
ENCODERS = {"face_encoder": FACE_BLOCKS, "audio_encoder": AUDIO_BLOCKS}


def wav2lip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random SyncNet_color state dict, scaled so activations neither die nor explode through 17 blocks, with
    conv biases and batch-norm statistics far from their defaults (so a bias left unfolded shows)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for encoder, blocks in ENCODERS.items():
        for index, (cin, cout, kernel, _, _, _) in enumerate(blocks):
            prefix = f"{encoder}.{index}.conv_block"
            fan_in = cin * kernel * kernel
            state[f"{prefix}.0.weight"] = torch.randn(cout, cin, kernel, kernel, generator=gen) * (2 / fan_in) ** 0.5
            state[f"{prefix}.0.bias"] = torch.randn(cout, generator=gen) * 0.5
            state[f"{prefix}.1.weight"] = torch.rand(cout, generator=gen) + 0.5
            state[f"{prefix}.1.bias"] = torch.randn(cout, generator=gen) * 0.1 + 0.1
            state[f"{prefix}.1.running_mean"] = torch.randn(cout, generator=gen) * 0.5
            state[f"{prefix}.1.running_var"] = torch.rand(cout, generator=gen) + 0.5
            state[f"{prefix}.1.num_batches_tracked"] = torch.tensor(1000)
    return state


def reference_embedding(state: dict[str, torch.Tensor], encoder: str, x: torch.Tensor) -> torch.Tensor:
    """Wav2Lip's forward pass in eval mode: conv with bias -> batch norm -> (+ input) -> ReLU, then L2-normalised."""
    for index, (_, _, _, stride, padding, residual) in enumerate(ENCODERS[encoder]):
        prefix = f"{encoder}.{index}.conv_block"
        y = F.conv2d(x, state[f"{prefix}.0.weight"], state[f"{prefix}.0.bias"], stride, padding)
        y = F.batch_norm(y, state[f"{prefix}.1.running_mean"], state[f"{prefix}.1.running_var"],
                         state[f"{prefix}.1.weight"], state[f"{prefix}.1.bias"], training=False, eps=1e-5)
        x = F.relu(y + x if residual else y)
    return F.normalize(x.flatten(1), dim=1)


def rgb_to_bgr(faces: torch.Tensor) -> torch.Tensor:
    """[B, 3T, H, W] with frame t's R, G, B at 3t..3t+2 -> the same with B, G, R there (how OpenCV read them)."""
    return faces.unflatten(1, (-1, 3)).flip(2).flatten(1, 2)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return wav2lip_state()


@pytest.fixture(scope="module")
def converted(state, tmp_path_factory):
    """Wav2Lip's checkpoint as its training script saves it (DataParallel's "module." included), converted."""
    folder = tmp_path_factory.mktemp("wav2lip")
    torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}, "optimizer": {},
                "global_step": 1234, "global_epoch": 5}, folder / "lipsync_expert.pth")
    return import_wav2lip(folder / "lipsync_expert.pth", folder / "expert.pt")


def test_converted_embeddings_equal_wav2lip_forward_pass(state, converted):
    expert = SyncExpert.from_checkpoint(converted)
    gen = torch.Generator().manual_seed(1)
    faces = torch.rand(4, 15, 48, 96, generator=gen)  # ours: RGB
    mels = 8 * torch.rand(4, 1, 80, 16, generator=gen) - 4
    with torch.no_grad():
        ours_face, ours_audio = expert.embed_faces(faces), expert.embed_audio(mels)
        theirs_face = reference_embedding(state, "face_encoder", rgb_to_bgr(faces))
        theirs_audio = reference_embedding(state, "audio_encoder", mels)
    assert (theirs_face > 0).sum(dim=1).min() > 50 and (theirs_audio > 0).sum(dim=1).min() > 50  # alive, not 0 = 0
    torch.testing.assert_close(ours_face, theirs_face, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_audio, theirs_audio, atol=1e-5, rtol=0)
    # The colour order matters to this network: read as RGB without the reordering, the embeddings differ.
    assert (reference_embedding(state, "face_encoder", faces) - ours_face).abs().max() > 1e-3


def test_the_checkpoint_records_crop_and_origin(converted):
    checkpoint = read_checkpoint(converted)
    assert checkpoint.model_config.crop == "box" and checkpoint.model_config.crop_pad_bottom == 0.0
    assert checkpoint.step == 1234 and checkpoint.optimizer is None
    assert checkpoint.source["project"] == "wav2lip" and len(checkpoint.source["sha256"]) == 64
    assert checkpoint.source["file"].endswith("lipsync_expert.pth")


def test_a_bare_state_dict_converts_too(state):
    expert = wav2lip_expert(dict(state), "bare.pth", crop_pad_bottom=0.1)
    assert expert.config.crop_pad_bottom == 0.1
    assert torch.equal(expert.state_dict()["audio_encoder.layers.5.norm.running_mean"],
                       state["audio_encoder.5.conv_block.1.running_mean"] - state["audio_encoder.5.conv_block.0.bias"])


def _broken(state, change):
    broken = dict(state)
    change(broken)
    return broken


@pytest.mark.parametrize("change, named", [
    (lambda s: s.pop("face_encoder.3.conv_block.0.bias"), "missing 1 key(s) of Wav2Lip's SyncNet_color: "
                                                           "face_encoder.3.conv_block.0.bias"),
    (lambda s: s.update({"face_encoder.17.conv_block.0.weight": torch.zeros(1)}),
     "1 key(s) that Wav2Lip's SyncNet_color does not have: face_encoder.17.conv_block.0.weight"),
    (lambda s: s.update({"audio_encoder.2.conv_block.1.running_var": torch.ones(64)}),
     "audio_encoder.2.conv_block.1.running_var has shape [64], Wav2Lip's SyncNet_color [32]"),
    (lambda s: s.update({"face_encoder.0.conv_block.0.weight": torch.zeros(32, 15, 5, 5)}),
     "face_encoder.0.conv_block.0.weight has shape [32, 15, 5, 5], Wav2Lip's SyncNet_color [32, 15, 7, 7]"),
])
def test_a_wrong_key_or_shape_is_refused_by_name(state, change, named):
    with pytest.raises(ConversionError, match="^bad.pth: ") as refused:
        wav2lip_expert(_broken(state, change), "bad.pth")
    assert named in str(refused.value)


def test_the_command_refuses_a_generator_checkpoint_and_writes_nothing(tmp_path, capsys):
    generator = {"face_encoder_blocks.0.0.conv_block.0.weight": torch.zeros(16, 6, 7, 7)}
    torch.save({"state_dict": generator}, tmp_path / "wav2lip.pth")
    assert main(["wav2lip", str(tmp_path / "wav2lip.pth"), "--out", str(tmp_path / "expert.pt")]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "wav2lip.pth") in error and "lipsync_expert.pth" in error
    assert not (tmp_path / "expert.pt").exists()
    assert main(["wav2lip", str(tmp_path / "absent.pth"), "--out", str(tmp_path / "expert.pt")]) == 2
    assert "absent.pth does not exist" in capsys.readouterr().err


def test_the_command_converts(state, tmp_path, capsys):
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "lipsync_expert.pth")
    assert main(["wav2lip", str(tmp_path / "lipsync_expert.pth"), "--out", str(tmp_path / "out" / "w.pt"),
                 "--crop-pad-bottom", "0.1"]) == 0
    assert "--checkpoint" in capsys.readouterr().out
    assert read_checkpoint(tmp_path / "out" / "w.pt").model_config.crop_pad_bottom == 0.1


def test_score_runs_end_to_end_on_box_crops(converted, small_corpus):
    from model.sync.scoring import ScoreConfig, VideoScorer, check_crop
    from pipelines.faces.base import FaceConfig

    out, rows = small_corpus
    video = out / next(row["path"] for row in rows if not row["corrupt"])
    with pytest.warns(UserWarning, match="S3FD"):  # only dlib is here: its boxes are not Wav2Lip's detector's
        scorer = VideoScorer(ScoreConfig(checkpoint=str(converted), max_offset=3, device="cpu",
                                         faces=FaceConfig(aligner="dlib")))
    assert scorer.faces.config.crop == "box"
    segments, _ = scorer.segments(video)
    assert {segment.meta["crop"] for segment in segments} == {"box"}
    # Stored box crops are refused to an expert of aligned ones (curate and evaluate on shards), and accepted here.
    check_crop(segments[0], scorer.expert.config)
    with pytest.raises(ValueError, match="holds box face crops, the expert reads aligned crops"):
        check_crop(segments[0], PRESETS["full"])
    score = scorer.score(video)
    assert list(score.result.shifts) == list(range(-3, 4))
    assert np.all((score.result.mean_similarity >= 0) & (score.result.mean_similarity <= 1))


def test_sync_loss_reads_the_crop_of_its_expert(converted):
    loss = SyncLoss.from_checkpoint(converted)
    assert loss.crop == "box"
    faces = torch.rand(2, 3, 5, 96, 96, requires_grad=True)
    value = loss(faces, 8 * torch.rand(2, 80, 16) - 4)
    value.backward()
    assert torch.isfinite(value) and faces.grad.abs().sum() > 0
