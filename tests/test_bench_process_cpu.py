"""bench.process_cpu: a command's CPU time by kind of process."""

import json
import sys

from bench.process_cpu import cpu_by_kind, format_table, main, process_kind

NAMES = {101: "python3", 102: "ray::MapWorker(MapBatches(DecodePool)).submit",
         105: "ray::MapWorker(MapBatches(DecodePool))", 104: "ray::MapWorker(MapBatches(FacePool)).submit",
         103: "raylet"}
TICKS = {101: 700, 102: 4000, 105: 3000, 104: 2500, 103: 1500}  # at 100 ticks per second


def test_a_ray_worker_is_its_actor_whatever_task_it_runs():
    assert process_kind("ray::MapWorker(MapBatches(DecodePool)).submit") == "ray::MapWorker(MapBatches(DecodePool))"
    assert process_kind("ray::MapWorker(MapBatches(DecodePool)).__init__") == "ray::MapWorker(MapBatches(DecodePool))"
    assert process_kind("ray::IDLE") == "ray::IDLE"
    assert process_kind("raylet") == "raylet"


def test_cpu_time_is_added_up_by_kind():
    totals = cpu_by_kind(NAMES, TICKS, 100)
    assert totals["ray::MapWorker(MapBatches(DecodePool))"] == (2, 70)  # two decoders, whatever task each ran
    assert totals["ray::MapWorker(MapBatches(FacePool))"] == (1, 25)
    assert totals["raylet"] == (1, 15)
    assert totals["python3"] == (1, 7)
    table = format_table(totals)
    assert table.splitlines()[1].split()[:3] == ["70", "59.8%", "2"]  # most first, share of the 117 CPU-s
    assert table.splitlines()[-1].split() == ["117", "5", "all"]


def test_the_command_runs_under_the_sampler_and_its_status_is_kept(tmp_path, capsys):
    spin = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass"
    out = tmp_path / "cpu.json"
    assert main(["--json", str(out), "--interval-s", "0.1", "--", sys.executable, "-c", spin]) == 0
    assert "all" in capsys.readouterr().out
    written = json.loads(out.read_text())
    python = next(kind for kind in written if kind.startswith("python"))
    assert written[python]["processes"] == 1 and written[python]["cpu_s"] >= 0.4
    assert main(["--", sys.executable, "-c", "raise SystemExit(3)"]) == 3
