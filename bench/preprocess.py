"""Preprocessing: our Ray Data pipeline against a Wav2Lip-style reference, on the same clips and machine.

    python -m bench.preprocess [--size N] [--workers 1 2] [--clips DIR] [--out runs/bench/preprocess.json]
    python -m bench.preprocess --long-seconds 60 3600 [--out runs/bench/preprocess_long_inputs.json]

Makes (or reuses, under runs/bench/preprocess_corpus/) a synthetic corpus with the project's generator, or with
`--clips DIR` takes the real clips in DIR (the 1x corpus is `--size` copies of them, copied into a temp folder so
that nothing derived from them lands in the repository), then runs each system in its own subprocess on the same
clips:

* ours (`pipelines.preprocess.run`, fresh output) once per `--workers` count;
* the reference (`bench.baselines.wav2lip_preprocess`: all frames in memory, detector on every frame in batches
  of 32, a JPEG per face crop, a wav per video), one process;
* memory: ours at the largest worker count on `memory_scale` (4) times the clips, against the 1x run.

`--long-seconds 60 3600` runs instead ours alone, one worker, on one long input per length (the corpus's clips
played one after another, `bench/long_input.py`: 48 kHz stereo AAC under `--long-size` px frames, a face in every
`--long-face-every`-th clip), made in the scratch folder and deleted after its run: the largest Ray worker's peak
RSS (its VmHWM, below) at each length, and longest / shortest (goal <= 1.2).

Table: video-seconds, wall s, video-s per wall-s, CPU-s per video-s, GB written per video hour, peak RSS, the
machine's 1-minute load average as the run ended (other work on the machine shows there), and the ratios against
the goals (ours/reference throughput >= 5x, bytes <= 1/5, 2-vs-1 workers >= 1.7x, peak RSS
4x/1x <= 1.2). JSON: every number, the machine and the command.

How a run is measured (Ray's workers are separate processes, started by its raylet, not by us):
* wall: inside the subprocess, from just before the work starts (imports done; Ray start-up included, as a
  user pays it) to the end of packing and indexing.
* CPU-seconds: a thread in this process reads /proc every `sample_interval_s`, finds the subprocess and all its
  descendants, and keeps each process's latest user + system time; their sum, less what the subprocess had
  spent before its work began (its imports), is the run's CPU time. A process's last interval before it exits
  is missed, so this is a lower bound, off by at most one interval per process that exits mid-run (Ray's
  actors at the end of a dataset). The subprocess makes itself a child subreaper (Linux
  `PR_SET_CHILD_SUBREAPER`), so processes orphaned while Ray shuts down stay in its tree, and it reaps them all
  before it exits. `getrusage(RUSAGE_CHILDREN)` alone would not do: Ray's raylet reaps the workers it ends
  itself, and their time never reaches us; it is kept in the JSON (`cpu_s_rusage`) as a second lower bound.
* a worker's peak RSS (`worker_peak_rss_mb`): the same thread reads each Ray Data worker's VmHWM from
  /proc/PID/status, the kernel's own high-water mark of that process's resident set, so no sampling gap can miss
  a peak (only growth in a worker's last `sample_interval_s` before it exits could go unseen).
* peak RSS: a thread in this process reads /proc every `sample_interval_s`, finds the subprocess and all its
  descendants, and sums their resident set sizes; the peak of that sum is reported. Shared pages (libraries,
  Ray's shared-memory object store) count once per process that maps them, so the sum overstates the
  footprint of a Ray run; the peak of the summed PSS (shared pages split between their users), sampled every
  `pss_interval_s`, is reported next to it.
* bytes: everything the system leaves in its output folder (ours: shards, stats, index; the reference: JPEGs
  and wavs), per hour of input video.
* overlap: for every process of the tree that spent a second of CPU or more, its CPU-s and the first and last
  sample at which it was working (`busy_processes` in the JSON): whether the stages ran at once or one after
  another.
* load: the machine's 1-minute load average as each run ended, and whether the kernel shares the CPU between
  sessions (`sched_autogroup`). With autogroup on, the whole measured tree is one session and, while other
  sessions are busy, gets one session's share of the cores whatever its worker count: worker scaling shows only
  on a quiet machine. So before each of our runs, N CPU-bound processes of this session spin for `capacity_s`
  and one alone for as long (N: the most workers asked for); the work they get done, N against one, is the
  machine's capacity for N workers at that moment (`cpu_capacity`: 2.0 on two idle cores), printed next to the
  measured scaling.
"""

from __future__ import annotations

import ctypes
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOALS = {
    "throughput_vs_reference": 5.0,  # ours / reference video-s per wall-s, at least
    "bytes_vs_reference": 0.2,  # ours / reference bytes, at most
    "scaling_2_vs_1": 1.7,  # ours with 2 workers / with 1, at least
    "memory_4x_vs_1x": 1.2,  # ours' peak summed RSS at 4x the clips / at 1x, at most
}
# --long-seconds: the worker's peak RSS on the longest input / on the shortest, at most.
LONG_INPUT_GOAL = {"worker_memory_longest_vs_shortest": 1.2}
AT_MOST = {"bytes_vs_reference", "memory_4x_vs_1x", *LONG_INPUT_GOAL}
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
REAP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PreprocessBenchConfig:
    size: int = field(default=1, metadata={"help": "scale: the 1x corpus has size * videos_per_size clips"})
    videos_per_size: int = field(default=6, metadata={"help": "clips per unit of --size"})
    min_seconds: float = field(default=4.0, metadata={"help": "shortest clip"})
    max_seconds: float = field(default=8.0, metadata={"help": "longest clip"})
    seed: int = field(default=0, metadata={"help": "synthetic corpus seed"})
    workers: tuple[int, ...] = field(default=(1, 2), metadata={"help": "Ray worker counts to run ours with"})
    aligner: str = field(default="dlib", metadata={"help": "our face aligner (face-alignment needs --face-weights)",
                                                   "choices": ["auto", "retinaface", "face-alignment", "dlib"]})
    face_weights: Path | None = field(default=None, metadata={"help": "folder with face-alignment's weights"})
    ray_cpus: int = field(default=0, metadata={
        "help": "logical CPUs of the Ray instance ours runs on; 0 = the pipeline's own choice (--num-workers, "
                "one CPU per worker)"})
    face_workers: int = field(default=0, metadata={
        "help": "ours' face actors in separate pools (0: the pipeline's own choice, `--face-workers` there)"})
    fuse_stages: bool = field(default=True, metadata={
        "help": "ours with all stages in one actor per worker (--no-fuse-stages: a pool of actors per stage)"})
    clips: Path | None = field(default=None, metadata={
        "help": "folder of real clips (recursive) to run on instead of the synthetic corpus; --size copies of "
                "them make the 1x corpus"})
    device: str = field(default="auto", metadata={"help": "our face stage's device", "choices": ["auto", "cpu", "cuda"]})
    baseline: bool = field(default=True, metadata={"help": "run the Wav2Lip-style reference"})
    memory: bool = field(default=True, metadata={"help": "also run ours on memory_scale times the clips"})
    profile: bool = field(default=True, metadata={
        "help": "also time our stages one by one in this process (where the time goes)"})
    memory_scale: int = field(default=4, metadata={"help": "corpus multiple for the memory section"})
    long_seconds: tuple[float, ...] = field(default=(), metadata={
        "help": "instead of the corpus runs: ours (1 worker) on one long input of each of these lengths, e.g. 60 "
                "3600 (synthetic clips played one after another, bench/long_input.py; built in the scratch folder "
                "and deleted after its run), and the largest Ray worker's peak RSS of each"})
    long_size: int = field(default=64, metadata={"help": "frame side of the long inputs, px"})
    long_face_every: int = field(default=30, metadata={
        "help": "only every N-th clip of a long input shows its face (the rest a grey picture under their sound)"})
    corpus: Path | None = field(default=None, metadata={
        "help": "corpus folder (default: runs/bench/preprocess_corpus/<settings>)"})
    scratch: Path | None = field(default=None, metadata={
        "help": "where outputs are written and deleted (default: a temp folder)"})
    sample_interval_s: float = field(default=0.2, metadata={"help": "seconds between RSS samples of the process tree"})
    pss_interval_s: float = field(default=1.0, metadata={"help": "seconds between PSS samples (costlier to read)"})
    capacity_s: float = field(default=2.0, metadata={
        "help": "seconds each side of the CPU capacity check before each of our runs (0: skip): what N spinning "
                "processes of this session get done against one, N the most workers asked for"})
    out: Path = field(default=Path("runs/bench/preprocess.json"), metadata={"help": "JSON results"})

    def __post_init__(self):
        problems = []
        if self.size < 1 or self.videos_per_size < 1 or self.memory_scale < 2:
            problems.append("--size >= 1, --videos-per-size >= 1, --memory-scale >= 2")
        if not self.workers or min(self.workers) < 1:
            problems.append("--workers needs counts >= 1")
        if any(seconds < 1 for seconds in self.long_seconds) or self.long_size < 32 or self.long_face_every < 1:
            problems.append("--long-seconds of at least 1, --long-size >= 32, --long-face-every >= 1")
        if self.sample_interval_s <= 0 or self.pss_interval_s <= 0 or self.capacity_s < 0:
            problems.append("sampling intervals must be positive, --capacity-s not negative")
        if self.clips is not None and not Path(self.clips).is_dir():
            problems.append(f"--clips {self.clips} is not a folder")
        if self.clips is not None and self.corpus is not None:
            problems.append("--clips and --corpus name two corpora: give one")
        if problems:
            raise ValueError("invalid bench config: " + "; ".join(problems))

    @property
    def synthetic_clips(self) -> int:
        return self.size * self.videos_per_size

    @property
    def copies(self) -> int:
        """How many times the whole corpus the largest run needs."""
        return self.memory_scale if self.memory else 1


# --- corpus ----------------------------------------------------------------------------------------------------

def corpus_folder(config: PreprocessBenchConfig, count: int) -> Path:
    if config.corpus is not None:
        return config.corpus
    return REPO / "runs" / "bench" / "preprocess_corpus" / (
        f"seed{config.seed}_n{count}_{config.min_seconds:g}-{config.max_seconds:g}s")


def make_corpus(config: PreprocessBenchConfig) -> tuple[Path, list[dict]]:
    """The largest corpus the run needs; smaller ones are its first clips (a clip depends on seed and index
    only, with no held-out share), so every system and scale sees the same files."""
    from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus

    count = config.synthetic_clips * config.copies
    folder = corpus_folder(config, count)
    rows = generate_corpus(SyntheticConfig(out=folder, num_videos=count, seed=config.seed, heldout_fraction=0.0,
                                           min_seconds=config.min_seconds, max_seconds=config.max_seconds,
                                           workers=os.cpu_count() or 1), progress=False)
    return folder, rows


def copy_clips(config: PreprocessBenchConfig, folder: Path) -> tuple[Path, list[dict]]:
    """The real clips of `config.clips`, copied `size * copies` times under `folder/copyK/` (each copy then has
    its own keys for ours and its own output folder for the reference; links would not do: preprocessing reads a
    file once however many names it has); rows as the synthetic corpus gives them
    (path relative to `folder`, speaker, duration_s), copy by copy, so the first `size` copies are the 1x corpus."""
    from pipelines.media import probe
    from pipelines.sources import VIDEO_EXTENSIONS

    root = Path(config.clips).resolve()
    clips = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not clips:
        raise ValueError(f"no video files under --clips {config.clips}")
    durations = {clip: probe(clip).duration_s for clip in clips}
    rows = []
    for copy in range(config.size * config.copies):
        for clip in clips:
            target = folder / f"copy{copy}" / clip.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(clip, target)
            rows.append({"path": str(target.relative_to(folder)), "speaker": clip.stem, "duration_s": durations[clip]})
    return folder, rows


def write_subset(folder: Path, rows: list[dict], name: str) -> Path:
    """A manifest of `rows` (path relative to the corpus, speaker) that both systems read their clips from."""
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"path": r["path"], "speaker": r["speaker"]}) + "\n" for r in rows))
    return path


def video_seconds(rows: list[dict]) -> float:
    return float(sum(r["duration_s"] for r in rows))


# --- measuring a process tree ----------------------------------------------------------------------------------

def read_processes() -> dict[int, tuple[int, int, int]]:
    """Every process on the machine: pid -> (parent pid, CPU ticks user + system, resident pages)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:  # exited between listing and reading
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # the command name may hold spaces and parentheses
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21]))
    return table


def descendants(root: int, table: dict[int, tuple[int, int, int]]) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, queue = [], [root] if root in table else []
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def process_name(pid: int) -> str | None:
    """Ray retitles its workers by what they host ("ray::MapWorker(MapBatches(FaceStage))"); others go by program
    name. None once the process is gone."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return None
    return command.split(" ")[0] if command.startswith("ray::") else os.path.basename(command)


def rss_by_name(pids: list[int], table: dict[int, tuple[int, int, int]], page: int) -> dict[str, float]:
    """Resident MB summed by process name (Ray names its workers by the stage they host), largest first."""
    totals: dict[str, float] = {}
    for pid in pids:
        name = process_name(pid)
        if name is not None:
            totals[name] = totals.get(name, 0.0) + table[pid][2] * page / 2 ** 20
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM, kept by the kernel: no sample can miss it while the
    process lives); 0 once it is gone."""
    return _proc_kib(f"/proc/{pid}/status", "VmHWM:") * 1024


def pss_bytes(pid: int) -> int:
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:") * 1024


def _proc_kib(path: str, key: str) -> int:
    """The kB figure of the line starting with `key` in a /proc file; 0 when the process (or the line) is gone."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Peak summed RSS (and PSS) and process count of a process tree, sampled from /proc in a thread."""

    def __init__(self, root: int, interval_s: float, pss_interval_s: float):
        super().__init__(daemon=True)
        self.root, self.interval_s, self.pss_interval_s = root, interval_s, pss_interval_s
        self.peak_rss = self.peak_pss = self.peak_processes = self.samples = 0
        self.peak_breakdown: dict[str, float] = {}  # MB by process name at the peak: which process grew
        self.worker_hwm: dict[int, int] = {}  # per Ray Data worker (actor) pid, its kernel-kept peak RSS, bytes
        self.cpu_ticks: dict[int, int] = {}  # per pid, the latest utime + stime seen
        # Per pid: its latest name, and the first and last sample (seconds from the start) at which it had spent
        # CPU since the sample before: when each stage's processes worked, i.e. whether the stages overlapped.
        self.names: dict[int, str] = {}
        self.active: dict[int, list[float]] = {}
        self._t0 = time.monotonic()
        self._finished = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def run(self):
        next_pss = 0.0
        while True:
            self.sample(with_pss=time.monotonic() >= next_pss)
            if time.monotonic() >= next_pss:
                next_pss = time.monotonic() + self.pss_interval_s
            if self._finished.wait(self.interval_s):
                return

    def sample(self, with_pss: bool) -> None:
        table = read_processes()
        tree = descendants(self.root, table)
        self.samples += 1
        self.peak_processes = max(self.peak_processes, len(tree))
        rss = sum(table[pid][2] for pid in tree) * self._page
        if rss > self.peak_rss:
            self.peak_rss, self.peak_breakdown = rss, rss_by_name(tree, table, self._page)
        now = time.monotonic() - self._t0
        for pid in tree:
            if table[pid][1] > self.cpu_ticks.get(pid, 0):
                self.active.setdefault(pid, [now, now])[1] = now
            self.cpu_ticks[pid] = max(self.cpu_ticks.get(pid, 0), table[pid][1])
            self.names[pid] = process_name(pid) or self.names.get(pid, "?")
            if "MapWorker" in self.names[pid]:
                self.worker_hwm[pid] = max(self.worker_hwm.get(pid, 0), peak_rss_bytes(pid))
        if with_pss:
            self.peak_pss = max(self.peak_pss, sum(pss_bytes(pid) for pid in tree))

    def stop(self) -> None:
        self._finished.set()
        self.join()

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")

    def busy_processes(self, min_cpu_s: float = 1.0) -> list[dict]:
        """Every process that spent at least `min_cpu_s`: name, CPU-s, and when it worked (seconds from the start
        of sampling), in order of its first work."""
        tick = os.sysconf("SC_CLK_TCK")
        rows = [{"name": self.names.get(pid, "?"), "cpu_s": round(ticks / tick, 2),
                 "active_s": [round(t, 1) for t in self.active.get(pid, [0.0, 0.0])]}
                for pid, ticks in self.cpu_ticks.items() if ticks / tick >= min_cpu_s]
        return sorted(rows, key=lambda row: row["active_s"][0])


def measure(spec: dict, config: PreprocessBenchConfig) -> dict:
    """Run one system in a subprocess (`child_main`) and return what it reported plus the tree's peaks."""
    with tempfile.TemporaryDirectory() as folder:
        spec_path, result_path = Path(folder) / "spec.json", Path(folder) / "result.json"
        spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        log_path = Path(folder) / "log.txt"
        with log_path.open("w") as log:  # Ray's start-up chatter would break up the table
            process = subprocess.Popen([sys.executable, "-c", "from bench.preprocess import child_main; child_main()",
                                        str(spec_path)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            sampler = TreeSampler(process.pid, config.sample_interval_s, config.pss_interval_s)
            sampler.start()
            code = process.wait()
            sampler.stop()
        if code != 0 or not result_path.exists():
            tail = log_path.read_text()[-4000:]
            raise RuntimeError(f"{spec['system']} run failed with exit code {code}; its output ends:\n{tail}")
        result = json.loads(result_path.read_text())
    result.update(peak_rss_bytes=sampler.peak_rss, peak_pss_bytes=sampler.peak_pss, load_average=os.getloadavg(),
                  peak_rss_mb_by_process=sampler.peak_breakdown, busy_processes=sampler.busy_processes(),
                  peak_processes=sampler.peak_processes, cpu_s=sampler.cpu_s - result["cpu_s_before_work"],
                  rss_samples=sampler.samples, worker_peak_rss_bytes=list(sampler.worker_hwm.values()))
    return result


def _spin(seconds: float, count) -> None:
    end, done = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        for _ in range(10_000):
            done += 1
    count.value = done


def parallel_capacity(processes: int, seconds: float) -> float:
    """How many times one CPU-bound process's work `processes` of them get done at once, now, from this session:
    the number of free cores, at most `processes`, on a quiet machine; less where other work (other sessions,
    under autogroup) takes the cores."""
    import multiprocessing

    def work(count: int) -> float:
        done = [multiprocessing.Value("d", 0.0) for _ in range(count)]
        spinners = [multiprocessing.Process(target=_spin, args=(seconds, value)) for value in done]
        for spinner in spinners:
            spinner.start()
        for spinner in spinners:
            spinner.join()
        return sum(value.value for value in done)

    return work(processes) / work(1)


# --- inside the measured subprocess ----------------------------------------------------------------------------

def become_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def reap_all(timeout_s: float = REAP_TIMEOUT_S) -> list[int]:
    """Wait for every child (Ray's processes, re-parented here while it shuts down), so none outlives the
    measurement. Children still alive after `timeout_s` are sent SIGTERM (they are this process's own) and
    waited for briefly; returns the pids that outlived even that."""
    deadline, terminated = time.monotonic() + timeout_s, False
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return []
        if pid:
            continue
        if time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        alive = descendants(os.getpid(), read_processes())[1:]
        if terminated:
            return alive
        for child in alive:
            try:
                os.kill(child, 15)
            except ProcessLookupError:
                pass
        deadline, terminated = time.monotonic() + 5.0, True


def cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_ours(spec: dict) -> dict:
    import ray

    from pipelines.faces.base import FaceConfig
    from pipelines.preprocess import PreprocessConfig, run

    faces = FaceConfig(aligner=spec["aligner"], face_weights=Path(spec["face_weights"]) if spec["face_weights"] else None,
                       device=spec["device"])
    config = PreprocessConfig(input=spec["input"], output=spec["output"], faces=faces, num_workers=spec["workers"],
                              fuse_stages=spec["fuse_stages"], face_workers=spec["face_workers"], progress=False)
    # Ray Data's per-stage stats, which preprocessing logs at debug level: each stage's busy time.
    stats = io.StringIO()
    handler = logging.StreamHandler(stats)
    logging.getLogger("pipelines.preprocess").addHandler(handler)
    logging.getLogger("pipelines.preprocess").setLevel(logging.DEBUG)
    if not spec["ray_cpus"]:
        return {"summary": run(config), "ray_data_stats": stats.getvalue()}
    # `run` uses a Ray instance that is already up, and leaves it to whoever started it.
    ray.init(num_cpus=spec["ray_cpus"], include_dashboard=False, log_to_driver=False)
    try:
        return {"summary": run(config), "ray_data_stats": stats.getvalue()}
    finally:
        ray.shutdown()


def run_reference(spec: dict) -> dict:
    from bench.baselines.wav2lip_preprocess import list_videos, preprocess_videos

    timings: dict[str, float] = {}
    results = preprocess_videos(list_videos(spec["input"]), Path(spec["output"]), timings=timings)
    return {"videos": [asdict(r) for r in results], "profile_cpu_s": timings}


def child_main() -> None:
    """Entry point of the measured subprocess: `python -c ... SPEC.json`; writes the spec's result file."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    subreaper = become_subreaper()
    # Each system's imports before the clock starts (and only its own, which its peak RSS then includes):
    # both are timed on their work, not on loading Python modules.
    if spec["system"] == "ours":
        import ray  # noqa: F401

        import pipelines.preprocess  # noqa: F401
        work = run_ours
    else:
        import bench.baselines.wav2lip_preprocess  # noqa: F401
        import pipelines.faces.dlib_aligner  # noqa: F401
        work = run_reference
    cpu_before, started = cpu_seconds(), time.perf_counter()
    report = work(spec)
    wall = time.perf_counter() - started
    leftover = reap_all() if subreaper else []
    report.update(wall_s=wall, cpu_s_before_work=cpu_before, cpu_s_rusage=cpu_seconds() - cpu_before,
                  subreaper=subreaper, leftover_processes=len(leftover))
    Path(spec["result"]).write_text(json.dumps(report))


# --- where the time goes ---------------------------------------------------------------------------------------

def profile_ours(manifest: Path, output: Path, config: PreprocessBenchConfig) -> dict[str, float]:
    """CPU seconds per stage of our pipeline, its stages run one after another in this process (no Ray), each
    row of one stage handed to the next as Ray Data would. What the measured run spends beyond their sum is
    Ray: start-up, scheduling, moving rows between processes. Model loading is left out of every stage."""
    from pipelines.audio import AudioConfig
    from pipelines.core.ray_session import size_thread_pools
    from pipelines.decode import DecodeStage
    from pipelines.faces.base import FaceConfig
    from pipelines.faces.stage import FaceStage
    from pipelines.preprocess import WORKER_CPUS, PreprocessConfig, source_rows
    from pipelines.samples import SampleStage
    from pipelines.shards.writer import PartWriter, pack, write_index
    from pipelines.sources import list_sources

    pc = PreprocessConfig(input=str(manifest), output=str(output), progress=False,
                          faces=FaceConfig(aligner=config.aligner, face_weights=config.face_weights, device=config.device))
    # Thread pools as a fused worker sizes its own: with torch's default two threads on two cores (spinning on each
    # other) the retinaface stage alone counted 1.38 CPU-s per video-s, where the whole measured run took 0.82.
    size_thread_pools(WORKER_CPUS)
    audio = AudioConfig()
    decode = DecodeStage(pc.decode, audio, pc.storage)
    stages = [("faces", FaceStage(pc.faces)),
              ("samples", SampleStage(audio, pc.samples)),
              ("write parts", PartWriter(pc.output, pc.storage))]
    cpu = dict.fromkeys(["decode", *(name for name, _ in stages), "pack + index"], 0.0)
    wall = dict(cpu)  # a GPU stage's time is wall time its CPU time does not show
    for source in source_rows(list_sources(pc.input, pc.storage), pc.val_fraction):
        rows = decode.decode_source(source)
        while True:
            start, started = time.process_time(), time.perf_counter()
            row = next(rows, None)
            cpu["decode"] += time.process_time() - start
            wall["decode"] += time.perf_counter() - started
            if row is None:
                break
            for name, stage in stages:
                start, started = time.process_time(), time.perf_counter()
                row = stage(row)
                cpu[name] += time.process_time() - start
                wall[name] += time.perf_counter() - started
    start, started = time.process_time(), time.perf_counter()
    pack(pc.output, pc.storage, pc.shards)
    write_index(pc.output, pc.storage)
    cpu["pack + index"] = time.process_time() - start
    wall["pack + index"] = time.perf_counter() - started
    return {**cpu, **{f"{name} (wall)": value for name, value in wall.items()}}


def format_profile(name: str, cpu: dict[str, float], seconds: float, measured_cpu_s: float | None) -> str:
    lines = [f"{name}: CPU-s (and wall s, where given) per video-s by step"]
    lines += [f"  {step:28} {value / seconds:6.3f}" for step, value in cpu.items()]
    if measured_cpu_s is not None:
        spent = sum(value for step, value in cpu.items() if not step.endswith("(wall)"))
        lines.append(f"  {'Ray + start-up (measured - sum)':28} {(measured_cpu_s - spent) / seconds:6.3f}")
    return "\n".join(lines)


# --- rows, ratios, report --------------------------------------------------------------------------------------

def bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def make_row(system: str, workers: int, scale: int, seconds: float, result: dict, written: int) -> dict:
    return {
        "system": system,
        "workers": workers,
        "scale": scale,
        "video_seconds": seconds,
        "wall_s": result["wall_s"],
        "video_s_per_wall_s": seconds / result["wall_s"],
        "cpu_s": result["cpu_s"],
        "cpu_s_rusage": result["cpu_s_rusage"],
        "cpu_s_per_video_s": result["cpu_s"] / seconds,
        "bytes": written,
        "gb_per_video_hour": written / seconds * 3600 / 1e9,
        "peak_rss_mb": result["peak_rss_bytes"] / 2 ** 20,
        "peak_pss_mb": result["peak_pss_bytes"] / 2 ** 20,
        "peak_processes": result["peak_processes"],
        "worker_peak_rss_mb": max(result["worker_peak_rss_bytes"], default=0) / 2 ** 20,
        "peak_rss_mb_by_process": result["peak_rss_mb_by_process"],
        "load_average": result["load_average"],  # 1, 5 and 15 minutes, as the run ended
        "busy_processes": result["busy_processes"],  # name, CPU-s and when each worked: which stages overlapped
        "ray_data_stats": result.get("ray_data_stats", ""),  # ours: each stage's tasks and busy time, Ray's words
    }


def run_system(system: str, workers: int, manifest: Path, scratch: Path,
               config: PreprocessBenchConfig) -> tuple[dict, int]:
    output = scratch / f"{system}-w{workers}-{manifest.stem}"
    shutil.rmtree(output, ignore_errors=True)  # ours resumes from an existing output: always start fresh
    spec = {"system": system, "input": str(manifest), "output": str(output), "workers": workers,
            "aligner": config.aligner, "face_weights": str(config.face_weights or ""), "device": config.device,
            "ray_cpus": config.ray_cpus, "fuse_stages": config.fuse_stages, "face_workers": config.face_workers}
    result = measure(spec, config)
    written = bytes_under(output)
    shutil.rmtree(output, ignore_errors=True)
    return result, written


def compare(rows: list[dict], memory_rows: list[dict]) -> dict:
    """Each goal's measured ratio and whether it is met; None where the run did not include what it needs."""
    ours = {r["workers"]: r for r in rows if r["system"] == "ours" and r["scale"] == 1}
    reference = next((r for r in rows if r["system"] == "reference"), None)
    best = ours[max(ours)] if ours else None
    ratios = {}
    if reference and best:
        ratios["throughput_vs_reference"] = best["video_s_per_wall_s"] / reference["video_s_per_wall_s"]
        ratios["throughput_1_worker_vs_reference"] = (ours[min(ours)]["video_s_per_wall_s"]
                                                      / reference["video_s_per_wall_s"])
        ratios["cpu_per_video_s_vs_reference"] = best["cpu_s_per_video_s"] / reference["cpu_s_per_video_s"]
        ratios["bytes_vs_reference"] = best["bytes"] / reference["bytes"]
    if 1 in ours and 2 in ours:
        ratios["scaling_2_vs_1"] = ours[2]["video_s_per_wall_s"] / ours[1]["video_s_per_wall_s"]
    capacities = [r["cpu_capacity"] for r in ours.values() if r.get("cpu_capacity") is not None]
    if capacities:  # what the machine offered the scaling runs: the scaling goal needs it near the worker count
        ratios[f"cpu_capacity_{max(ours)}_vs_1_min"] = min(capacities)
        ratios[f"cpu_capacity_{max(ours)}_vs_1_max"] = max(capacities)
    for workers in sorted(ours):
        if workers > 1 and 1 in ours:
            ratios[f"scaling_{workers}_vs_1"] = ours[workers]["video_s_per_wall_s"] / ours[1]["video_s_per_wall_s"]
    if len(memory_rows) == 2:
        ratios["memory_4x_vs_1x"] = memory_rows[1]["peak_rss_mb"] / memory_rows[0]["peak_rss_mb"]
        ratios["memory_pss_4x_vs_1x"] = memory_rows[1]["peak_pss_mb"] / memory_rows[0]["peak_pss_mb"]
    goals = {}
    for name, target in GOALS.items():
        if name in ratios:
            at_most = name in AT_MOST
            goals[name] = {"measured": ratios[name], "goal": target,
                           "met": ratios[name] <= target if at_most else ratios[name] >= target}
    return {"ratios": ratios, "goals": goals}


def machine() -> dict:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    memory_kb = 0
    try:
        memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        autogroup = None
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "memory_gib": round(memory_kb / 2 ** 20, 1),
            "sched_autogroup": autogroup,
            "platform": platform.platform(), "python": platform.python_version(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_average": os.getloadavg()}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'system':10} {'workers':>7} {'scale':>5} {'video-s':>8} {'wall s':>7} {'video-s/s':>9} "
             f"{'CPU-s/video-s':>13} {'GB/video-h':>10} {'peak RSS MB':>11} {'peak PSS MB':>11} {'load':>5}"]
    for r in rows:
        lines.append(f"{r['system']:10} {r['workers']:7d} {str(r['scale']) + 'x':>5} {r['video_seconds']:8.1f} "
                     f"{r['wall_s']:7.1f} {r['video_s_per_wall_s']:9.2f} {r['cpu_s_per_video_s']:13.2f} "
                     f"{r['gb_per_video_hour']:10.3f} {r['peak_rss_mb']:11.0f} {r['peak_pss_mb']:11.0f} "
                     f"{r['load_average'][0]:5.1f}")
    return "\n".join(lines)


def format_goals(comparison: dict) -> str:
    lines = []
    for name, goal in comparison["goals"].items():
        sign = "<=" if name in AT_MOST else ">="
        lines.append(f"{name:34} {goal['measured']:7.2f}  (goal {sign} {goal['goal']:g}: "
                     f"{'met' if goal['met'] else 'MISSED'})")
    extra = {k: v for k, v in comparison["ratios"].items() if k not in comparison["goals"]}
    lines += [f"{name:34} {value:7.2f}" for name, value in extra.items()]
    return "\n".join(lines)


def run_long_inputs(config: PreprocessBenchConfig) -> dict:
    """Ours, one worker, on one long input per `long_seconds`: the largest Ray worker's peak RSS of each, and
    the longest input's against the shortest (goal <= 1.2: memory that does not grow with the input's length)."""
    from bench.long_input import write_long_input

    load_before = os.getloadavg()
    folder, corpus_rows = make_corpus(replace(config, memory=False))  # --size * --videos-per-size clips
    clips = [folder / row["path"] for row in corpus_rows]
    rows = []
    with tempfile.TemporaryDirectory(dir=config.scratch) as scratch:
        scratch = Path(scratch)
        for seconds in config.long_seconds:
            path = scratch / f"long_{seconds:g}s.mp4"
            length = write_long_input(path, clips, seconds, size=config.long_size, face_every=config.long_face_every)
            manifest = write_subset(scratch, [{"path": path.name, "speaker": "long"}], f"long_{seconds:g}s")
            result, written = run_system("ours", 1, manifest, scratch, config)
            rows.append({**make_row("ours", 1, 1, length, result, written), "input_bytes": path.stat().st_size,
                         "summary": result["summary"]})
            path.unlink()
    ratios = {"worker_memory_longest_vs_shortest": rows[-1]["worker_peak_rss_mb"] / rows[0]["worker_peak_rss_mb"],
              "tree_memory_longest_vs_shortest": rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]}
    goals = {name: {"measured": ratios[name], "goal": target, "met": ratios[name] <= target}
             for name, target in LONG_INPUT_GOAL.items()}
    return {"bench": "preprocess_long_inputs", "command": " ".join(["python -m bench.preprocess", *sys.argv[1:]]),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "corpus": str(folder), "clips": len(clips), "machine": {**machine(), "load_average_before": load_before},
            "rows": rows, "ratios": ratios, "goals": goals,
            "worker_rss_method": "VmHWM of every Ray Data worker process (/proc/PID/status), read every "
                                 f"{config.sample_interval_s:g} s by the bench's sampling thread; the largest"}


def format_long_inputs(report: dict) -> str:
    lines = [f"{'video-s':>8} {'input MB':>8} {'wall s':>7} {'CPU-s/video-s':>13} {'worker peak RSS MB':>18} "
             f"{'tree peak RSS MB':>16} {'segments':>8}"]
    for r in report["rows"]:
        lines.append(f"{r['video_seconds']:8.0f} {r['input_bytes'] / 1e6:8.1f} {r['wall_s']:7.1f} "
                     f"{r['cpu_s_per_video_s']:13.3f} {r['worker_peak_rss_mb']:18.0f} {r['peak_rss_mb']:16.0f} "
                     f"{r['summary']['segments']:8d}")
    return "\n".join(lines) + "\n\n" + format_goals(report)


def run_bench(config: PreprocessBenchConfig) -> dict:
    load_before = os.getloadavg()
    rows, memory_rows, profile = [], [], {}
    with tempfile.TemporaryDirectory(dir=config.scratch) as scratch:
        scratch = Path(scratch)
        if config.clips is None:
            folder, all_rows = make_corpus(config)
            base_rows = all_rows[:config.synthetic_clips]
        else:
            folder, all_rows = copy_clips(config, scratch / "clips")
            base_rows = all_rows[:len(all_rows) // config.copies]
        base = write_subset(folder, base_rows, f"bench_{len(base_rows)}")
        seconds = video_seconds(base_rows)
        for workers in config.workers:
            most = max(config.workers)
            capacity = parallel_capacity(most, config.capacity_s) if config.capacity_s and most > 1 else None
            result, written = run_system("ours", workers, base, scratch, config)
            rows.append(make_row("ours", workers, 1, seconds, result, written))
            rows[-1]["cpu_capacity"] = capacity  # what `most` spinning processes got done against one, just before
        if config.baseline:
            result, written = run_system("reference", 1, base, scratch, config)
            rows.append(make_row("reference", 1, 1, seconds, result, written))
            rows[-1]["face_jpegs"] = sum(v["faces"] for v in result["videos"])
            rows[-1]["frames"] = sum(v["frames"] for v in result["videos"])
            profile["reference"] = result["profile_cpu_s"]
        if config.memory:
            workers = max(config.workers)
            big = write_subset(folder, all_rows, f"bench_{len(all_rows)}")
            result, written = run_system("ours", workers, big, scratch, config)
            memory_rows = [next(r for r in rows if r["system"] == "ours" and r["workers"] == workers),
                           make_row("ours", workers, config.memory_scale, video_seconds(all_rows), result, written)]
        if config.profile:
            profile["ours"] = profile_ours(base, scratch / "profile", config)
    comparison = compare(rows, memory_rows)
    return {"bench": "preprocess", "command": " ".join(["python -m bench.preprocess", *sys.argv[1:]]),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "corpus": str(config.clips or folder), "corpus_kind": "synthetic" if config.clips is None else "real",
            "clips": len(base_rows), "machine": {**machine(), "load_average_before": load_before},
            "rows": rows, "memory": memory_rows, "profile_cpu_s": profile, **comparison}


def main(argv: list[str] | None = None) -> int:
    from bench.report import parse_bench_config

    config = parse_bench_config(PreprocessBenchConfig, __doc__.split("\n")[0], argv)
    if config is None:
        return 2
    try:
        report = run_long_inputs(config) if config.long_seconds else run_bench(config)
    except ValueError as error:  # e.g. --clips names a folder without videos
        print(f"error: {error}", file=sys.stderr)
        return 2
    if config.long_seconds:
        print(f"{report['machine']['cpu_count']} CPUs, load average {report['machine']['load_average_before'][0]:.1f} "
              f"at the start, {report['machine']['load_average'][0]:.1f} at the end; {report['worker_rss_method']}")
        print(format_long_inputs(report))
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(json.dumps(report, indent=1))
        print(f"written {config.out}")
        return 0
    m = report["machine"]
    print(f"{report['clips']} {report['corpus_kind']} clips, {report['rows'][0]['video_seconds']:.1f} s of video; "
          f"{m['cpu_count']} CPUs ({m['cpu_model']}), load average {m['load_average_before'][0]:.1f} at the start, "
          f"{m['load_average'][0]:.1f} at the end")
    print(format_table(report["rows"]))
    if report["memory"]:
        print(f"\nmemory (ours, same workers, corpus at 1x and {config.memory_scale}x):")
        print(format_table(report["memory"]))
    seconds = report["rows"][0]["video_seconds"]
    for name, cpu in report["profile_cpu_s"].items():
        measured = [r["cpu_s"] for r in report["rows"] if r["system"] == name]
        print("\n" + format_profile(name, cpu, seconds, measured[0] if name == "ours" and measured else None))
    print("\n" + format_goals(report))
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=1))
    print(f"written {config.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
