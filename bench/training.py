"""Training input and step on one device: the model step alone, our loader alone, both together, and the
research-code loader feeding the same step.

    python -m bench.training --shards DIR [--size tiny|small|medium|large] [--device auto|cpu|cuda]
        [--preset full|cpu-small] [--out runs/bench/training.json] [--research-layout DIR] [--sources DIR]
        [--windows-per-segment 16[,64...]] [--loader-workers N] [--batch-size B]

Tables, all measured in one run on one device:

(a) step: forward + backward + AdamW step on a batch already on the device (uint8 faces converted there, as in
    training), in fp32 eager, bf16 autocast + channels_last, and + torch.compile, at 2-3 batch sizes:
    samples/s, ms/step, peak accelerator memory. The best of them at the end-to-end batch size is the ceiling.
(b) our loader alone: pairs/s out of `model.loader.stream.PairStream` as `train_ray.py` builds it (segments
    decoded by 0 or N loader processes into a pool on the device, batches drawn there), with the distinct
    segments per batch, the pool's memory and the CPU cores the loader processes and the trainer's process
    used. With fewer shards than loader processes every process reads every shard and decodes only its
    share; the bench then also repacks the same samples into N shards (a corpus large enough to train on has
    that many) and measures both. Then a cProfile of the loader in one process: where its time goes.
(c) end to end: our loader feeding the ceiling's step, and its ratio to the ceiling (goal: >= 0.8). Extra
    `--windows-per-segment` values add loader and end-to-end rows at the end (more pairs per decoded segment).
(d) the research-code loader (`bench.baselines.research_loader`: a JPEG per frame, a wav per segment, the
    mel recomputed for every sample) alone and feeding the same step; ours / research.

Timing: each measurement warms up for a while (worker start-up, cuDNN autotuning, torch.compile), then counts
samples over a window that starts and ends on a device synchronisation. `--size` scales batch sizes, windows
and the research layout; `tiny` on a CPU is a smoke test. Results go to `--out` as JSON and print as tables.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import shutil
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from model.config import PRESETS
from model.expert import SyncExpert
from model.loss import sync_loss
from model.loader.stream import PairStream
from model.loader.windows import PairConfig
from pipelines.core.device import resolve_device
from train_ray import LOADER_PROCESSES_PER_GPU
from pipelines.shards.reader import list_shards, shards_holding
from pipelines.core.storage import StorageConfig

PRECISIONS = ("fp32", "bf16-cl", "bf16-cl-compile")
GOAL = 0.9  # end to end / step alone


@dataclass(frozen=True)
class Size:
    cpu_batches: tuple[int, ...]
    cuda_batches: tuple[int, ...]
    warmup_s: float  # per measurement, after its first step or batch
    measure_s: float  # per measurement
    min_steps: int  # per measurement, whatever the time
    research_segments: int  # segments in a research layout built by the bench
    profile_batches: int  # batches of one loader process under cProfile
    compile_all: bool  # compile at every batch size (else at the end-to-end one only: compiling takes a while)


SIZES = {
    "tiny": Size((4, 8), (256, 1024), 0.2, 0.5, 2, 3, 2, False),
    "small": Size((16, 64), (256, 1024, 2048), 1.5, 3.0, 3, 12, 3, False),
    "medium": Size((32, 128), (256, 1024, 4096), 3.0, 8.0, 5, 24, 6, False),
    "large": Size((64, 256), (512, 1024, 4096), 5.0, 20.0, 10, 48, 12, True),
}


# --- the step ------------------------------------------------------------------------------------------------

class Step:
    """One training step of `train_ray.run_loop`, at a precision: fp32 eager; bf16 autocast + channels_last;
    and the same through torch.compile (static shapes: one graph per batch size)."""

    def __init__(self, preset: str, precision: str, device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        self.precision, self.device = precision, device
        self.channels_last = precision != "fp32"
        self.expert = SyncExpert(PRESETS[preset]).to(device)
        if self.channels_last:
            self.expert = self.expert.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.expert.parameters(), lr=1e-3, weight_decay=1e-4)
        self.model = torch.compile(self.expert, dynamic=False) if precision.endswith("compile") else self.expert

    def __call__(self, faces: torch.Tensor, mels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        faces = self.expert.prepare_lower_faces(faces)
        if self.channels_last:
            faces = faces.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision != "fp32"):
            similarity = self.model(faces, self.expert.prepare_mels(mels))
        loss = sync_loss(similarity.float(), labels.float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss


def synthetic_batch(config, batch: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    side = config.face_size
    return {"faces": torch.randint(0, 256, (batch, config.window_frames, side // 2, side, 3), dtype=torch.uint8,
                                   generator=generator).to(device),
            "mels": (torch.rand(batch, config.mel_bins, config.mel_window, generator=generator) * 8 - 4).to(device),
            "labels": (torch.rand(batch, generator=generator) < 0.5).float().to(device)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step(step: Step, batch: dict[str, torch.Tensor], size: Size) -> dict:
    device = step.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    step(batch["faces"], batch["mels"], batch["labels"])  # compiles, autotunes
    synchronize(device)
    first_s = time.perf_counter() - started
    warm = _repeat(lambda: step(batch["faces"], batch["mels"], batch["labels"]), device, size.warmup_s, 2, 1)
    chunk = max(1, int(0.2 / max(warm["seconds"] / warm["count"], 1e-6)))  # synchronise about every 0.2 s
    timed = _repeat(lambda: step(batch["faces"], batch["mels"], batch["labels"]), device, size.measure_s,
                    size.min_steps, chunk)
    samples = len(batch["labels"])
    return {"samples_per_s": timed["count"] * samples / timed["seconds"],
            "ms_per_step": 1000 * timed["seconds"] / timed["count"], "steps": timed["count"],
            "first_step_s": first_s,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def _repeat(call, device: torch.device, seconds: float, at_least: int, chunk: int) -> dict:
    synchronize(device)
    started, count = time.perf_counter(), 0
    while True:
        for _ in range(chunk):
            call()
        count += chunk
        synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and count >= at_least:
            return {"count": count, "seconds": elapsed}


# --- loaders -------------------------------------------------------------------------------------------------

def our_loader(shard_uris: list[str], preset: str, batch: int, workers: int, device: torch.device,
               windows_per_segment: int, seed: int = 0) -> PairStream:
    """Our pairs as `train_ray.py` streams them (`model.loader.stream.PairStream`, on the training device)."""
    pairs = PairConfig(windows_per_segment=windows_per_segment)
    return PairStream(shard_uris, StorageConfig(), "train", pairs, PRESETS[preset].clock, batch, seed=seed,
                      device=device, loader_workers=workers)


def on_device(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The step's inputs on the device; whole crops (the research loader's) cut to their lower halves first."""
    faces = batch["faces"]
    if faces.shape[2] == faces.shape[3]:
        faces = faces[:, :, faces.shape[2] // 2:]
    return {"faces": faces.to(device, non_blocking=True), "mels": batch["mels"].to(device, non_blocking=True),
            "labels": batch["labels"].to(device, non_blocking=True)}


def measure_loader(batches, size: Size, device: torch.device, step: Step | None = None) -> dict:
    """Samples/s out of an iterator of batches, alone (step None) or each batch moved to the device and stepped;
    with the CPU cores this process and its loader processes used while counting, and the distinct segments
    per batch where the batches say."""
    segments = []

    def consume() -> int:
        batch = next(batches)
        if step is not None:
            moved = on_device(batch, device)
            step(moved["faces"], moved["mels"], moved["labels"])
        if "segments" in batch:
            segments.append(batch["segments"])
        return len(batch["labels"])

    started = time.perf_counter()
    first = next(batches)
    first_s = time.perf_counter() - started
    spec = {name: {"dtype": str(value.dtype).replace("torch.", ""), "shape": list(value.shape)}
            for name, value in first.items() if isinstance(value, torch.Tensor)}
    _count(consume, device, size.warmup_s, 2)
    segments.clear()
    cpu_before = cpu_seconds()
    samples, seconds = _count(consume, device, size.measure_s, size.min_steps)
    cpu_after = cpu_seconds()
    row = {"samples_per_s": samples / seconds, "seconds": seconds, "samples": samples, "first_batch_s": first_s,
           "batch": spec, "trainer_cores": (cpu_after["self"] - cpu_before["self"]) / seconds,
           "loader_cores": (cpu_after["children"] - cpu_before["children"]) / seconds}
    if segments:
        row["segments_per_batch"] = {"mean": sum(segments) / len(segments), "min": min(segments)}
    return row


def cpu_seconds() -> dict[str, float]:
    """CPU-seconds so far of this process (every thread) and of its living child processes (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")

    def of(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    children = []
    for task in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        children += [int(pid) for pid in task.read_text().split()]
    return {"self": of(os.getpid()), "children": sum(of(pid) for pid in children)}


def _count(consume, device: torch.device, seconds: float, at_least: int) -> tuple[int, float]:
    synchronize(device)
    started, samples, batches = time.perf_counter(), 0, 0
    while True:
        samples += consume()
        batches += 1
        if batches >= at_least and time.perf_counter() - started >= seconds:
            synchronize(device)
            return samples, time.perf_counter() - started


def close(batches) -> None:
    """Stop a batch iterator's loader processes (a generator's, by closing it; a DataLoader's directly)."""
    for name in ("close", "_shutdown_workers"):
        stop = getattr(batches, name, None)
        if stop is not None:
            stop()


def reshard(shard_uris: list[str], out: Path, count: int, copies: int = 1) -> list[str]:
    """The samples of local shards repacked round-robin into `count` shards (with stats json) under `out`,
    `copies` times over: copy c > 0 of a sample is renamed (key and source video + `_cC`), so the loader sees
    it as another segment of another video while decoding the same bytes."""
    out.mkdir(parents=True, exist_ok=True)
    tars = [tarfile.open(out / f"shard-{i:06d}.tar", "w") for i in range(count)]
    splits: list[list[str]] = [[] for _ in range(count)]
    index = -1
    for copy in range(copies):
        for uri in shard_uris:
            with tarfile.open(uri) as source:
                key = None
                for member in source:
                    member_key, extension = member.name.split(".", 1)
                    if member_key != key:
                        key, index = member_key, index + 1
                    data = source.extractfile(member).read()
                    if member.name.endswith(".json"):
                        meta = json.loads(data)
                        if copy:
                            meta.update(key=f"{meta['key']}_c{copy}", source_key=f"{meta['source_key']}_c{copy}")
                            data = json.dumps(meta).encode()
                        splits[index % count].append(meta["split"])
                    renamed = tarfile.TarInfo(f"{member_key}_c{copy}.{extension}" if copy else member.name)
                    renamed.size, renamed.mtime = len(data), member.mtime
                    tars[index % count].addfile(renamed, fileobj=io.BytesIO(data))
    for i, tar in enumerate(tars):
        tar.close()
        stats = {"samples": len(splits[i]), "videos": [{"samples": [{"split": s} for s in splits[i]]}]}
        (out / f"shard-{i:06d}.json").write_text(json.dumps(stats))
    return list_shards(str(out), StorageConfig())


# --- the run -------------------------------------------------------------------------------------------------

def machine(device: torch.device) -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "device": device.type}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(args: argparse.Namespace, save=lambda result: None) -> dict:
    """Every table; `save(result)` is called after each section, so an interrupted run keeps what it measured."""
    size, device = SIZES[args.size], resolve_device(args.device)
    on_gpu = device.type == "cuda"
    batches = size.cuda_batches if on_gpu else size.cpu_batches
    e2e_batch = args.batch_size or (1024 if on_gpu else batches[-1])
    batches = tuple(sorted({*batches, e2e_batch}))
    precisions = args.precisions.split(",") if args.precisions else \
        (list(PRECISIONS) if on_gpu else ["fp32", "bf16-cl"])
    workers = args.loader_workers if args.loader_workers is not None else \
        LOADER_PROCESSES_PER_GPU if on_gpu else max(1, os.cpu_count() or 1)
    config = PRESETS[args.preset]
    result: dict = {"date": datetime.date.today().isoformat(), "machine": machine(device),
                    "args": {k: str(v) for k, v in vars(args).items()}, "size": asdict(size),
                    "preset": args.preset, "batch_sizes": list(batches), "end_to_end_batch": e2e_batch,
                    "loader_workers": workers, "windows_per_segment": args.windows_per_segment}
    log = (lambda message: print(message, flush=True)) if not args.quiet else (lambda message: None)

    # (a) the step alone
    steps, kept = [], {}
    result["step"] = steps
    for precision in precisions:
        for batch in batches:
            if precision.endswith("compile") and not size.compile_all and batch != e2e_batch:
                continue
            step = Step(args.preset, precision, device)
            row = {"precision": precision, "batch": batch,
                   **measure_step(step, synthetic_batch(config, batch, device), size)}
            steps.append(row)
            log(f"step {precision:16} batch {batch:5}: {row['samples_per_s']:9.0f} samples/s "
                f"({row['ms_per_step']:.1f} ms, first {row['first_step_s']:.1f} s)")
            if batch == e2e_batch:
                kept[precision] = step
            del step
            save(result)
    ceiling = max((r for r in steps if r["batch"] == e2e_batch), key=lambda r: r["samples_per_s"])
    best = kept.pop(ceiling["precision"])
    kept.clear()
    if on_gpu:
        torch.cuda.empty_cache()

    # (b) our loader alone, (c) end to end
    scratch = Path(tempfile.mkdtemp(prefix="bench_training_"))
    try:
        given = shards_holding(list_shards(args.shards, StorageConfig()), StorageConfig(), "train")
        if not given:
            raise SystemExit(f"no shards with training samples under {args.shards}")
        sources = {"given": given}
        if (len(given) < workers or args.copies > 1) and "://" not in args.shards:
            sources["resharded"] = reshard(given, scratch / "shards", max(workers, len(given)), args.copies)
        best_source = "resharded" if "resharded" in sources else "given"
        default_wps, *other_wps = args.windows_per_segment
        loader_rows, e2e_rows = [], []
        result["loader"], result["end_to_end"] = loader_rows, e2e_rows

        def measure_our_loader(kind: str, source: str, count: int, wps: int, end_to_end: bool) -> None:
            row = {"loader": kind, "shards": f"{source} ({len(sources[source])})", "workers": count,
                   "windows_per_segment": wps}
            iterator = None
            try:
                iterator = iter(our_loader(sources[source], args.preset, e2e_batch, count, device, wps))
                row.update(measure_loader(iterator, size, device))
                log(f"loader {kind:12} {row['shards']:15} workers {count:2} windows {wps:3}: "
                    f"{row['samples_per_s']:9.0f} pairs/s")
                if end_to_end:
                    e2e = {key: row[key] for key in ("loader", "shards", "workers", "windows_per_segment")}
                    e2e.update(precision=ceiling["precision"], batch_size=e2e_batch,
                               **measure_loader(iterator, size, device, best))
                    e2e["ceiling_samples_per_s"] = ceiling["samples_per_s"]
                    e2e["ratio_to_ceiling"] = e2e["samples_per_s"] / ceiling["samples_per_s"]
                    e2e_rows.append(e2e)
                    log(f"end to end {kind} {e2e['shards']} windows {wps}: {e2e['samples_per_s']:.0f} samples/s = "
                        f"{e2e['ratio_to_ceiling']:.2f} of the step alone ({ceiling['samples_per_s']:.0f})")
            except Exception as error:  # noqa: BLE001  (a bench records a failed row and goes on)
                if args.strict:
                    raise
                row["error"] = f"{type(error).__name__}: {error}"
                log(f"loader {kind} {row['shards']} workers {count}: failed: {row['error']}")
            finally:
                if iterator is not None:
                    close(iterator)
            loader_rows.append(row)
            save(result)

        measure_our_loader("PairStream", "given", 0, default_wps, False)
        measure_our_loader("PairStream", "given", workers, default_wps, best_source == "given")
        if best_source != "given":
            measure_our_loader("PairStream", best_source, workers, default_wps, True)

        # where one loader process spends its time
        result["loader_profile"] = profile_loader(sources[best_source], args.preset, e2e_batch, default_wps,
                                                  size.profile_batches, device)
        log("loader profile: " + ", ".join(f"{r['function']} {r['share']:.0%}"
                                           for r in result["loader_profile"]["top"][:4]))
        save(result)

        # (d) the research loader
        try:
            result["research"] = research(args, size, device, best, e2e_batch, workers, on_gpu, scratch, log)
        except Exception as error:  # noqa: BLE001
            if args.strict:
                raise
            result["research"] = {"error": f"{type(error).__name__}: {error}"}
            log(f"research loader failed: {result['research']['error']}")
        save(result)

        # what more windows per decoded segment would give (a training choice: more pairs per JPEG decode)
        for wps in other_wps:
            measure_our_loader("PairStream", best_source, workers, wps, True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["summary"] = summarise(result, ceiling, workers)
    save(result)
    return result


def summarise(result: dict, ceiling: dict, workers: int) -> dict:
    """The headline numbers, at training's windows_per_segment (the first one given)."""
    default_wps = int(result["windows_per_segment"][0])
    summary = {"ceiling_samples_per_s": ceiling["samples_per_s"], "ceiling_precision": ceiling["precision"]}
    alone = [r["samples_per_s"] for r in result["loader"]
             if r["workers"] == workers and "samples_per_s" in r and r["windows_per_segment"] == default_wps]
    if alone:
        summary["our_loader_samples_per_s"] = max(alone)
    e2e = [r for r in result["end_to_end"] if r["windows_per_segment"] == default_wps]
    if e2e:
        summary.update(end_to_end_samples_per_s=e2e[0]["samples_per_s"], ratio_to_ceiling=e2e[0]["ratio_to_ceiling"],
                       goal_met=e2e[0]["ratio_to_ceiling"] >= GOAL)
    research_result = result.get("research", {})
    if "alone" in research_result and alone:
        summary["ours_over_research_alone"] = max(alone) / research_result["alone"]["samples_per_s"]
    if "end_to_end" in research_result and e2e:
        summary["ours_over_research_end_to_end"] = \
            e2e[0]["samples_per_s"] / research_result["end_to_end"]["samples_per_s"]
    return summary


def profile_loader(shard_uris: list[str], preset: str, batch: int, windows_per_segment: int, batches: int,
                   device: torch.device) -> dict:
    """cProfile of the loader's work, all in this process (reading and decoding as a loader process does, the
    pool's admissions and draws as the trainer's process does), and the functions that take the most time of
    their own."""
    import cProfile
    import pstats

    stream = iter(our_loader(shard_uris, preset, batch, 0, device, windows_per_segment))
    next(stream)  # start-up (imports, the shards' stats) is not the steady state
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    samples = sum(len(next(stream)["labels"]) for _ in range(batches))
    profiler.disable()
    seconds = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats
    total = sum(entry[2] for entry in stats.values())
    top = sorted(stats.items(), key=lambda item: -item[1][2])[:8]
    return {"samples_per_s_profiled": samples / seconds, "batches": batches, "windows_per_segment": windows_per_segment,
            "top": [{"function": _function_name(key), "calls": entry[1], "seconds": entry[2],
                     "share": entry[2] / total} for key, entry in top]}


def _function_name(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    return name if filename == "~" else f"{Path(filename).name}:{line}({name})"


def research(args, size: Size, device: torch.device, step: Step, batch: int, workers: int, on_gpu: bool,
             scratch: Path, log) -> dict:
    from bench.baselines.research_loader import ResearchDataset, build_layout, research_loader

    layout = Path(args.research_layout) if args.research_layout else scratch / "research"
    built_s = None
    if not (layout / "layout.json").is_file():
        started = time.perf_counter()
        built = build_layout(args.shards, layout, max_segments=size.research_segments, sources=args.sources)
        built_s = time.perf_counter() - started
        if not built["segments"]:
            return {"skipped": f"no segment's source video found ({built['skipped_no_source']} segments): "
                               f"pass --sources or --research-layout"}
    description = json.loads((layout / "layout.json").read_text())
    dataset = ResearchDataset(layout, window_frames=PRESETS[args.preset].window_frames, mel=args.research_mel)
    loader = research_loader(dataset, batch, workers, pin_memory=on_gpu)
    iterator = iter(loader)
    alone = measure_loader(iterator, size, device)
    log(f"research loader workers {workers}: {alone['samples_per_s']:9.0f} pairs/s (mel: {dataset.mel_name})")
    e2e = measure_loader(iterator, size, device, step)
    log(f"research end to end: {e2e['samples_per_s']:.0f} samples/s")
    close(iterator)
    sample = dataset[0]
    return {"layout": {"segments": len(description["segments"]), "bytes": description["bytes"],
                       "frames": sum(s["frames"] for s in description["segments"]), "built_s": built_s},
            "mel": dataset.mel_name, "workers": workers, "batch": batch, "alone": alone,
            "end_to_end": {**e2e, "precision": step.precision},
            "sample": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in sample.items()}}


# --- output --------------------------------------------------------------------------------------------------

def tables(result: dict) -> str:
    lines = [f"{result['machine'].get('gpu', 'CPU')}, {result['machine']['cpus']} CPUs, torch "
             f"{result['machine']['torch']}, preset {result['preset']}, size {result['args']['size']}",
             "", "(a) step alone (forward + backward + AdamW, batch already on the device; fp32: torch's defaults)",
             f"{'precision':16} {'batch':>6} {'samples/s':>10} {'ms/step':>8} {'first s':>8} {'peak GiB':>9}"]
    for r in result["step"]:
        memory = f"{r['peak_memory_gib']:9.2f}" if r["peak_memory_gib"] is not None else f"{'-':>9}"
        lines.append(f"{r['precision']:16} {r['batch']:6} {r['samples_per_s']:10.0f} {r['ms_per_step']:8.2f} "
                     f"{r['first_step_s']:8.1f} {memory}")
    lines += ["", f"(b) our loader alone (batch {result['end_to_end_batch']})",
              f"{'loader':12} {'shards':15} {'workers':>7} {'windows':>7} {'pairs/s':>9} {'first batch s':>13}"]
    for r in result["loader"]:
        lines.append(f"{r['loader']:12} {r['shards']:15} {r['workers']:7} {r['windows_per_segment']:7} " + (
            f"{r['samples_per_s']:9.0f} {r['first_batch_s']:13.1f}" if "error" not in r else f"failed: {r['error']}"))
    profile = result.get("loader_profile")
    if profile:
        lines += [f"one loader process under cProfile ({profile['samples_per_s_profiled']:.0f} pairs/s), own time:"]
        lines += [f"  {r['share']:6.1%}  {r['function']}" for r in profile["top"][:6]]
    lines += ["", "(c) end to end from shards",
              f"{'loader':12} {'shards':15} {'workers':>7} {'windows':>7} {'precision':16} {'samples/s':>10} "
              f"{'step alone':>10} {'ratio':>6}"]
    for r in result["end_to_end"]:
        lines.append(f"{r['loader']:12} {r['shards']:15} {r['workers']:7} {r['windows_per_segment']:7} "
                     f"{r['precision']:16} {r['samples_per_s']:10.0f} {r['ceiling_samples_per_s']:10.0f} "
                     f"{r['ratio_to_ceiling']:6.2f}")
    lines.append(f"goal: end to end >= {GOAL} of the step alone, at training's windows per segment "
                 f"({result['windows_per_segment'][0]})")
    research_result, s = result["research"], result["summary"]
    lines += ["", "(d) research-code loader (JPEG per frame, wav per segment, mel per sample)"]
    if "skipped" in research_result or "error" in research_result:
        lines.append(f"not measured: {research_result.get('skipped') or research_result['error']}")
    else:
        def number(value, form):
            return format(value, form) if value is not None else f"{'-':>{form.split('.')[0]}}"

        lines += [f"layout: {research_result['layout']['segments']} segments, {research_result['layout']['frames']} "
                  f"frames, {research_result['layout']['bytes'] / 1e6:.1f} MB; mel by {research_result['mel']}; "
                  f"{research_result['workers']} workers, batch {research_result['batch']}",
                  f"{'':12} {'research':>10} {'ours':>10} {'ours/research':>14}",
                  f"{'alone':12} {research_result['alone']['samples_per_s']:10.0f} "
                  f"{number(s.get('our_loader_samples_per_s'), '10.0f')} "
                  f"{number(s.get('ours_over_research_alone'), '14.1f')}",
                  f"{'end to end':12} {research_result['end_to_end']['samples_per_s']:10.0f} "
                  f"{number(s.get('end_to_end_samples_per_s'), '10.0f')} "
                  f"{number(s.get('ours_over_research_end_to_end'), '14.1f')}"]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", required=True, help="folder of shard-*.tar from pipelines.preprocess")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="scale of batches and windows")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/training.json"))
    parser.add_argument("--batch-size", type=int, help="end-to-end batch (default 1024 on a GPU, the largest "
                                                       "step batch on a CPU)")
    parser.add_argument("--loader-workers", type=int, help=f"loader processes (default: training's "
                                                           f"{LOADER_PROCESSES_PER_GPU} on a GPU; all CPUs on a CPU)")
    parser.add_argument("--precisions", help=f"comma-separated among {','.join(PRECISIONS)} (default: all on a "
                                             f"GPU; no compile on a CPU)")
    parser.add_argument("--research-layout", help="research layout folder: used if it holds layout.json, else "
                                                  "built there from --shards")
    parser.add_argument("--sources", help="folder holding the shards' source videos, where the paths their json "
                                          "records are gone (to build a research layout)")
    parser.add_argument("--research-mel", choices=("auto", "librosa", "numpy"), default="auto",
                        help="the research loader's mel: the project's log_mel (librosa) or its numpy twin")
    parser.add_argument("--windows-per-segment", default=str(PairConfig.windows_per_segment),
                        help="our loader's pairs per decoded segment; more comma-separated values add rows "
                             "(default: training's)")
    parser.add_argument("--copies", type=int, default=1,
                        help="repack the training samples this many times under new keys and videos (a corpus "
                             "with that many more segments, for the batches' diversity; the bytes repeat)")
    parser.add_argument("--strict", action="store_true", help="stop at a failed measurement (default: record it)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.precisions and not set(args.precisions.split(",")) <= set(PRECISIONS):
        parser.error(f"--precisions: choose among {', '.join(PRECISIONS)}")
    try:
        args.windows_per_segment = [int(value) for value in args.windows_per_segment.split(",")]
    except ValueError:
        parser.error("--windows-per-segment: comma-separated integers")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = run(args, save=lambda partial: args.out.write_text(json.dumps(partial, indent=1)))
    print(tables(result), flush=True)
    print(f"written {args.out}")
    return result


if __name__ == "__main__":
    main()
