"""Suite files on disk: where each is found (data root, $TOOLKIT_DATA, the user cache), its download from the
authors' pinned commit, and sha256 checks against pinned checksums."""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from toolkit.core import defaults
from toolkit.core.errors import DataError
from toolkit.data.suites import SUITES

# Where the files come from: raw.githubusercontent.com serves `{repo}/{commit}/{path}`, byte for byte as the
# authors committed them, so a checksum pinned here holds for every download. $TOOLKIT_DATA_URL names a mirror
# that serves the same paths (an offline copy, a company proxy; the tests' loopback server).
DEFAULT_URL = "https://raw.githubusercontent.com"
TIMEOUT_S = 30  # per connection attempt and per read


@dataclass(frozen=True)
class Pinned:
    """One file of a suite: `file` under the data root, `source` under the mirror URL, its sha256 and size."""

    file: str
    source: str
    sha256: str
    bytes: int


_GSM8K = "openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c"
_SVAMP = "arkilpatel/SVAMP/689d7ccac74b9983a2ac7cc3b264f441b99e7c53"
_ZERO_SHOT_COT = "kojima-takeshi188/zero_shot_cot/5ef330fcdeec0cd26aee27943504f91f8ec1c33c"
_ASDIV = "chaochun/nlu-asdiv-dataset/883f90a9a65bf00304ba8f37423910fe743abc47"
# The commits the data README names (checked 2026-12-07: each file below equals the one at that commit); a
# license file travels with its suite's data.
_GSM8K_LICENSE = Pinned("gsm8k/LICENSE", f"{_GSM8K}/LICENSE",
                        "86bbb73e855821d7c401912fd4bf82e34313e6e3b6fd6f909f2b6cc9e209a53b", 1062)
PINS: dict[str, tuple[Pinned, ...]] = {
    "gsm8k": (Pinned("gsm8k/test.jsonl", f"{_GSM8K}/grade_school_math/data/test.jsonl",
                     "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 749738), _GSM8K_LICENSE),
    "gsm8k_train": (Pinned("gsm8k/train.jsonl", f"{_GSM8K}/grade_school_math/data/train.jsonl",
                           "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 4166206),
                    _GSM8K_LICENSE),
    "svamp": (Pinned("svamp/SVAMP.json", f"{_SVAMP}/SVAMP.json",
                     "5be77703a6d891ae476d7c082787ad361392aa02453b132516cdd5f4e7934e3e", 339970),
              Pinned("svamp/LICENSE", f"{_SVAMP}/LICENSE",
                     "07ce3a34de7a865345634f9278bc26ddcacc2d0defd348c28e3f4603448b9ba4", 1068)),
    "asdiv": (Pinned("asdiv/ASDiv.xml", f"{_ASDIV}/dataset/ASDiv.xml",
                     "ef8904068482919ac48c8eeaaf6df344b8a308ba66d048c2d4d87eab82dc4929", 947401),),
    "multiarith": (Pinned("multiarith/MultiArith.json", f"{_ZERO_SHOT_COT}/dataset/MultiArith/MultiArith.json",
                          "dc9db1b6cc68b1ecc2dec830d15aaf8c9a0932aa31d5ffce88ef3628179d36f4", 254012),),
    "addsub": (Pinned("addsub/AddSub.json", f"{_ZERO_SHOT_COT}/dataset/AddSub/AddSub.json",
                      "21930fa90385c72b5a15f4b9a4dda27276b889ae9ff44285505cdd9fa0a20df8", 131373),),
    "singleeq": (Pinned("singleeq/questions.json", f"{_ZERO_SHOT_COT}/dataset/SingleEq/questions.json",
                        "051507bd2b489c257057b485774a83d2710c23a4bc0f4a58e1822ae2773ef05e", 137870),),
}


def cache_dir() -> Path:
    """Where fetched suites are kept: <the toolkit cache>/data ($TOOLKIT_CACHE, else ~/.cache/toolkit)."""
    return defaults.cache_root() / "data"


def data_roots(first: str | Path | None = None) -> list[Path]:
    """The folders a suite is looked up in, in order: `first` (--data-root or a recipe's data.root), then
    $TOOLKIT_DATA, then the user cache; each once."""
    roots: list[Path] = []
    for root in (first, os.environ.get("TOOLKIT_DATA"), cache_dir()):
        if root and Path(root) not in roots:
            roots.append(Path(root))
    return roots


def find_suite(name: str, roots: Sequence[Path]) -> Path | None:
    """The first root that holds the suite's file, or None."""
    return next((root for root in roots if (root / SUITES[name].file).is_file()), None)


def fix_line(name: str, roots: Sequence[Path]) -> str:
    """The one line a run prints when a suite is nowhere: where it looked and both fixes."""
    where = ", ".join(str(r) for r in roots)
    return (f"suite {name!r} is not under {where}: run `toolkit data fetch {name}`, or point --data-root, "
            f"data.root or TOOLKIT_DATA at a folder that holds {SUITES[name].file}")


def _download(url: str, pin: Pinned, dest: Path) -> None:
    """`url` into `dest`, only when its bytes hash to the pin: the file lands whole or not at all."""
    part = dest.with_name(f".{dest.name}.part")
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, part.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                if size > pin.bytes:  # a mirror that sends more than the pinned file never fills the disk
                    raise DataError(f"{url}: more than the pinned {pin.bytes} bytes; refused, {dest.name} not "
                                    f"written to {dest.parent}")
                out.write(chunk)
        if digest.hexdigest() != pin.sha256:
            raise DataError(f"{url}: sha256 {digest.hexdigest()[:16]}… ({size} bytes) is not the pinned "
                            f"{pin.sha256[:16]}… ({pin.bytes} bytes); refused, {dest.name} not written to "
                            f"{dest.parent}")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def fetch_suite(name: str, dest: str | Path | None = None) -> Path:
    """Download a suite's files from their pinned commit into `dest` (default: the cache), each checked against
    its sha256; returns `dest`. A file already there with the pinned checksum is kept."""
    if name not in PINS:
        raise DataError(f"unknown suite {name!r}; known suites: {', '.join(PINS)}")
    root = Path(dest) if dest else cache_dir()
    base = (os.environ.get("TOOLKIT_DATA_URL") or DEFAULT_URL).rstrip("/")
    for pin in PINS[name]:
        target = root / pin.file
        if target.is_file() and sha256_of(target) == pin.sha256:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        url = f"{base}/{pin.source}"
        try:
            _download(url, pin, target)
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DataError(f"cannot download {url} ({reason})") from exc
    return root


def locate_suite(name: str, data_root: str | Path | None) -> Path:
    """The root holding suite `name`: the first of data_roots(data_root) that has it, else the cache after a
    download; one line naming the suite and both fixes when it is nowhere and cannot be downloaded."""
    roots = data_roots(data_root)
    found = find_suite(name, roots)
    if found is not None:
        return found
    try:
        return fetch_suite(name)
    except DataError as exc:
        raise DataError(f"{fix_line(name, roots)} (automatic download: {exc})") from exc


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def status(data_root: str | Path | None = None, check: bool = False) -> list[dict]:
    """One row per suite: where it was found (or None), and with `check` each of its files' state there
    ("ok", "changed": another sha256, "missing")."""
    roots = data_roots(data_root)
    rows = []
    for name in SUITES:
        root = find_suite(name, roots)
        row: dict = {"suite": name, "root": str(root) if root else None, "file": SUITES[name].file}
        if check and root is not None:
            row["files"] = {pin.file: ("missing" if not (root / pin.file).is_file()
                                       else "ok" if sha256_of(root / pin.file) == pin.sha256 else "changed")
                            for pin in PINS[name]}
        rows.append(row)
    return rows
