"""Does decoding put audio sample 0 and video frame 0 where the container says? Absolute sync without a sync expert.

    python -m bench.clock_check [--clips ../shared/data/real ../shared/data/real_more] [--remux-clips 9]
                                [--out runs/bench/clock_check.json]

Three parts, none of which involves an expert:

1. synthetic: a clip of white flashes over noise and a noise waveform, written in every case of
   `pipelines.synthetic.clock_cases` (edit lists, AAC priming, late streams, Matroska CodecDelay, MPEG-PS), then
   read back with `pipelines.media` (the waveform found in the decoded audio by cross-correlation, the first frame's
   timestamp) and through `pipelines.decode` on the expert's clock (which 25 fps output frame shows the first
   flash; where the waveform lands in the 16 kHz audio).
2. real clips as they are: what each container says (mp4/mov edit lists read from the file's own boxes, the
   streams' first timestamps) against what decoding gives: the audio cross-correlated with the same file decoded
   with FFmpeg's edit-list handling switched off (so the shift is our reading of the edit list, not FFmpeg's), and
   the probe's frame times against the decoded frames'.
3. real clips remuxed: each clip's own audio re-encoded in every case with its video packets copied, read back and
   cross-correlated with the clip's decoded audio.
"""

from __future__ import annotations

import struct
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from scipy.signal import butter, correlate, sosfilt

from bench.report import bench_main
from pipelines.audio import AudioConfig, prepare, resample
from pipelines.core.clock import EXPERT_CLOCK
from pipelines.decode import CONTEXT_FRAMES, DecodeConfig, decode_chunks
from pipelines.media import iter_frames, probe, read_audio
from pipelines.sources import VIDEO_EXTENSIONS
from pipelines.synthetic.clock_cases import CLOCK_CASES, MPEG_PS_CASE, ClockCase, mpeg1_rate, write_case
from pipelines.synthetic.container import CONTAINERS, write_clip

# The shared development clips sit beside the checkout (../shared), or beside the folder of worktrees.
SHARED_DATA = next((parent / "shared" / "data" for parent in Path(__file__).resolve().parents[1:4]
                    if (parent / "shared" / "data").is_dir()), Path(__file__).resolve().parents[2] / "shared" / "data")

# The synthetic source: 2 s at 25 fps, white flashes at irregular frames over full-range noise (large enough
# pictures that MPEG-PS spreads the first ones over several 2 KiB packs, as GRID's are).
FPS = EXPERT_CLOCK.fps  # the source is written on the expert's rate, so a flash frame maps one to one
FLASH_FRAMES = (10, 23, 41)
SOURCE_FRAMES = 50
SOURCE_SIZE = 160
SOURCE_RATE = 48000
FLASH_LEVEL = 200  # mean brightness above which a decoded frame is a flash (noise averages ~128)
NOISE_BAND_HZ = 4000
SEARCH_S = 0.5  # lags searched either way when finding the waveform


@dataclass(frozen=True)
class ClockCheckConfig:
    clips: tuple[Path, ...] = field(default=(SHARED_DATA / "real", SHARED_DATA / "real_more"),
                                    metadata={"help": "folders of real clips to inspect (absent ones are skipped)"})
    remux_clips: int = field(default=9, metadata={"help": "clips (the first, by name) whose audio is remuxed in every case; 0: none"})
    out: Path = field(default=Path("runs/bench/clock_check.json"), metadata={"help": "JSON results"})


# --- Measuring -------------------------------------------------------------------------------------------------


def waveform_lag(decoded: np.ndarray, reference: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Where mono `reference` sits in mono `decoded` (samples; positive: later), within +-max_lag, and the
    normalised correlation there (near 1: the waveform was found, not a chance peak)."""
    scores = correlate(decoded, reference, mode="full", method="fft")
    lags = np.arange(-len(reference) + 1, len(decoded))
    window = np.abs(lags) <= max_lag
    lag = int(lags[window][np.argmax(scores[window])])
    ref = reference[max(0, -lag):min(len(reference), len(decoded) - lag)]
    dec = decoded[max(0, lag):max(0, lag) + len(ref)]
    return lag, float(np.dot(ref, dec) / (np.linalg.norm(ref) * np.linalg.norm(dec) + 1e-12))


def audio_start_s(path: Path, reference: np.ndarray, rate: int) -> tuple[float, float]:
    """Where sample 0 of `reference` (mono, at `rate`) plays in `path` as read_audio decodes it; and the correlation."""
    samples, native = read_audio(path)
    mono = samples.mean(axis=0)
    if native != rate:
        mono = resample(mono, native, rate)
    lag, match = waveform_lag(mono, reference, round(SEARCH_S * rate))
    return lag / rate, match


def frames_agree(path: Path) -> tuple[int, int, float]:
    """(frames the probe indexed, frames decoded, largest time difference between the two lists in s): decode
    picks frames by the probe's index, so the k-th decoded frame must be the probe's k-th."""
    indexed = probe(path).frame_times
    decoded = np.array([time_s for time_s, _ in iter_frames(path)])
    common = min(len(indexed), len(decoded))
    gap = float(np.max(np.abs(indexed[:common] - decoded[:common]))) if common else 0.0
    return len(indexed), len(decoded), gap


def expert_clock(path: Path, reference: np.ndarray, rate: int) -> tuple[int, float]:
    """Through pipelines.decode (25 fps, 16 kHz): the output frame showing the first flash, and where the
    waveform's sample 0 lands in the 16 kHz audio (s)."""
    audio_config = AudioConfig()
    chunks = list(decode_chunks(path, probe(path), DecodeConfig(chunk_seconds=60.0), audio_config))
    frames = np.concatenate([chunk.frames for chunk in chunks])
    brightness = frames.reshape(len(frames), -1).mean(axis=1)
    flash = int(np.argmax(brightness > FLASH_LEVEL)) if np.any(brightness > FLASH_LEVEL) else -1
    clock = audio_config.clock
    audio = chunks[0].audio[CONTEXT_FRAMES * clock.samples_per_frame:]  # chunk 0 starts CONTEXT_FRAMES before frame 0
    target = prepare(reference[None], rate, audio_config)
    lag, _ = waveform_lag(audio, target, round(SEARCH_S * clock.sample_rate))
    return flash, lag / clock.sample_rate


# --- 1. Synthetic cases ----------------------------------------------------------------------------------------


def flash_frames(size: int = SOURCE_SIZE):
    for k in range(SOURCE_FRAMES):
        frame = np.random.default_rng(k).integers(0, 256, (size, size, 3), dtype=np.uint8)
        if k in FLASH_FRAMES:
            frame[:] = 255
        yield frame


def noise_waveform(rate: int, seconds: float = SOURCE_FRAMES / FPS) -> np.ndarray:
    """[1, N] noise below 4 kHz: no two stretches alike, so it has one correlation peak, and in the band where
    lossy codecs keep the waveform (full-band noise comes back from AAC at 128 kb/s correlated only ~0.5)."""
    noise = np.random.default_rng(1).standard_normal(round(rate * seconds))
    low = sosfilt(butter(8, NOISE_BAND_HZ, fs=rate, output="sos"), noise)
    return (low / np.abs(low).max() * 0.5).astype(np.float32)[None]


def write_flash_source(path: Path) -> Path:
    write_clip(path, flash_frames(), [k / FPS for k in range(SOURCE_FRAMES)], None, 0, CONTAINERS["mp4"], Fraction(FPS))
    return path


def check_synthetic(case: ClockCase, source: Path, folder: Path) -> dict:
    rate = case.audio_rate or SOURCE_RATE
    reference = noise_waveform(rate)
    target = folder / f"{case.name}.{case.extension}"
    write_case(case, source, reference, rate, target)
    audio_s, match = audio_start_s(target, reference[0], rate)
    video_s = float(probe(target).frame_times[0])
    flash, expert_audio_s = expert_clock(target, reference[0], rate)
    expected_flash = FLASH_FRAMES[0] + round(case.video_delay_s * FPS)
    audio_slack = case.tolerance_s + 1.5 / rate
    ok = (abs(audio_s - case.audio_delay_s) <= audio_slack and abs(video_s - case.video_delay_s) <= case.tolerance_s + 1e-6
          and flash == expected_flash and abs(expert_audio_s - case.audio_delay_s) <= case.tolerance_s + 1.5 / EXPERT_CLOCK.sample_rate)
    return {"case": case.name, "container": case.extension, "audio": case.audio_codec, "device": case.device,
            "audio_expected_ms": round(case.audio_delay_s * 1e3, 3), "audio_decoded_ms": round(audio_s * 1e3, 3),
            "match": round(match, 3), "video_expected_ms": round(case.video_delay_s * 1e3, 3),
            "video_decoded_ms": round(video_s * 1e3, 3), "flash_expected": expected_flash, "flash_decoded": flash,
            "expert_audio_ms": round(expert_audio_s * 1e3, 3), "tolerance_ms": case.tolerance_s * 1e3, "ok": ok}


# --- 2. What real containers say -------------------------------------------------------------------------------

_MP4_PARENTS = {b"moov", b"trak", b"mdia", b"edts", b"minf", b"stbl"}


def _boxes(data: bytes, start: int, end: int):
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[start + 8:start + 16])[0], 16
        elif size == 0:
            size = end - start
        if size < header:
            return
        yield kind, start + header, start + size
        start += size


def mp4_edit_lists(path: Path) -> dict[str, dict]:
    """Per track handler ("vide", "soun"): its media timescale and edit list [(duration_s, media_time)], read from
    the file's own boxes (media_time in the track's ticks; -1 is an empty edit, i.e. a late start)."""
    data = path.read_bytes()
    moov = next(((a, b) for kind, a, b in _boxes(data, 0, len(data)) if kind == b"moov"), None)
    if moov is None:
        return {}
    movie_scale, tracks = 1, {}
    for kind, a, b in _boxes(data, *moov):
        if kind == b"mvhd":
            movie_scale = struct.unpack(">I", data[a + 12:a + 16] if data[a] == 0 else data[a + 20:a + 24])[0]
        elif kind == b"trak":
            track: dict = {"edits": []}
            _read_track(data, a, b, track)
            tracks.setdefault(track.get("handler", "?"), track)
    for track in tracks.values():
        track["edits"] = [(duration / movie_scale, media_time) for duration, media_time in track["edits"]]
    return tracks


def _read_track(data: bytes, start: int, end: int, track: dict) -> None:
    for kind, a, b in _boxes(data, start, end):
        if kind in _MP4_PARENTS:
            _read_track(data, a, b, track)
        elif kind == b"hdlr":
            track["handler"] = data[a + 8:a + 12].decode("latin-1")
        elif kind == b"mdhd":
            track["timescale"] = struct.unpack(">I", data[a + 12:a + 16] if data[a] == 0 else data[a + 20:a + 24])[0]
        elif kind == b"elst":
            version, count = data[a], struct.unpack(">I", data[a + 4:a + 8])[0]
            entry, layout = (12, ">Ii") if version == 0 else (20, ">Qq")
            track["edits"] = [struct.unpack(layout, data[a + 8 + entry * i:a + 8 + entry * (i + 1)][:struct.calcsize(layout)])
                              for i in range(count)]


def edit_shift_s(track: dict) -> float:
    """How much later than its raw timestamps the track plays by its edit list: empty edits delay it, the first
    real edit's media_time cuts that much of its start. Only a list of empty edits then one edit is read (what
    every writer here emits); anything else is reported as NaN."""
    edits, scale = track.get("edits", []), track.get("timescale", 1)
    empty = [duration for duration, media_time in edits if media_time == -1]
    real = [media_time for _, media_time in edits if media_time != -1]
    if len(real) > 1 or edits[:len(empty)] != [(d, -1) for d in empty]:
        return float("nan")
    return sum(empty) - (real[0] / scale if real else 0.0)


def raw_video_start_s(path: Path) -> float:
    """The video's earliest packet time with FFmpeg's edit-list handling switched off, in one pass from the start
    (a seek back to 0 can skip a packet, see pipelines.media.probe)."""
    with av.open(str(path), options={"ignore_editlist": "1"}) as container:
        stream = container.streams.video[0]
        return min(float(packet.pts * packet.time_base) for packet in container.demux(stream) if packet.pts is not None)


def raw_audio(path: Path) -> tuple[np.ndarray, float]:
    """Every decoded sample of the first audio stream, edit list ignored, mono at the stream's rate; and the media
    time of the first (a decoder may return nothing for a first packet)."""
    with av.open(str(path), options={"ignore_editlist": "1"}) as container:
        stream = container.streams.audio[0]
        frames = list(container.decode(stream))
        blocks = [frame.to_ndarray().astype(np.float32).reshape(-1, len(frame.layout.channels)).T
                  if not frame.format.is_planar else frame.to_ndarray().astype(np.float32) for frame in frames]
        return np.concatenate(blocks, axis=1).mean(axis=0), float(frames[0].time or 0.0)


def inspect_real(path: Path) -> dict:
    """What the container says about when each stream starts, and what decoding made of it.

    Said: the video's first raw packet time and the audio's first raw decoded sample's, each moved by its mp4/mov
    edit list where it has one ("raw": FFmpeg's edit-list handling off). Decoded: the probe's first frame time,
    and where read_audio puts the raw decoded samples (found by cross-correlation)."""
    info = probe(path)
    indexed, decoded, gap = frames_agree(path)
    edits = mp4_edit_lists(path) if info.container.startswith("mov") else {}
    video_said = raw_video_start_s(path) + (edit_shift_s(edits["vide"]) if "vide" in edits else 0.0)
    raw, raw_start_s = raw_audio(path)
    audio_said = raw_start_s + (edit_shift_s(edits["soun"]) if "soun" in edits else 0.0)
    samples, rate = read_audio(path)
    lag, match = waveform_lag(samples.mean(axis=0), raw, round(SEARCH_S * rate))
    video_s = float(info.frame_times[0])
    ok = (indexed == decoded and gap < 1e-6 and abs(video_said - video_s) < 1e-6
          and abs(audio_said - lag / rate) <= 1.5 / rate)
    return {"clip": path.name, "container": info.container.split(",")[0], "video": info.video_codec,
            "audio": f"{info.audio_codec} {info.sample_rate}",
            "edit_lists": {kind: track["edits"] for kind, track in edits.items()},
            "audio_expected_ms": round(audio_said * 1e3, 3), "audio_decoded_ms": round(lag / rate * 1e3, 3),
            "match": round(match, 3), "video_expected_ms": round(video_said * 1e3, 3),
            "video_decoded_ms": round(video_s * 1e3, 3), "frames_indexed": indexed, "frames_decoded": decoded,
            "frame_time_gap_ms": round(gap * 1e3, 3), "ok": ok}


# --- 3. Real clips remuxed -------------------------------------------------------------------------------------


def check_remuxed(path: Path, case: ClockCase, folder: Path) -> dict:
    samples, rate = read_audio(path)
    samples = samples[:2]
    if case.audio_rate and case.audio_rate != rate:
        samples = np.stack([resample(channel, rate, case.audio_rate) for channel in samples])
        rate = case.audio_rate
    target = folder / f"{path.stem}_{case.name}.{case.extension}"
    write_case(case, path, samples, rate, target)
    audio_s, match = audio_start_s(target, samples.mean(axis=0), rate)
    video_s = float(probe(target).frame_times[0]) - float(probe(path).frame_times[0])
    indexed, decoded, gap = frames_agree(target) if case is MPEG_PS_CASE else (0, 0, 0.0)
    ok = (abs(audio_s - case.audio_delay_s) <= case.tolerance_s + 1.5 / rate
          and abs(video_s - case.video_delay_s) <= case.tolerance_s + 1e-3 and indexed == decoded and gap < 1e-6)
    target.unlink()
    return {"clip": path.name, "case": case.name, "audio_expected_ms": round(case.audio_delay_s * 1e3, 3),
            "audio_decoded_ms": round(audio_s * 1e3, 3), "match": round(match, 3),
            "video_expected_ms": round(case.video_delay_s * 1e3, 3), "video_decoded_ms": round(video_s * 1e3, 3),
            "ok": ok}


# bench.real_offsets moves real clips' audio with pipelines.remux.shift_audio: it must move by exactly what it is asked.
SHIFTS_S = (-0.2, 0.2)


def check_shift_audio(path: Path, delay_s: float, folder: Path) -> dict:
    """`shift_audio`'s copy against the clip: its decoded audio is the clip's decoded audio `delay_s` later, and its
    first frame is the clip's."""
    from pipelines.remux import shift_audio

    samples, rate = read_audio(path)
    target = folder / f"{path.stem}_shifted{path.suffix if path.suffix in ('.mp4', '.mkv', '.mov') else '.mkv'}"
    shift_audio(path, target, delay_s)
    moved, moved_rate = read_audio(target)
    mono = moved.mean(axis=0) if moved_rate == rate else resample(moved.mean(axis=0), moved_rate, rate)
    # Where the clip's sample 0 went; on an early shift it is cut, so look for the clip's audio past the cut.
    skip = max(0, round(-delay_s * rate))
    lag, match = waveform_lag(mono, samples.mean(axis=0)[skip:], round(SEARCH_S * rate))
    audio_s = (lag - skip) / rate
    video_s = float(probe(target).frame_times[0]) - float(probe(path).frame_times[0])
    target.unlink()
    return {"clip": path.name, "case": f"shift_audio {delay_s * 1e3:+g} ms", "audio_expected_ms": round(delay_s * 1e3, 3),
            "audio_decoded_ms": round(audio_s * 1e3, 3), "match": round(match, 3), "video_expected_ms": 0.0,
            "video_decoded_ms": round(video_s * 1e3, 3),
            "ok": abs(audio_s - delay_s) <= 1.5 / rate and abs(video_s) < 1e-6}


def remux_cases(path: Path) -> list[ClockCase]:
    """Every case whose container takes the clip's video codec as it is; MPEG-PS (re-encoded) where the clip has a
    constant rate that MPEG-1 can code."""
    info = probe(path)
    copyable = {"mp4": {"h264", "hevc", "mpeg4"}, "mov": {"h264", "hevc", "mpeg4"}, "mkv": {"h264", "hevc", "mpeg4", "mpeg1video"}}
    cases = [case for case in CLOCK_CASES if info.video_codec in copyable[case.extension]]
    try:
        mpeg1_rate(info.fps)
    except ValueError:
        return cases
    return cases if info.variable_frame_rate else cases + [MPEG_PS_CASE]


# --- The bench -------------------------------------------------------------------------------------------------


def bench_clock_check(config: ClockCheckConfig) -> dict:
    if config.remux_clips < 0:
        raise ValueError(f"--remux-clips must be 0 or more, got {config.remux_clips}")
    started = time.perf_counter()
    clips = [clip for folder in config.clips if Path(folder).is_dir()
             for clip in sorted(Path(folder).iterdir()) if clip.suffix.lower() in VIDEO_EXTENSIONS]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        source = write_flash_source(folder / "flashes.mp4")
        synthetic = [check_synthetic(case, source, folder) for case in CLOCK_CASES + (MPEG_PS_CASE,)]
        real = [inspect_real(clip) for clip in clips]
        remuxed = [check_remuxed(clip, case, folder) for clip in clips[:config.remux_clips] for case in remux_cases(clip)]
        remuxed += [check_shift_audio(clip, delay_s, folder) for clip in clips[:config.remux_clips] for delay_s in SHIFTS_S]
    return {"synthetic": synthetic, "real": real, "remuxed": remuxed, "clips": len(clips),
            "wall_s": round(time.perf_counter() - started, 1), "date": time.strftime("%Y-%m-%d")}


def format_table(result: dict) -> str:
    yes = lambda ok: "yes" if ok else "**NO**"  # noqa: E731
    lines = ["| case | container, audio | what the container does | audio sample 0, ms: expected / decoded | first frame, ms: "
             "expected / decoded | expert clock: flash frame expected / decoded, 16 kHz sample 0 ms | ok |",
             "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for row in result["synthetic"]:
        lines.append(f"| {row['case']} | {row['container']}, {row['audio']} | {row['device']} | {row['audio_expected_ms']:g} / "
                     f"{row['audio_decoded_ms']:g} | {row['video_expected_ms']:g} / {row['video_decoded_ms']:g} | "
                     f"{row['flash_expected']} / {row['flash_decoded']}, {row['expert_audio_ms']:g} | {yes(row['ok'])} |")
    if result["real"]:
        lines += ["", "| clip | container | video, audio | edit lists (duration s, media_time) | audio sample 0, ms: "
                  "container / decoded | first frame, ms: container / decoded | frames indexed / decoded | ok |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: | --- |"]
        for row in result["real"]:
            edits = "; ".join(f"{kind} " + ", ".join(f"({d:.3f}, {m})" for d, m in entries)
                              for kind, entries in row.get("edit_lists", {}).items()) or "-"
            lines.append(f"| {row['clip']} | {row['container']} | {row['video']}, {row['audio']} | {edits} | "
                         f"{row['audio_expected_ms']:g} / {row['audio_decoded_ms']:g} | {row['video_expected_ms']:g} / "
                         f"{row['video_decoded_ms']:g} | {row['frames_indexed']} / {row['frames_decoded']} | {yes(row['ok'])} |")
    if result["remuxed"]:
        lines += ["", "| case | clips | audio sample 0, ms: expected | decoded (min .. max) | worst error ms | "
                  "first frame, ms: expected / decoded (min .. max) | correlation (min) | all ok |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for name in dict.fromkeys(row["case"] for row in result["remuxed"]):
            rows = [row for row in result["remuxed"] if row["case"] == name]
            if not rows:
                continue
            decoded = [row["audio_decoded_ms"] for row in rows]
            video = [row["video_decoded_ms"] for row in rows]
            worst = max(abs(value - rows[0]["audio_expected_ms"]) for value in decoded)
            lines.append(f"| {name} | {len(rows)} | {rows[0]['audio_expected_ms']:g} | {min(decoded):g} .. {max(decoded):g} | "
                         f"{worst:.3f} | {rows[0]['video_expected_ms']:g} / {min(video):g} .. {max(video):g} | "
                         f"{min(row['match'] for row in rows):.3f} | {yes(all(row['ok'] for row in rows))} |")
    failed = [row for part in ("synthetic", "real", "remuxed") for row in result[part] if not row["ok"]]
    lines.append(f"\n{len(result['synthetic'])} synthetic cases, {result['clips']} real clips, {len(result['remuxed'])} "
                 f"remuxed copies: {len(failed)} off; {result['wall_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return bench_main(ClockCheckConfig, "where decoding puts audio sample 0 and video frame 0, against what the "
                      "container says", bench_clock_check, format_table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
