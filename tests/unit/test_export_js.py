"""The browser client's code table (static/renum-rt-codes.js) is what
``python -m renum_rt.protocol.export_js`` writes from codes.json, the close-code table of
docs/client.md says what codes.json says, and static/package.json has the server's version."""

from __future__ import annotations

import json
import re
from pathlib import Path

import renum_rt
from renum_rt.protocol import export_js
from renum_rt.protocol.errors import TABLE

ROOT = Path(__file__).resolve().parents[2]


def test_the_js_code_table_is_what_the_script_writes() -> None:
    written = (ROOT / "static" / export_js.TARGET).read_text(encoding="utf-8")
    assert written == export_js.render(), "run: python -m renum_rt.protocol.export_js"


def test_write_puts_the_module_in_the_given_directory(tmp_path: Path) -> None:
    path = export_js.write(tmp_path)
    assert path == tmp_path / "renum-rt-codes.js" and path.read_text(encoding="utf-8") == export_js.render()


def test_the_client_doc_lists_every_close_code_with_its_reconnect_rule() -> None:
    doc = (ROOT / "docs" / "client.md").read_text(encoding="utf-8")
    section = doc.split("## Close codes", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d{4}) \| [^|]+ \| `(\w+)` \|", section, re.MULTILINE))
    assert rows == {code: spec["reconnect"] for code, spec in TABLE["close_codes"].items()}


def test_the_npm_package_has_the_servers_version() -> None:
    package = json.loads((ROOT / "static" / "package.json").read_text(encoding="utf-8"))
    assert package["name"] == "@renum/realtime" and package["version"] == renum_rt.__version__
    assert package["type"] == "module" and not package.get("dependencies")
    assert all((ROOT / "static" / name).is_file() for name in package["files"])
