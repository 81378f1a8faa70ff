"""Faces: choosing an aligner, face-alignment's batched path on self-made weights, template alignment and crops,
detector-box crops, landmark smoothing, tracks and their quality.

The face-alignment tests never see real weights (none may be downloaded): randomly initialised networks saved
under the library's file names load exactly as real ones would; their landmarks are meaningless, so those tests
check the plumbing (shapes, dtypes, thresholds, errors), and the geometry is tested on the dlib aligner's
landmarks of synthetic talking faces.
"""

from __future__ import annotations

import itertools
import shutil

import cv2
import numpy as np
import pytest

from pipelines.core.columns import object_column
from pipelines.faces.align import (align_matrix, anchor_points, box_crops, crop_faces, smooth_landmarks,
                                   template_points)
from pipelines.faces.base import Aligner, FaceConfig
from pipelines.faces.factory import make_aligner
from pipelines.faces.stage import FaceStage
from pipelines.faces.fan_weights import FAN_WEIGHTS, S3FD_WEIGHTS, WEIGHT_URLS, fan_weights_present
from pipelines.faces.tracks import (HIDE_HOLD_FRAMES, HIDE_MARGIN, box_overlap, face_tracks, follow_face, held_boxes,
                                    hide_faces, landmark_quality, link_pieces, overlapping_groups, split_and_filter)
from model.sync.speaker import speaking
from pipelines.media import iter_frames
from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus
from pipelines.synthetic.face import REST, FaceRenderer, HeadPose, random_identity

FRAMES_PER_CLIP = 6
CROP = 96


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per synthetic clip: its first frames uint8 [6, H, W, 3], dlib landmarks [6, 68, 2] and scores [6]."""
    from pipelines.faces.dlib_aligner import DlibAligner

    out = tmp_path_factory.mktemp("faces_corpus")
    rows = generate_corpus(SyntheticConfig(out=out, num_videos=3, seed=1, min_seconds=3, max_seconds=3.5, workers=1,
                                           heldout_fraction=0), progress=False)
    aligner = DlibAligner()
    result = []
    for row in rows:
        frames = np.stack([rgb for _, rgb in itertools.islice(iter_frames(out / row["path"]), FRAMES_PER_CLIP)])
        landmarks, scores = aligner(frames)
        assert np.isfinite(scores).all(), f"dlib lost the synthetic face in {row['path']}"
        result.append((frames, landmarks, scores))
    return result


@pytest.fixture(scope="module")
def fan_weights(tmp_path_factory):
    """A folder with randomly initialised S3FD and FAN weights under the names face-alignment expects."""
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    folder = tmp_path_factory.mktemp("fan_weights")
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), folder / FAN_WEIGHTS)
    torch.save(s3fd().state_dict(), folder / S3FD_WEIGHTS)
    return folder


@pytest.fixture
def one_torch_thread():
    """Measured here: on 2 shared cores under load, FAN on 3 crops took 35 s with torch's 2 OpenMP threads (they
    spin-wait on each other) and 2.8 s with one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- choosing an aligner ---------------------------------------------------------------------------------------

def test_weight_file_names_match_the_installed_library():
    from face_alignment.api import models_urls as fan_urls
    from face_alignment.detection.sfd.sfd_detector import models_urls as sfd_urls

    assert WEIGHT_URLS == {FAN_WEIGHTS: fan_urls["2DFAN-4"], S3FD_WEIGHTS: sfd_urls["s3fd"]}
    assert fan_urls["2DFAN-4"].endswith("/" + FAN_WEIGHTS) and sfd_urls["s3fd"].endswith("/" + S3FD_WEIGHTS)


def test_auto_without_weights_gives_dlib(tmp_path, no_network):
    config = FaceConfig(face_weights=tmp_path)
    assert not fan_weights_present(config.face_weights)
    aligner = make_aligner(config)
    assert aligner.name == "dlib" and isinstance(aligner, Aligner)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="--aligner"):
        FaceConfig(aligner="mediapipe")
    with pytest.raises(ValueError, match="--device"):
        FaceConfig(device="tpu")


def test_device_names_resolve_and_cuda_without_a_gpu_is_refused(monkeypatch):
    import torch

    from pipelines.core.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="--device cuda asked for, but torch sees no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda")


# --- face-alignment on self-made weights --------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_frames(clips) -> np.ndarray:
    # Small frames keep random-weight S3FD and the FAN pass to about a second on CPU.
    return np.stack([cv2.resize(frames[0], (160, 128), interpolation=cv2.INTER_AREA) for frames, _, _ in clips])


def test_fan_aligner_runs_batched_on_cpu(fan_weights, small_frames, no_network, one_torch_thread):
    # Random S3FD scores every anchor near 0.53, so threshold 0 finds a "face" in every frame and sends it to FAN;
    # batch size 2 over 3 frames exercises a full and a partial batch.
    aligner = make_aligner(FaceConfig(face_weights=fan_weights, device="cpu", min_score=0.0, batch_size=2))
    assert aligner.name == "face-alignment" and isinstance(aligner, Aligner)
    landmarks, scores = aligner(small_frames)
    assert landmarks.shape == (3, 68, 2) and landmarks.dtype == np.float32
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert np.isfinite(landmarks).all() and np.isfinite(scores).all() and (scores > 0).all()
    tracked, _, boxes = aligner.track(small_frames)
    np.testing.assert_array_equal(tracked, landmarks)
    np.testing.assert_array_equal(boxes, aligner.detect(small_frames)[:, :4])  # the S3FD box FAN was given


def test_fan_aligner_threshold_leaves_nan(fan_weights, small_frames, no_network, one_torch_thread):
    aligner = make_aligner(FaceConfig(aligner="face-alignment", face_weights=fan_weights, device="cpu",
                                      min_score=0.999))
    landmarks, scores = aligner(small_frames)
    assert landmarks.shape == (3, 68, 2) and np.isnan(landmarks).all() and np.isnan(scores).all()


def test_fan_aligner_keeps_to_the_face_it_follows(fan_weights, small_frames, monkeypatch, no_network):
    """Two detections per frame whose sizes take turns being larger: the box follows the first frame's largest."""
    aligner = make_aligner(FaceConfig(aligner="face-alignment", face_weights=fan_weights, device="cpu"))
    left, right = np.array([10.0, 10, 60, 60]), np.array([80.0, 10, 130, 60])

    def two_faces(images):
        grow = [np.array([-1.0, -1, 1, 1]) * (2 if i % 2 else -2) for i in range(len(images))]
        return [np.array([[*(left + g), 0.9], [*(right - g), 0.9]], dtype=np.float32) for g in grow]

    monkeypatch.setattr(aligner, "_candidates", two_faces)
    centres = (aligner.detect(small_frames)[:, 0] + aligner.detect(small_frames)[:, 2]) / 2
    assert np.allclose(centres, 105)  # frame 0's larger face is the right one, and it stays followed


def test_missing_weight_file_is_named(tmp_path, fan_weights, no_network):
    shutil.copy(fan_weights / S3FD_WEIGHTS, tmp_path / S3FD_WEIGHTS)
    config = FaceConfig(aligner="face-alignment", face_weights=tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        make_aligner(config)
    message = str(error.value)
    assert FAN_WEIGHTS in message and S3FD_WEIGHTS not in message
    assert str(tmp_path) in message and "--aligner dlib" in message and WEIGHT_URLS[FAN_WEIGHTS] in message
    assert make_aligner(FaceConfig(face_weights=tmp_path)).name == "dlib"  # auto falls back


def test_heatmap_peak_maps_to_frame_pixels():
    import torch

    from pipelines.faces.fan_aligner import cells_to_frame, heatmap_peaks

    heatmaps = torch.zeros((1, 68, 64, 64))
    heatmaps[0, :, 20, 40] = 1.0
    heatmaps[0, :, 20, 41] = 0.5  # higher right neighbour: a quarter cell to the right
    cells = heatmap_peaks(heatmaps).numpy().astype(np.float64)
    points = cells_to_frame(cells, 64, centres=np.array([[300.0, 200.0]]), scales=np.array([1.5]))
    side = 200.0 * 1.5  # the crop covers 200 px per unit of scale
    expected = (np.array([40.75, 20.5]) / 64 - 0.5) * side + [300.0, 200.0]
    np.testing.assert_allclose(points[0], np.broadcast_to(expected, (68, 2)), atol=1e-9)


def test_device_crop_matches_the_library_crop(clips):
    import torch
    import torch.nn.functional as F
    from face_alignment.utils import crop

    from pipelines.faces.fan_aligner import fan_crop_grid, fan_crop_params

    frame = clips[1][0][0]
    height, width = frame.shape[:2]
    # A face inside, one across the left edge, one across the top, one small (upsampled to 256).
    boxes = np.array([[150.3, 120.7, 300.2, 290.9], [-40.0, 100.0, 120.0, 270.0], [300.0, -30.0, 430.0, 90.0],
                      [200.0, 200.0, 260.0, 262.0]])
    centres, scales = fan_crop_params(boxes)
    images = torch.from_numpy(frame).permute(2, 0, 1)[None].float().expand(len(boxes), -1, -1, -1)
    grid = fan_crop_grid(centres, scales, height, width, "cpu")
    ours = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ours = ours.permute(0, 2, 3, 1).numpy()
    for i, (centre, scale) in enumerate(zip(centres, scales)):
        library = crop(frame, centre, float(scale)).astype(np.float64)
        # The library rounds to uint8 and clamps at its crop's edge: < 1 grey level apart inside the border.
        assert np.abs(ours[i] - library)[2:-2, 2:-2].max() < 1.0


# --- alignment and crops -------------------------------------------------------------------------------------

def mapped_anchors(landmarks: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return anchor_points(landmarks.astype(np.float64)) @ matrix[:, :2].T + matrix[:, 2]


def test_align_matrix_puts_eyes_and_mouth_on_the_template(clips):
    target = template_points(CROP)
    for _, landmarks, _ in clips:
        for points in landmarks:
            assert np.abs(mapped_anchors(points, align_matrix(points, CROP)) - target).max() < 2.0
    # A rotated, scaled and shifted face lands in the same place: the alignment undoes exactly that.
    points = clips[0][1][0].astype(np.float64)
    angle = np.deg2rad(20)
    moved = 1.7 * points @ np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]]) + [35, -12]
    np.testing.assert_allclose(mapped_anchors(moved, align_matrix(moved, CROP)),
                               mapped_anchors(points, align_matrix(points, CROP)), atol=1e-6)


def test_crops_show_the_face_at_the_template(clips):
    from pipelines.faces.dlib_aligner import DlibAligner

    frames, landmarks, _ = clips[0]
    landmarks = landmarks.copy()
    landmarks[2] = np.nan
    crops = crop_faces(frames, landmarks, CROP)
    assert crops.shape == (len(frames), CROP, CROP, 3) and crops.dtype == np.uint8
    assert not crops[2].any() and crops[0].any()
    # Landmarks found again on the crops sit where the template put them, up to dlib's own error on 96 px faces
    # (an eye centre moves by a few pixels when the lids do).
    found, _ = DlibAligner()(np.delete(crops, 2, axis=0))
    assert np.isfinite(found).all()
    error = np.abs(anchor_points(found) - template_points(CROP))
    assert np.median(error) < 1.0 and error.max() < 5.0


def test_large_faces_are_shrunk_without_aliasing_or_offset(clips):
    frames, landmarks, _ = clips[1]
    big = np.stack([cv2.resize(frame, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC) for frame in frames[:2]])
    # Upscaling by 4 moves pixel centres: x_big = 4 x + 1.5.
    crops_big = crop_faces(big, landmarks[:2] * 4 + 1.5, CROP).astype(float)
    crops = crop_faces(frames[:2], landmarks[:2], CROP).astype(float)
    # Measured: 0.42 grey levels; 2.1 without the pyramid, 1.1 with the big frame's landmarks off by 1.5 px.
    assert np.abs(crops_big - crops).mean() < 0.8


def quadrant_frame() -> tuple[np.ndarray, np.ndarray]:
    """A 120x160 grey frame with a 60x60 box at (40, 20) whose quadrants are red, green, blue and white; the box."""
    frame = np.full((120, 160, 3), 50, np.uint8)
    for (top, left), colour in zip([(20, 40), (20, 70), (50, 40), (50, 70)],
                                   [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]):
        frame[top:top + 30, left:left + 30] = colour
    return frame, np.array([40, 20, 100, 80], np.float32)


def test_box_crops_show_the_box_unaligned_padded_below():
    frame, box = quadrant_frame()
    crops = box_crops(np.stack([frame] * 4), np.stack([box, box, np.full(4, np.nan), box + [80, 0, 80, 0]]), CROP,
                      pad_bottom=0.0)
    corners = crops[0][[12, 12, 84, 84], [12, 84, 12, 84]]
    np.testing.assert_array_equal(corners, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)])
    assert not crops[2].any()
    # A box running past the frame's right edge is cut at it: the box's half inside fills the crop.
    assert (crops[3][:, :, 0] == 50).mean() > 0.95
    # Padding by half the height: the lower third of the crop is what lies below the box.
    padded = box_crops(frame[None], box[None], CROP, pad_bottom=0.5)[0]
    assert (padded[70:] == 50).all() and (padded[:30, :45] == (255, 0, 0)).all()


def test_the_face_stage_cuts_detector_boxes_when_asked(clips):
    frames, _, _ = clips[0]
    aligned = FaceStage(FaceConfig(aligner="dlib"))
    boxed = FaceStage(FaceConfig(aligner="dlib", crop="box", crop_pad_bottom=0.1))
    landmarks, _, boxes = boxed.aligner.track(frames)
    assert np.isfinite(boxes).all()
    mouths = landmarks[:, 48:68].mean(axis=1)
    assert ((mouths > boxes[:, :2]) & (mouths < boxes[:, 2:])).all()
    crops, points, _, _, tracks, _ = boxed.align(frames)
    reference, reference_points, _, _, reference_tracks, _ = aligned.align(frames)
    np.testing.assert_array_equal(points, reference_points)
    np.testing.assert_array_equal(tracks, reference_tracks)
    assert crops.shape == reference.shape and crops.any(axis=(1, 2, 3)).all()
    assert np.abs(crops.astype(int) - reference).mean() > 10  # another cut of the same frames
    row = {"frames": object_column([frames]), "error": np.array([""]), "detail": np.array([""])}
    assert boxed(row)["crop"].tolist() == ["box"] and aligned(row)["crop"].tolist() == ["aligned"]
    with pytest.raises(ValueError, match="--crop-pad-bottom"):
        FaceConfig(crop="aligned", crop_pad_bottom=0.1)


def test_smoothing_stays_inside_runs_and_keeps_steady_motion():
    rng = np.random.default_rng(0)
    steady = np.arange(12, dtype=np.float64)[:, None, None] * 3.0 + np.zeros((12, 68, 2))
    np.testing.assert_allclose(smooth_landmarks(steady, window=5), steady, atol=1e-9)  # centred: no lag, no pull

    landmarks = np.zeros((12, 68, 2))
    landmarks[6:] = 100.0
    landmarks[5] = np.nan
    smoothed = smooth_landmarks(landmarks, window=5)
    assert np.isnan(smoothed[5]).all()
    assert (smoothed[:5] == 0).all() and (smoothed[6:] == 100).all()  # never averaged across the gap

    # Smoothing across a cut would hide it from face_tracks; smoothing along the tracks keeps it.
    cut = np.concatenate([np.zeros((10, 68, 2)), np.full((10, 68, 2), 0.5)])
    cut[:, 16, 0] += 1.0  # a face one unit wide: the cut jumps half a face width
    assert face_tracks(smooth_landmarks(cut, window=5), 0.3) == [(0, 20)]
    tracks = face_tracks(cut, 0.3)
    assert tracks == [(0, 10), (10, 20)] and face_tracks(smooth_landmarks(cut, 5, tracks), 0.3) == tracks

    noisy = 50 + rng.normal(0, 1, (40, 68, 2))
    assert smooth_landmarks(noisy, window=5)[2:-2].std() < 0.6 * noisy.std()


# --- tracks and quality --------------------------------------------------------------------------------------

def test_tracks_split_where_the_face_is_missing_or_jumps(clips):
    _, landmarks, _ = clips[0]
    sequence = np.concatenate([landmarks] * 4)  # 24 frames of a real, slightly moving face
    sequence[8:10] = np.nan  # face lost for two frames
    width = np.linalg.norm(sequence[0, 16] - sequence[0, 0])
    sequence[17:, :, 0] += 0.5 * width  # a cut to a face half a face width away
    assert face_tracks(sequence, max_center_jump=0.3) == [(0, 8), (10, 17), (17, 24)]
    assert face_tracks(sequence, max_center_jump=0.8) == [(0, 8), (10, 24)]
    assert face_tracks(np.full((5, 68, 2), np.nan), 0.3) == []


def test_follow_face_keeps_to_the_followed_box_and_starts_with_the_largest():
    boxes = np.array([[0.0, 0, 100, 100], [120, 0, 230, 110], [40, 20, 60, 40]])
    assert follow_face(boxes, None) == 1  # nothing followed: the largest
    assert follow_face(boxes, np.array([5.0, 5, 105, 105])) == 0  # the followed face, though another is larger
    assert follow_face(boxes, np.array([25.0, 10, 75, 60])) == 2  # the nearest of the two centred inside it
    assert follow_face(boxes, np.array([300.0, 300, 400, 400])) == 1  # the followed face is gone: the largest


def two_speakers(count: int) -> np.ndarray:
    """Frames [count, 256, 512, 3] of two synthetic people side by side who take turns being the larger, by up to
    a fifth, a cycle a second (dlib's boxes come in size steps: smaller differences read as equal sizes)."""
    rng = np.random.default_rng(5)
    people = [FaceRenderer(random_identity(rng), (256, 256)) for _ in range(2)]
    frames = []
    for k in range(count):
        swing = 0.1 * np.sin(2 * np.pi * k / 25)
        poses = [HeadPose(angle_deg=0.0, scale=0.8 * (1 + sign * swing), center=(128.0, 128.0)) for sign in (1, -1)]
        frames.append(np.concatenate([person.render(pose, REST) for person, pose in zip(people, poses)], axis=1))
    return np.stack(frames)


def test_dlib_track_keeps_to_one_of_two_nearly_equal_faces():
    from pipelines.faces.dlib_aligner import DlibAligner

    landmarks, _ = DlibAligner()(two_speakers(50))
    centres = landmarks.mean(axis=1)[:, 0]
    assert face_tracks(landmarks, max_center_jump=0.3) == [(0, 50)]
    assert (centres < 256).all() or (centres > 256).all()


def test_split_and_filter_counts():
    kept, dropped = split_and_filter([(0, 10), (10, 13), (20, 70)], min_frames=5, max_frames=20)
    assert kept == [(0, 10), (20, 37), (37, 53), (53, 70)] and dropped == 1  # 50 frames -> three equal pieces
    # Two pieces of >= 15 cannot make 25 frames: keep one full piece, drop the rest.
    assert split_and_filter([(100, 125)], min_frames=15, max_frames=20) == ([(100, 120)], 1)
    with pytest.raises(ValueError):
        split_and_filter([(0, 10)], min_frames=30, max_frames=20)


def test_landmark_quality(clips):
    _, landmarks, scores = clips[0]
    quality = landmark_quality(landmarks, scores)
    assert set(quality) == {"frames", "score_mean", "score_min", "interocular_px", "motion", "jitter"}
    assert quality["frames"] == len(landmarks) and quality["score_min"] <= quality["score_mean"]
    assert 10 < quality["interocular_px"] < 200
    assert 0 <= quality["jitter"] < 0.05 and 0 <= quality["motion"] < 0.2
    single = landmark_quality(landmarks[:1], scores[:1])
    assert np.isnan(single["motion"]) and np.isnan(single["jitter"]) and single["frames"] == 1


def test_pieces_that_meet_with_overlapping_boxes_are_one_track():
    left, right = np.array([0.1, 0.2, 0.4, 0.7]), np.array([0.6, 0.2, 0.9, 0.7])
    pieces = [(0, 250, left), (0, 250, right), (250, 400, right + 0.01), (250, 400, left), (400, 450, left),
              (460, 500, left)]  # the last starts after a gap: a new track, wherever it is
    assert link_pieces(pieces) == [0, 1, 1, 0, 0, 2]
    no_box = np.full(4, np.nan)  # samples written before boxes were recorded link to nothing
    assert link_pieces([(0, 10, no_box), (10, 20, no_box)]) == [0, 1]
    assert box_overlap(left, left) == 1.0 and box_overlap(left, right) == 0.0


def test_tracks_overlapping_in_time_compete_and_the_clearest_speaks():
    spans = [(0, 100), (0, 100), (100, 150), (140, 200), (300, 320)]
    assert overlapping_groups(spans) == [[0, 1], [2, 3], [4]]
    assert speaking(spans, [0.1, 0.4, None, 0.05, None]) == [False, True, False, True, True]
    assert speaking([(0, 10), (5, 15)], [None, None]) == [None, None]  # nobody could be judged


def test_faces_already_followed_are_hidden_from_the_next_pass():
    boxes = np.full((12, 4), np.nan, np.float32)
    boxes[:4] = [20, 20, 40, 40]  # lost after frame 3: held for HIDE_HOLD_FRAMES frames, then not
    held = held_boxes(boxes)
    assert np.isfinite(held[:4 + HIDE_HOLD_FRAMES]).all() and np.isnan(held[4 + HIDE_HOLD_FRAMES:]).all()
    hidden = np.full((12, 64, 64, 3), 7, np.uint8)
    hide_faces(hidden, held)
    pad = round(HIDE_MARGIN * 20)
    assert (hidden[0, 20 - pad:40 + pad, 20 - pad:40 + pad] == 128).all()
    assert (hidden[0, :20 - pad - 1] == 7).all() and (hidden[-1] == 7).all()


def test_the_face_stage_follows_two_faces_each_on_its_own_layer(clips):
    """The same clip twice side by side: two layers, each a whole track in its own half, its crops its face's."""
    frames = clips[0][0]
    two = np.concatenate([frames, frames[:, :, ::-1]], axis=2)  # the right one mirrored: not a copy of a crop
    stage = FaceStage(FaceConfig(aligner="dlib", max_faces=3))
    found = stage.align(two)
    n = len(frames)
    assert found.tracks.tolist() == [[0, n, 0], [0, n, 1]] and len(found.crops) == 2 * n
    assert found.faces_counted.max() == 2  # so no third pass was made
    centres = (found.boxes[:, 0] + found.boxes[:, 2]) / 2
    assert (centres[:n] < 0.5).all() and (centres[n:] > 0.5).all()
    np.testing.assert_allclose(found.crops[n:].astype(float).mean(), found.crops[:n].astype(float).mean(), rtol=0.05)
    single = FaceStage(FaceConfig(aligner="dlib")).align(two)  # the default follows one face, as always
    assert single.tracks.tolist() == [[0, n, 0]] and len(single.faces_counted) == 0
    row = {"frames": object_column([two]), "error": np.array([""]), "detail": np.array([""])}
    assert stage(row)["faces_followed"].tolist() == [2]
    with pytest.raises(ValueError, match="--max-faces"):
        FaceConfig(max_faces=0)
