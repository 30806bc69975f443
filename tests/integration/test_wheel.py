"""The wheel works away from the checkout: built from this source tree, installed with its
dependencies in fresh virtual environments (no system site-packages), run from a directory
that is not the checkout and with no PYTHONPATH, so nothing can come from the source tree.

- The wheel holds every file of the package, everything under ``static/``, the default config,
  and no top-level module but ``renum_rt``.
- With the ``server`` extra, ``python -m renum_rt --dev`` serves ``/admin``, ``/static/``, the
  OpenAPI document and ``/healthz`` from the installed files, the SDK of a base install (no
  extra) publishes to it and receives the event, and SIGTERM stops it.
- Without the extra, the SDK imports, and ``renum-rt`` says what to install (exit 2).

The venvs are made without pip and filled by this interpreter's pip (``pip --python``): the
same install, seconds faster. Dependencies come from the package index; pip's cache makes
that quick after the first run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from renum_rt import __version__
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("jwt", "cryptography", "redis", "prometheus_client")
#: what a build does not need and must not see: VCS data, caches, earlier build output
NOT_SOURCE = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "node_modules")
#: files of kinds static/ does not hold yet, one in a sub-directory, added to the copy that is built
PROBES = ("demo/wheel-probe.html", "wheel-probe.d.ts")
ENV = {k: v for k, v in os.environ.items()
       if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("RENUM_RT_")}

#: where the package comes from, whether its default config is there, whether a module `server` is
WHERE_FROM = ("import importlib.util, renum_rt, renum_rt.config as c; "
              "print(renum_rt.__file__, c.DEFAULT_CONFIG.is_file(), importlib.util.find_spec('server'))")
SDK_ROUND_TRIP = """
import asyncio, sys
from renum_rt.client import AsyncPublisher, RealtimeClient

async def main(base: str, key: str, token: str) -> None:
    client = RealtimeClient(base.replace("http://", "ws://") + "/ws", lambda: token)
    await client.connect()
    await AsyncPublisher(base, key).publish("wheel.check", {"n": 1}, users=["dev-user"])
    async for event in client.events():
        print(event.event, event.data["n"])
        break
    await client.close()

asyncio.run(asyncio.wait_for(main(*sys.argv[1:]), 20))
print(sorted(set(sys.modules) & set(SERVER_ONLY)))
""".replace("SERVER_ONLY", repr(SERVER_ONLY))


class Build(NamedTuple):
    source: Path
    wheel: Path


def check(args: list[str | Path], cwd: Path, timeout: float = 300) -> str:
    """Run ``args``; return its stdout, or fail with everything it printed."""
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def make_venv(where: Path, requirement: str) -> Path:
    """A fresh venv with ``requirement`` installed from the package index; its bin directory."""
    check([sys.executable, "-m", "venv", "--without-pip", where], cwd=where.parent)
    python = where / "bin" / "python"
    check([sys.executable, "-m", "pip", "--python", python, "install", "-q", requirement], cwd=where.parent)
    return python.parent


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """The wheel, built from a copy of the source tree: a build writes ``build/`` and
    ``*.egg-info`` into its source, and the checkout is shared with other work."""
    tmp = tmp_path_factory.mktemp("build")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    for probe in PROBES:
        (source / "static" / probe).parent.mkdir(parents=True, exist_ok=True)
        (source / "static" / probe).write_text("probe\n", encoding="utf-8")
    check([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", source], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("renum_rt-*.whl")
    return Build(source, wheel)


@pytest.fixture(scope="module")
def sdk_bin(build: Build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the wheel alone: the SDK install, without the server extra."""
    return make_venv(tmp_path_factory.mktemp("sdk") / "venv", str(build.wheel))


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory that is not the checkout (nothing importable from it)."""
    assert ROOT not in tmp_path.parents
    return tmp_path


def test_wheel_holds_modules_static_files_and_config_and_no_server_module(build: Build) -> None:
    names = set(zipfile.ZipFile(build.wheel).namelist())
    package = {"renum_rt/" + p.relative_to(build.source / "renum_rt").as_posix()
               for p in (build.source / "renum_rt").rglob("*") if p.is_file()}
    assert "renum_rt/protocol/schemas/openapi.json" in package
    assert package - names == set(), "a directory is missing from setup.cfg's packages or package_data"
    static = {"renum_rt/_static/" + p.relative_to(build.source / "static").as_posix()
              for p in (build.source / "static").rglob("*") if p.is_file()}
    assert {"renum_rt/_static/admin.html", *("renum_rt/_static/" + probe for probe in PROBES)} <= static
    assert static - names == set()
    assert "renum_rt/_config/renum-rt.toml" in names
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"renum_rt"}
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "renum-rt = renum_rt.cli:main" in zipfile.ZipFile(build.wheel).read(entry_points).decode()


@pytest.fixture
def server_bin(build: Build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_venv(tmp_path_factory.mktemp("server") / "venv", f"{build.wheel}[server]")


@pytest.fixture
def dev_server(server_bin: Path, elsewhere: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """``python -m renum_rt --dev`` of the server venv; its process, base URL and log file."""
    port, log = free_port(), elsewhere / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(server_bin / "python"), "-m", "renum_rt", "--dev", "--port", str(port)],
                                cwd=elsewhere, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def wait_healthy(proc: subprocess.Popen[bytes], base: str, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if get(base + "/healthz")[0] == 200:
                return
        except OSError:  # not listening yet (HTTPError is an OSError too)
            pass
        time.sleep(0.05)
    raise AssertionError(f"/healthz not 200 within {timeout} s:\n{log.read_text()}")


def test_server_from_the_wheel_serves_admin_static_and_health_and_stops_on_sigterm(
        server_bin: Path, sdk_bin: Path, dev_server: tuple[subprocess.Popen[bytes], str, Path],
        elsewhere: Path) -> None:
    where = check([server_bin / "python", "-c", WHERE_FROM], cwd=elsewhere).split()
    assert Path(where[0]).is_relative_to(server_bin.parent) and where[1:] == ["True", "None"]
    assert check([server_bin / "renum-rt", "--version"], cwd=elsewhere).strip() == f"renum-rt {__version__}"

    proc, base, log = dev_server
    wait_healthy(proc, base, log)
    status, kind, page = get(base + "/admin")
    assert status == 200 and kind.startswith("text/html") and b"<html" in page
    assert get(base + "/static/admin.html")[::2] == (200, page)
    assert get(base + "/api/v1/openapi.json")[0] == 200

    out = log.read_text()
    key = re.search(r"API key:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    token = re.search(r"user token:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    received = check([sdk_bin / "python", "-c", SDK_ROUND_TRIP, base, key, token], cwd=elsewhere, timeout=60)
    assert received.splitlines() == ["wheel.check 1", "[]"]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def test_sdk_alone_imports_and_the_server_command_says_what_to_install(sdk_bin: Path, elsewhere: Path) -> None:
    code = ("import importlib.util\n"
            "from renum_rt.client import AsyncPublisher, Publisher, RealtimeClient\n"
            f"print([m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m)])\n")
    assert check([sdk_bin / "python", "-c", code], cwd=elsewhere).strip() == "[]"
    for command in ([sdk_bin / "renum-rt"], [sdk_bin / "python", "-m", "renum_rt", "--dev"]):
        result = subprocess.run([str(c) for c in command], cwd=elsewhere, env=ENV, capture_output=True,
                                text=True, timeout=30, check=False)
        assert result.returncode == 2, result
        assert "pip install 'renum-rt[server]'" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
