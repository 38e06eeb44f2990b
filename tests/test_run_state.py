"""Run folders and the teacher cache from elsewhere or damaged on disk: `--fresh` deletes only our own run folder,
and a corrupt manifest or cache page ends in one line naming the file and the fix, never a wrong cached answer."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import DATA, DEAD, one_line_error, toolkit, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from toolkit.core.errors import ToolkitError
from toolkit.core.rundir import RunDir

def _documents(folder: Path) -> dict[str, bytes]:
    (folder / "taxes").mkdir(parents=True)
    (folder / "letter.txt").write_text("dear …")
    (folder / "taxes" / "2025.pdf").write_bytes(b"%PDF-1.7 " + bytes(100))
    (folder / "draft.tmp").write_text("unsaved work")  # what a run's temporary sweep would delete
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -- item 5: --fresh deletes only a folder the toolkit made ---------------------------------------------------------
def test_fresh_refuses_a_folder_of_documents(tmp_path, tiny_model_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, DEAD)
    docs = tmp_path / "runs" / "tiny"
    before = _documents(docs)
    for args in (["--fresh"], []):  # neither deleted (--fresh) nor written into (a plain run)
        err = one_line_error(toolkit("distill", str(recipe), *args, cwd=tmp_path, timeout=120), str(docs))
        assert "not a toolkit run folder" in err
        assert _files(docs) == before
    # A manifest.json of someone else's is no licence either: the mark is a field, not the file name.
    (docs / "manifest.json").write_text(json.dumps({"title": "my manifest", "stages": {}}))
    before = _files(docs)
    one_line_error(toolkit("distill", str(recipe), "--fresh", cwd=tmp_path, timeout=120), str(docs),
                    "not a toolkit run folder")
    assert _files(docs) == before


def test_fresh_deletes_our_own_run_folder_and_reuses_an_empty_one(tmp_path):
    root = tmp_path / "runs" / "r"
    run = RunDir(root)
    run.open("abc", {"name": "r"}, 0, fresh=False)
    assert json.loads((root / "manifest.json").read_text())["kind"] == "toolkit-run"
    (root / "round-0").mkdir()
    (root / "round-0" / "train.jsonl").write_text("{}\n")
    RunDir(root).open("abc", {"name": "r"}, 0, fresh=True)
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json"]
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    RunDir(empty).open("abc", {}, 0, fresh=True)
    assert (empty / "manifest.json").is_file()
    # A run killed while writing its first manifest leaves only the writer's temporary: still ours to reuse.
    killed = tmp_path / "runs" / "killed"
    killed.mkdir()
    (killed / ".manifest.json.x1y2.tmp").write_text('{"recipe')
    RunDir(killed).open("abc", {}, 0, fresh=False)
    assert [p.name for p in killed.iterdir()] == ["manifest.json"]


# -- item 7: corrupt manifest and teacher cache -----------------------------------------------------------------------
@pytest.mark.parametrize("text", ['{"kind": "toolkit-run", "recipe_sha256": "ab', "\x00\x01garbage\xff", "[1, 2]",
                                  '{"stages": ' * 30000 + "1" + "}" * 30000])  # json.loads: RecursionError
def test_corrupt_manifest_is_one_line(tmp_path, tiny_model_dir, text):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, DEAD)
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "manifest.json").write_bytes(text.encode("latin-1"))
    (run / "round-0").mkdir()
    for args in ([], ["--fresh"]):
        one_line_error(toolkit("distill", str(recipe), *args, cwd=tmp_path, timeout=120),
                        f"run manifest {run / 'manifest.json'} is corrupt", "move")
        assert (run / "round-0").is_dir()  # nothing deleted: a corrupt manifest does not prove the folder ours


def _filled_cache(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> tuple[Path, Path, list[str]]:
    """A real run's teacher cache (with filler entries so it spans many pages), checkpointed to its main file.
    Returns (recipe, cache file, the run's own completions)."""
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("TOOLKIT_CACHE", str(cache_dir))
    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        recipe = write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url)
        r = toolkit("distill", str(recipe), f"data.root={DATA}", "train.max_steps=1", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    # The teacher is gone from now on: the second run can only read the cache.
    recipe.write_text(recipe.read_text().replace(srv.base_url, DEAD))
    db_path = cache_dir / "teacher.sqlite"
    db = sqlite3.connect(db_path)
    ours = [row[0] for row in db.execute("SELECT completion FROM completions")]
    db.executemany("INSERT INTO completions (key, model, request, completion, created) VALUES (?, 'm', '{}', ?, 0)",
                   [(f"filler-{i:04d}", f"filler text {i} " * 40) for i in range(400)])
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    assert len(ours) >= 6 and db_path.stat().st_size > 50 * 4096
    return recipe, db_path, ours


def test_a_corrupt_cache_page_is_one_line(tmp_path, tiny_model_dir, monkeypatch):
    recipe, db_path, ours = _filled_cache(tmp_path, tiny_model_dir, monkeypatch)
    data = bytearray(db_path.read_bytes())
    page = 4096
    at = data.index(ours[len(ours) // 2].encode()[:40])  # a page in the middle that one of the run's answers is on
    start = at // page * page
    assert 0 < start < len(data) - page
    data[start:start + 64] = b"\xa5" * 64  # the page header and cell pointers: a garbled page, as from a bad sector
    db_path.write_bytes(bytes(data))
    r = toolkit("distill", str(recipe), f"data.root={DATA}", "name=again", "train.max_steps=1", cwd=tmp_path,
                timeout=300)
    one_line_error(r, f"teacher cache {db_path} is corrupt", "TOOLKIT_CACHE")


def test_a_changed_cached_answer_is_never_served(tmp_path, tiny_model_dir, monkeypatch):
    """Bytes flipped inside one stored completion (same length, a valid page): SQLite cannot see it, the
    entry's checksum does. The entry is dropped with a warning and asked again (one request, counted in the
    manifest's ledger); the run goes on instead of training on an answer the teacher never gave, or stopping."""
    recipe, db_path, ours = _filled_cache(tmp_path, tiny_model_dir, monkeypatch)
    data = bytearray(db_path.read_bytes())
    victim = next(c for c in ours if any(ch.isdigit() for ch in c)).encode()
    at = data.index(victim)
    digit = next(i for i, b in enumerate(victim) if chr(b).isdigit())
    data[at + digit] = ord("7") if victim[digit] != ord("7") else ord("3")
    db_path.write_bytes(bytes(data))
    with FaultTeacher(tmp_path / "again.jsonl") as srv:
        recipe.write_text(recipe.read_text().replace(DEAD, srv.base_url))
        r = toolkit("distill", str(recipe), f"data.root={DATA}", "name=again", "train.max_steps=1", cwd=tmp_path,
                    timeout=300)
        assert r.returncode == 0, r.stderr
        assert len(srv.rows()) == 1  # the damaged entry's request, nothing else
    assert r.stderr.count(f"teacher cache {db_path}: a damaged entry") == 1
    ledger = json.loads((tmp_path / "runs" / "again" / "manifest.json").read_text())["teacher"]
    assert ledger["cached"]["damaged"] == 1 and ledger["answered"] == 1
    assert bytes(data[at:at + len(victim)]) not in db_path.read_bytes()  # stored again as the teacher wrote it


def test_a_cache_file_that_is_not_sqlite_is_one_line(tmp_path):
    from toolkit.teacher.cache import RequestCache

    bad = tmp_path / "teacher.sqlite"
    bad.write_bytes(b"this is not a database" * 300)
    with pytest.raises(ToolkitError, match=f"teacher cache {bad} is corrupt.*move it aside or set TOOLKIT_CACHE"):
        RequestCache(bad)


def test_a_cache_from_before_checksums_is_asked_again(tmp_path):
    """Teacher caches written before entries carried checksums: the file opens, but nothing vouches for an old
    entry's text, so it is dropped and asked again like a damaged one; new entries get checksums."""
    from toolkit.teacher.cache import RequestCache

    path = tmp_path / "teacher.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE completions (key TEXT PRIMARY KEY, model TEXT, request TEXT, completion TEXT, "
               "created REAL)")
    db.execute("INSERT INTO completions VALUES ('old', 'm', '{}', 'The answer is 4.', 0)")
    db.commit()
    db.close()
    cache = RequestCache(path)
    cache.put("new", "m", {}, "The answer is 5.")
    assert (cache.get("old"), cache.get("new"), len(cache), cache.damaged) == (None, "The answer is 5.", 1, 1)
    cache.close()
    digests = dict(sqlite3.connect(path).execute("SELECT key, digest FROM completions"))
    assert "old" not in digests and len(digests["new"]) == 16
