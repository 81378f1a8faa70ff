"""bench.stack_profile: py-spy's sampled stacks summed by preprocessing stage and function."""

import json

import pytest

from bench.stack_profile import main, parse_line, summarize

# Lines as `py-spy record --subprocesses --format raw` writes them: the process chain (command lines that may hold
# ';' and '"'), the thread, the frames outermost first, the count of samples.
DRIVER = 'process 10:"python3 -c import sys; from pipelines.preprocess import main; sys.exit(main())"'
RAYLET = 'process 11:"raylet --labels={"ray.io/accelerator-type": "H200"};--head"'
WORKER = 'process 12:"python3 ray/_private/workers/default_worker.py --node-ip-address=1.2.3.4"'
WORKER_BOTTOM = "<module> (ray/_private/workers/default_worker.py:323);Worker.main_loop (ray/_private/worker.py:1069)"
THREAD = 'thread (0x7F01): "MainThread"'
LINES = [
    f"{DRIVER};{RAYLET};{WORKER};{THREAD};{WORKER_BOTTOM};FusedStages.__call__ (pipelines/preprocess.py:170);"
    "FaceStage.align (pipelines/faces/stage.py:90);MobileNet025.forward (pipelines/faces/retinaface_net.py:60);"
    "Conv2d._conv_forward (torch/nn/modules/conv.py:548) 30\n",
    f"{DRIVER};{RAYLET};{WORKER};{THREAD};{WORKER_BOTTOM};DecodeStage.decode_source (pipelines/decode.py:250);"
    "iter_pictures (pipelines/media.py:136) 12\n",
    f"{DRIVER};{RAYLET};{WORKER};{THREAD};{WORKER_BOTTOM};SampleStage.__call__ (pipelines/samples.py:65);"
    "repeating_background (pipelines/audio.py:190);sort (numpy/_core/fromnumeric.py:1100) 8\n",
    f"{DRIVER};{RAYLET};{WORKER};{THREAD};{WORKER_BOTTOM};PartWriter.__call__ (pipelines/shards/writer.py:80) 2\n",
    f"{DRIVER};{RAYLET};{WORKER};{THREAD};{WORKER_BOTTOM} 50\n",
    f"{DRIVER};{THREAD};<module> (<string>:1);_process (pipelines/preprocess.py:318);"
    "OpState.get_output_blocking (ray/data/_internal/execution/streaming_executor_state.py:400) 4\n",
    "a fragment of a command line that held a newline\n",
]


def test_a_line_keeps_only_its_frames_whatever_the_command_lines_hold():
    frames, count = parse_line(LINES[0])
    assert count == 30 and frames[0].startswith("<module> (ray/_private/workers/default_worker.py")
    assert frames[-1] == "Conv2d._conv_forward (torch/nn/modules/conv.py:548)" and len(frames) == 6
    assert parse_line(LINES[-1]) is None


def test_samples_are_summed_by_stage_then_by_function():
    summary = summarize(LINES, rate=10)
    assert {stage: found["seconds"] for stage, found in summary.items()} == {
        "ray worker, no stage on the stack": 5.0, "faces": 3.0, "decode": 1.2, "samples": 1.0,
        "driver and Ray's daemons": 0.4}
    assert list(summary)[0] == "ray worker, no stage on the stack"  # most first
    faces = summary["faces"]
    assert faces["leaves"] == {"Conv2d._conv_forward (torch/nn/modules/conv.py)": 3.0}
    assert faces["our_code"] == {"MobileNet025.forward (pipelines/faces/retinaface_net.py)": 3.0}
    assert summary["samples"]["our_code"] == {"repeating_background (pipelines/audio.py)": 0.8,
                                              "PartWriter.__call__ (pipelines/shards/writer.py)": 0.2}
    assert summary["driver and Ray's daemons"]["our_code"] == {"_process (pipelines/preprocess.py)": 0.4}


def test_the_command_prints_the_summary_and_writes_it(tmp_path, capsys):
    stacks, out = tmp_path / "stacks.txt", tmp_path / "summary.json"
    stacks.write_text("".join(LINES))
    assert main([str(stacks), "--rate", "10", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "faces: 3.0 s awake" in printed and "MobileNet025.forward" in printed
    assert json.loads(out.read_text())["decode"]["seconds"] == 1.2
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.txt")])
    assert "py-spy record" in capsys.readouterr().err
