"""Golden transcripts (tests/golden/*.jsonl) pin protocol v1 as clients see it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ujson

from tests.integration.test_ws_basic import publish
from tests.support.wsclient import Client, connect

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
PLACEHOLDERS = {"id": "<id>", "connection_id": "<connection_id>", "ts": "<ts>"}


def normalize(frame: dict[str, Any]) -> dict[str, Any]:
    return {k: (PLACEHOLDERS[k] if k in PLACEHOLDERS and k in frame and frame["type"] in ("event", "welcome")
                else v) for k, v in frame.items()}


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.jsonl")), ids=lambda p: p.stem)
@pytest.mark.gen_test(timeout=20)
async def test_transcript(path: Path, ws_url: str, http_client: Any, base_url: str, token: Any) -> None:
    client: Client | None = None
    text = path.read_text()
    # transcripts written before notifications were served list none of their traffic
    # (unread_count frames, notification.* events): it is skipped there; a transcript
    # that names notifications sees every frame
    every_frame = "unread_count" in text
    for number, line in enumerate(text.splitlines(), 1):
        step = ujson.loads(line)
        where = f"{path.name}:{number}"
        if "connect" in step:
            user = step["connect"]["user"]
            client = await connect(ws_url, token(user, **step["connect"].get("claims", {})) if user else None,
                                   welcome=False)
        elif "send" in step:
            assert client is not None
            await client.send(step["send"])
        elif "send_raw" in step:
            assert client is not None
            await client.send(step["send_raw"])
        elif "publish" in step or "broadcast" in step:
            path_ = "/api/v1/publish" if "publish" in step else "/api/v1/broadcast"
            response = await publish(http_client, base_url, step.get("publish") or step["broadcast"], path=path_)
            assert response.code == 200, (where, response.body)
        elif "recv" in step:
            assert client is not None
            frame = await (client.recv_any() if every_frame else client.recv())
            while not every_frame and frame is not None and str(frame.get("event")).startswith("notification."):
                frame = await client.recv()
            assert frame is not None, f"{where}: closed ({client.close_code})"
            assert normalize(frame) == step["recv"], where
        elif "closed" in step:
            assert client is not None
            assert await client.closed() == step["closed"], where
        else:
            raise AssertionError(f"{where}: unknown step {step}")
    if client is not None:
        client.close()
