"""A real S3-compatible server on loopback for tests: moto's standalone server in a subprocess.

Import the fixture where tests need it (a conftest or a test module):

    from s3_server import make_bucket, s3_server  # noqa: F401

The server runs once per test session; tests share it, so each should create its own bucket
(:func:`make_bucket` with a unique name) rather than assume an empty server.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

__all__ = ["make_bucket", "s3_server"]

START_TIMEOUT_S = 30.0  # it answers in about 0.6 s on a 2-core machine; a loaded CI box may need far more
# Dummy credentials: moto accepts any, and setting them keeps the AWS SDK from searching ~/.aws and the
# EC2 metadata service (which, off EC2, costs a timeout per filesystem created).
FAKE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL ("http://127.0.0.1:PORT") of a moto S3 server that lives for the test session."""
    missing = [name for name in ("moto", "flask", "flask_cors") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"moto's S3 server needs moto[server] ({', '.join(missing)} not installed)")
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in FAKE_AWS_ENVIRONMENT.items():
            patch.setenv(name, value)
        # The log goes to a file, not a pipe: moto logs every request, and a pipe nobody reads fills up
        # and blocks the server mid-test.
        with open(log_path, "wb") as log:
            process, endpoint = _start(log)
        try:
            yield endpoint
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def make_bucket(endpoint: str, name: str) -> None:
    """Create bucket `name` on the server at `endpoint` (credentials from the environment)."""
    import pyarrow.fs as pafs

    parts = urlsplit(endpoint)
    fs = pafs.S3FileSystem(endpoint_override=parts.netloc, scheme=parts.scheme, allow_bucket_creation=True)
    fs.create_dir(name)


def _start(log) -> tuple[subprocess.Popen, str]:
    # `python -m moto.server` is the `moto_server` console script, found through this interpreter rather
    # than PATH, which does not include the virtualenv when pytest runs as .venv/bin/python -m pytest.
    port = _free_port()
    command = [sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(process, endpoint, log.name)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, endpoint


def _free_port() -> int:
    # The port is released before moto binds it; another process could take it in between, which the
    # readiness check below would then report as an exited server.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_answering(process: subprocess.Popen, endpoint: str, log_name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {process.returncode}; see {log_name}")
        try:
            with urllib.request.urlopen(endpoint + "/", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer, even an error status, means it is serving
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"moto_server did not answer at {endpoint} within {START_TIMEOUT_S:.0f} s; see {log_name}")
