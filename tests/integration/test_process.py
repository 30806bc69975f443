"""The server as a real process: start-up refusal, --dev, SIGTERM, logs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import Any

import pytest
import ujson

from renum_rt.auth import issue_token
from tests.support.server_process import ROOT, ServerProcess, free_port
from tests.support.wsclient import connect

SECRET = "process-secret-" + "z" * 32
ENV = {"RENUM_RT_JWT_SECRET": SECRET, "RENUM_RT_API_KEY": "proc-key"}


def test_start_without_a_key_is_refused_with_a_clear_message() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENUM_RT_")}
    result = subprocess.run([sys.executable, "server.py", "--port", str(free_port())], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "RENUM_RT_JWT_SECRET" in result.stderr and "--dev" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_is_refused_naming_it() -> None:
    result = subprocess.run([sys.executable, "server.py", "--port", str(free_port())], cwd=ROOT,
                            env={**os.environ, **ENV, "RENUM_RT_IDLE_TIMEOUT": "soon"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "idle_timeout" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.gen_test(timeout=30)
async def test_dev_mode_newcomer_flow(http_client: Any) -> None:
    """What the README promises: start with --dev, connect with the printed token,
    publish with the printed key, receive the execution.status event."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENUM_RT_")}
    server = ServerProcess({}, args=("--dev",))
    server.env = env  # no RENUM_RT_* from the outer environment: --dev must make its own keys
    server.start()
    try:
        out = server.log()
        key = re.search(r"API key:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
        user_token = re.search(r"user token:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
        client = await connect(server.ws_url, user_token)
        data = {"execution_id": "e1", "team_id": "dev-team", "status": "running", "progress": 40}
        response = await http_client.fetch(server.url + "/api/v1/publish", method="POST",
                                           headers={"Authorization": f"Bearer {key}",
                                                    "Content-Type": "application/json"},
                                           body=ujson.dumps({"users": ["dev-user"], "event": "execution.status",
                                                             "data": data}))
        assert response.code == 200
        frame = await client.recv_type("event")
        assert frame["data"] == data
        client.close()
    finally:
        server.stop()


@pytest.mark.gen_test(timeout=30)
async def test_sigterm_closes_connections_with_1012_then_exits() -> None:
    server = ServerProcess(ENV).start()
    try:
        client = await connect(server.ws_url, issue_token(SECRET, "u1"))
        server.signal(signal.SIGTERM)
        assert await client.closed(timeout=10) == 1012
        assert server.proc is not None and server.proc.wait(10) == 0
    finally:
        server.stop()


@pytest.mark.gen_test(timeout=30)
async def test_logs_are_json_lines_without_tokens_and_debug_shows_frames(http_client: Any) -> None:
    server = ServerProcess({**ENV, "RENUM_RT_LOG_LEVEL": "debug"}).start()
    token = issue_token(SECRET, "logged-user")
    try:
        client = await connect(server.ws_url, token)
        await client.request({"type": "refresh", "token": token, "ref": "r1"})
        await client.request({"type": "ping", "ref": "p1"})
        await client.send("{broken")
        await client.recv()
        await http_client.fetch(server.url + "/api/v1/publish", method="POST", raise_error=False,
                                headers={"Authorization": "Bearer proc-key", "Content-Type": "application/json"},
                                body=ujson.dumps({"users": ["logged-user"], "event": "x.y", "data": {}}))
        await client.recv_type("event")
        client.close()
        await client.closed()
    finally:
        server.stop()
    log = server.log()
    lines = [ujson.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "msg"} <= set(line) for line in lines)
    assert token not in log and "proc-key" not in log and SECRET not in log
    frames_in = [line for line in lines if line["msg"] == "frame in"]
    assert any('"ping"' in line["frame"] and line["conn"] and line["user"] == "logged-user" for line in frames_in)
    assert any("[redacted]" in line["frame"] for line in frames_in)
    assert any(line["msg"] == "frame out" and line["size"] > 0 for line in lines)
    assert any(line["msg"] == "connect" and line["user"] == "logged-user" for line in lines)
    assert any(line["msg"] == "disconnect" and "code" in line for line in lines)
    assert any(line["msg"] == "client error" and line["code"] == "bad_request" for line in lines)
    assert any(line["msg"] == "publish" for line in lines)
