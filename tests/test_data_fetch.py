"""`toolkit data list | fetch | verify` and the suite lookup, with a loopback server standing in for the mirror."""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import one_line_error, toolkit
from toolkit.core.errors import DataError
from toolkit.data.fetch import PINS, data_roots, fetch_suite
from toolkit.data.problems import load_suite
from toolkit.data.suites import SUITES


@pytest.fixture()
def mirror(tmp_path, data_root, monkeypatch):
    """The shared data's files laid out as `{repo}/{commit}/{path}`, served on 127.0.0.1 as the real source serves
    them; TOOLKIT_DATA_URL points at it. Yields (the served folder, the paths requested)."""
    served = tmp_path / "served"
    for pins in PINS.values():
        for pin in pins:
            (served / pin.source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data_root / pin.file, served / pin.source)
    asked: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            asked.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TOOLKIT_DATA_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield served, asked
    finally:
        server.shutdown()
        server.server_close()


def test_pins_are_the_files_of_the_shared_data(data_root):
    for name, pins in PINS.items():
        assert pins[0].file == SUITES[name].file
        for pin in pins:
            data = (data_root / pin.file).read_bytes()
            assert (hashlib.sha256(data).hexdigest(), len(data)) == (pin.sha256, pin.bytes), pin.file
    assert set(PINS) == set(SUITES)


def test_fetch_through_the_cli_then_list_and_verify(mirror, tmp_path, data_root):
    cache = Path(tmp_path / "toolkit-cache" / "data")
    r = toolkit("data", "fetch", "svamp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"svamp: {cache / 'svamp' / 'SVAMP.json'} (sha256 checked)" in r.stdout
    for pin in PINS["svamp"]:
        assert (cache / pin.file).read_bytes() == (data_root / pin.file).read_bytes()
    assert not list(cache.rglob("*.part"))
    rows = {row["suite"]: row for row in json.loads(toolkit("data", "list", "--json", cwd=tmp_path).stdout)}
    assert rows["svamp"]["root"] == str(cache) and rows["gsm8k"]["root"] is None
    listing = toolkit("data", "list", cwd=tmp_path)
    assert listing.returncode == 0 and "nowhere (toolkit data fetch gsm8k)" in listing.stdout
    ok = toolkit("data", "verify", "--json", cwd=tmp_path)
    assert ok.returncode == 0 and json.loads(ok.stdout)[2]["files"] == {"svamp/SVAMP.json": "ok", "svamp/LICENSE": "ok"}
    # A copy changed on disk: verify names it and fails.
    (cache / "svamp" / "SVAMP.json").write_bytes(b"[]")
    bad = toolkit("data", "verify", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert f"{cache}/svamp/SVAMP.json" in bad.stderr and "toolkit data fetch" in bad.stderr


def test_a_run_downloads_a_missing_suite_once(mirror, tmp_path):
    served, asked = mirror
    problems = load_suite("multiarith", tmp_path / "empty")  # nowhere yet: fetched into the cache
    assert len(problems) == 600 and asked == [f"/{PINS['multiarith'][0].source}"]
    assert len(load_suite("multiarith", tmp_path / "empty")) == 600 and len(asked) == 1  # the cache serves now


def test_a_checksum_mismatch_is_refused_in_one_line(mirror, tmp_path):
    served, _ = mirror
    pin = PINS["svamp"][0]
    (served / pin.source).write_bytes((served / pin.source).read_bytes().replace(b"apples", b"pears"))
    r = one_line_error(toolkit("data", "fetch", "svamp", cwd=tmp_path), "suite 'svamp':", "sha256",
                       f"is not the pinned {pin.sha256[:16]}", "refused")
    assert not (tmp_path / "toolkit-cache" / "data" / "svamp" / "SVAMP.json").exists()
    assert not list((tmp_path / "toolkit-cache" / "data").rglob("*.part")), r
    with pytest.raises(DataError, match="refused"):
        fetch_suite("svamp")
    # More bytes than the pinned file: refused while it streams.
    (served / pin.source).write_bytes(b" " * (pin.bytes + 1))
    with pytest.raises(DataError, match=f"more than the pinned {pin.bytes} bytes; refused"):
        fetch_suite("svamp")
    assert not (tmp_path / "toolkit-cache" / "data" / "svamp" / "SVAMP.json").exists()


def test_nothing_reachable_names_the_suite_and_both_fixes(tmp_path):
    # conftest points TOOLKIT_DATA_URL at a closed port
    fetched = toolkit("data", "fetch", "asdiv", cwd=tmp_path)
    one_line_error(fetched, "suite 'asdiv': cannot download http://127.0.0.1:9/",
                   "else point --data-root, data.root or TOOLKIT_DATA at a copy")
    one_line_error(toolkit("eval", "pkg:smollm2-135m-instruct", "--suite", "asdiv", "--data-root", str(tmp_path),
                           cwd=tmp_path), "suite 'asdiv' is not under", "toolkit data fetch asdiv",
                   "--data-root, data.root or TOOLKIT_DATA")
    one_line_error(toolkit("data", "fetch", "gsm9k", cwd=tmp_path), "unknown: gsm9k")


def test_lookup_order_is_data_root_then_toolkit_data_then_cache(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("TOOLKIT_DATA", str(data_root))
    roots = data_roots(tmp_path / "mine")
    assert roots == [tmp_path / "mine", data_root, tmp_path / "toolkit-cache" / "data"]
    (tmp_path / "mine" / "svamp").mkdir(parents=True)
    (tmp_path / "mine" / "svamp" / "SVAMP.json").write_text(json.dumps(
        [{"ID": "x1", "Body": "Ann has 2 cats.", "Question": "How many cats?", "Answer": 2.0}]))
    assert [p.id for p in load_suite("svamp", tmp_path / "mine")] == ["svamp-x1"]  # the data root wins
    assert len(load_suite("asdiv", tmp_path / "mine")) > 2000  # not there: $TOOLKIT_DATA's
