"""bench.process_cpu: a run's CPU time by kind of process, from ps samples."""

import json

from bench.process_cpu import cpu_by_kind, format_table, main, process_kind

SAMPLES = """\
  101     5 /usr/bin/python3 -c import logging, sys
  102     0 ray::IDLE
  103   900 /tmp/site/ray/core/src/ray/raylet/raylet --node-ip-address=10.0.0.1
--
  101     9 /usr/bin/python3 -c import logging, sys
  102     3 ray::MapWorker(MapBatches(DecodePool)).__init__
  104     2 ray::MapWorker(MapBatches(FacePool)).submit
  103   910 /tmp/site/ray/core/src/ray/raylet/raylet --node-ip-address=10.0.0.1
--
  101    12 /usr/bin/python3 -c import logging, sys
  102    40 ray::MapWorker(MapBatches(DecodePool)).submit
  105    30 ray::MapWorker(MapBatches(DecodePool))
  104    25 [ray::MapWorker(]
  103   915 /tmp/site/ray/core/src/ray/raylet/raylet --node-ip-address=10.0.0.1
--
"""


def test_a_ray_worker_is_its_actor_whatever_task_it_runs():
    assert process_kind("ray::MapWorker(MapBatches(DecodePool)).submit") == "ray::MapWorker(MapBatches(DecodePool))"
    assert process_kind("ray::MapWorker(MapBatches(DecodePool)).__init__") == "ray::MapWorker(MapBatches(DecodePool))"
    assert process_kind("ray::IDLE") == "ray::IDLE"
    assert process_kind("/usr/bin/python3 -m pipelines.preprocess --input x") == "python3 -m pipelines.preprocess"
    assert process_kind("/tmp/site/ray/core/src/ray/raylet/raylet --port=1") == "raylet"


def test_cpu_time_is_what_each_process_spent_during_the_samples():
    totals = cpu_by_kind(SAMPLES.splitlines())
    # 102 was there at 0 and spent 40; 105 appeared after the first sample, at 30: all of it counts
    assert totals["ray::MapWorker(MapBatches(DecodePool))"] == (2, 70)
    assert totals["ray::MapWorker(MapBatches(FacePool))"] == (1, 25)  # appeared later too; ending, still a FacePool
    assert totals["raylet"] == (1, 15)  # there before the run: only what it spent since
    assert totals["python3 -c import"] == (1, 7)
    table = format_table(totals)
    assert table.splitlines()[1].split()[:3] == ["70", "59.8%", "2"]  # most first, share of the 117 CPU-s
    assert table.splitlines()[-1].split() == ["117", "5", "all"]


def test_the_command_prints_the_table(tmp_path, capsys):
    samples = tmp_path / "ps.txt"
    samples.write_text(SAMPLES)
    assert main([str(samples), "--json", str(tmp_path / "cpu.json")]) == 0
    assert "ray::MapWorker(MapBatches(FacePool))" in capsys.readouterr().out
    written = json.loads((tmp_path / "cpu.json").read_text())
    assert next(iter(written)) == "ray::MapWorker(MapBatches(DecodePool))"  # most CPU first
    assert written["raylet"] == {"processes": 1, "cpu_s": 15}
