"""Secrets: API keys come from the environment only and never reach a file the run writes."""
from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.conftest import DATA, toolkit, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from toolkit.core.errors import RecipeError
from toolkit.core.recipe import load_recipe


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_the_key_is_sent_but_never_written(tmp_path, tiny_model_dir, monkeypatch):
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv("TEACHER_KEY", key)
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))
    with FaultTeacher(tmp_path / "server.jsonl", api_key_env="TEACHER_KEY",
                      rates={"server_error": 0.2, "malformed": 0.1}) as srv:
        recipe = write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url)
        r = toolkit("distill", str(recipe), f"data.root={DATA}", "teacher.api_key_env=TEACHER_KEY",
                    "teacher.backoff_s=0.05", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        rows = srv.rows()
        # A wrong key: refused, and the message names the variable, not the key.
        monkeypatch.setenv("TEACHER_KEY", "sk-wrong-" + secrets.token_hex(8))
        bad = toolkit("distill", str(recipe), f"data.root={DATA}", "teacher.api_key_env=TEACHER_KEY",
                      "name=refused", "seed=9", cwd=tmp_path)  # another seed: not cached
    assert rows and all(x["auth"] is True for x in rows)  # the key did reach the teacher
    assert bad.returncode == 2 and "refused the request" in bad.stderr and "$TEACHER_KEY" in bad.stderr
    assert "sk-wrong-" not in bad.stderr and "Traceback" not in bad.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "server.jsonl"]
    assert any(p.name == "teacher.sqlite" for p in written) and any(p.name == "manifest.json" for p in written)
    assert _files_holding(tmp_path, key.encode()) == []  # manifest, logs, results, the SQLite cache (+WAL)
    assert key not in r.stdout + r.stderr


@pytest.mark.parametrize("line", [
    "  api_key: {secret}\n",
    "  api_key_env: {secret}\n",
    "  base_url: 'https://user:{secret}@api.example.com/v1'\n",
])
def test_a_key_put_in_the_recipe_is_refused_without_echo(tmp_path, line):
    secret = "sk-live-" + secrets.token_hex(12)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndata:\n  train: {path: x.jsonl}\nstudent: {model: s}\nteacher:\n"
                      "  model: m\n  backend: openai\n" + ("  base_url: http://a/v1\n" if "base_url" not in line
                                                            else "") + line.format(secret=secret))
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    assert secret not in str(err.value) and "\n" not in str(err.value)
    assert "api_key_env" in str(err.value) or "environment variable" in str(err.value) \
        or "pattern" in str(err.value)
    # The same through a command-line override.
    recipe.write_text("name: r\ndata:\n  train: {path: x.jsonl}\nstudent: {model: s}\nteacher:\n"
                      "  model: m\n  backend: openai\n  base_url: http://a/v1\n")
    key = line.split(":")[0].strip()
    value = line.split(": ", 1)[1].strip().strip("'").format(secret=secret)
    r = toolkit("distill", str(recipe), f"teacher.{key}={value}", "--dry-run", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and secret not in r.stderr + r.stdout and r.stderr.count("\n") == 1


@pytest.mark.parametrize("url", [
    "https://api.example.com/v1?api-key={secret}",
    "https://api.example.com/v1#{secret}",
    "https://{secret}@api.example.com/v1",
    "https://api.example.com/v1?",
])
@pytest.mark.parametrize("where", ["teacher", "endpoint"])
def test_a_base_url_with_userinfo_query_or_fragment_is_refused_without_echo(tmp_path, url, where):
    secret = "sk-live-" + secrets.token_hex(12)
    url = url.format(secret=secret)
    target = f"  base_url: '{url}'\n" if where == "teacher" else f"  endpoints:\n    - base_url: '{url}'\n"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndata:\n  train: {path: x.jsonl}\nstudent: {model: s}\nteacher:\n"
                      "  model: m\n  backend: openai\n" + target)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    msg = str(err.value)
    assert secret not in msg and "\n" not in msg and "base_url" in msg
    assert any(w in msg for w in ("credentials", "query", "fragment"))


def test_plain_http_to_another_host_warns(tmp_path, tiny_model_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1")
    for url, warns in [("http://10.1.2.3:8000/v1", True), ("http://teacher.example.com/v1", True),
                       ("https://teacher.example.com/v1", False), ("http://127.0.0.1:8000/v1", False),
                       ("http://localhost:8000/v1", False), ("http://[::1]:8000/v1", False)]:
        r = toolkit("distill", str(recipe), f"teacher.base_url={url}", "--dry-run", cwd=tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr
        warned = "warning:" in r.stderr and "http://" in r.stderr and "unencrypted" in r.stderr
        assert warned == warns, (url, r.stderr)
        if warns:
            assert url.split("//")[1].split(":")[0].split("/")[0] in r.stderr


@pytest.mark.parametrize("fault", ["unauthorized", "server_error"])
def test_a_server_that_echoes_the_key_is_redacted(tmp_path, tiny_model_dir, monkeypatch, fault):
    """A 401 (refused for good) or a 500 (retried, then given up) whose body repeats the key bare and as the
    `Authorization: Bearer …` header: the one-line error and the logs never show the key."""
    key = "tok-" + secrets.token_hex(16)  # no sk- prefix: the actual value is redacted, not only a pattern
    monkeypatch.setenv("TEACHER_KEY", key)
    monkeypatch.setenv("SERVER_KEY", key if fault == "server_error" else "another-" + secrets.token_hex(8))
    rates = {"server_error": 1.0} if fault == "server_error" else {}
    with FaultTeacher(tmp_path / "server.jsonl", api_key_env="SERVER_KEY", rates=rates, max_faults=100,
                      echo_auth=True) as srv:
        recipe = write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url)
        r = toolkit("distill", str(recipe), f"data.root={DATA}", "teacher.api_key_env=TEACHER_KEY",
                    "teacher.backoff_s=0.01", "teacher.max_retries=1", cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: teacher at ") and "Traceback" not in r.stderr, r.stderr
    assert "[redacted]" in r.stderr  # the server's text is kept, the key is not
    assert key not in r.stdout + r.stderr and "Bearer tok" not in r.stderr
    assert _files_holding(tmp_path, key.encode()) == []
