"""The README stays a newcomer's page (short, the two blocks .ci/run runs), and no link in it or in docs/ leaves
the repository or points at a file that is not there."""
from __future__ import annotations

import re
import subprocess

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def _block(section: str) -> str:
    """The bash block .ci/run extracts under `## section` (its own awk, run as CI runs it)."""
    script = (ROOT / ".ci" / "run").read_text()
    awk = re.search(r"awk -v want=\"## \$1\" '(.*?)' README.md", script, re.S).group(1)
    return subprocess.run(["awk", "-v", f"want=## {section}", awk, "README.md"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


def test_readme_is_short_and_keeps_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    assert _block("Quickstart") == "./scripts/setup.sh\n.venv/bin/toolkit distill recipes/quickstart.yaml\n"
    assert _block("Tests") == '.venv/bin/python -m pytest -q -m "not slow" --durations=15\n'
    assert "## Does a feedback round earn its teacher requests?" in lines


def test_no_link_leaves_the_repository_or_misses_its_file():
    bad = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("https://", "http://", "#")):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target}")
    assert not bad
    assert "../" not in (ROOT / "README.md").read_text()  # no path outside the clone, linked or not


def test_the_fresh_clone_bench_times_the_commands_ci_runs(monkeypatch):
    """bench/quickstart_fresh_clone.py times the README's Quickstart block line by line: the lines it reads are
    the ones .ci/run runs."""
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    bench = importlib.import_module("quickstart_fresh_clone")
    readme = (ROOT / "README.md").read_text()
    assert bench.quickstart_lines(readme) == _block("Quickstart").splitlines()
    assert bench.quickstart_lines("## Quickstart\n```bash\n# a comment\nmake\n\n```\n") == ["make"]
