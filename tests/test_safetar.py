"""Edge bundles are unpacked member by member after checks, the same on every Python (3.11.2 has no tar filters).

Stdlib + pytest only, and eval/safetar.py is loaded from its file (as on a device), so this file also runs
under a Python without toolkit installed: `PYTHONPATH=. /usr/bin/python3 -m pytest tests/test_safetar.py`.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from toolkit.core import model_kind

EVAL = Path(__file__).resolve().parent.parent / "eval"


def _load_safetar():
    spec = importlib.util.spec_from_file_location("safetar_under_test", EVAL / "safetar.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


safetar = _load_safetar()


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], compress: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if compress else "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def box(tmp_path):
    """(workspace, dest, outside): dest is where we unpack, outside a sibling folder nothing may reach."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    return tmp_path, tmp_path / "dest", outside


def test_a_plain_bundle_unpacks_with_safe_modes(box):
    work, dest, _ = box
    bundle = _tar(work / "ok.tar.gz", [
        _link("edge", "", tarfile.DIRTYPE),
        _file("edge/model.gguf", b"GGUF" + bytes(1000)),
        _file("edge/run.py", b"print(1)\n", 0o4755),  # setuid in the archive: dropped
        _file("edge/README.md", b"# hi\n", 0o666),  # world-writable in the archive: dropped
        _file("./edge/sub/x.json", b"{}"),  # a folder implied by its file, and a ./ prefix
    ])
    assert safetar.safe_extract(bundle, dest) == dest
    assert _tree(dest) == {"edge", "edge/model.gguf", "edge/run.py", "edge/README.md", "edge/sub", "edge/sub/x.json"}
    assert (dest / "edge/model.gguf").read_bytes() == b"GGUF" + bytes(1000)
    assert (dest / "edge/run.py").stat().st_mode & 0o7777 == 0o755
    assert (dest / "edge/README.md").stat().st_mode & 0o7777 == 0o644


@pytest.mark.parametrize("name", ["../evil.txt", "edge/../../evil.txt", "/tmp/evil-abs.txt", "edge\\..\\evil.txt"])
def test_paths_outside_the_destination_are_refused(box, name):
    work, dest, outside = box
    if name.startswith("/"):
        name = str(outside / "evil-abs.txt")
    bundle = _tar(work / "b.tar.gz", [_file("edge/ok.txt"), _file(name, b"pwned")])
    with pytest.raises(safetar.UnsafeArchive, match=r"b\.tar\.gz: member .*(absolute|'\.\.'|backslash)"):
        safetar.safe_extract(bundle, dest)
    assert not dest.exists()  # checked before anything was written; our own folder is gone again
    assert _tree(outside) == {"keep.txt"} and not (work / "evil.txt").exists()


def test_symlink_then_a_file_through_it_is_refused(box):
    work, dest, outside = box
    bundle = _tar(work / "b.tar.gz", [_link("edge/out", str(outside), tarfile.SYMTYPE),
                                      _file("edge/out/planted.txt", b"pwned")])
    with pytest.raises(safetar.UnsafeArchive, match="is a symlink"):
        safetar.safe_extract(bundle, dest)
    assert _tree(outside) == {"keep.txt"} and not dest.exists()


def test_hardlinks_devices_and_fifos_are_refused(box):
    work, dest, outside = box
    for kind, what in [(tarfile.LNKTYPE, "hardlink"), (tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device"),
                       (tarfile.FIFOTYPE, "fifo"), (tarfile.CONTTYPE, "not a plain")]:
        target = str(outside / "keep.txt") if kind == tarfile.LNKTYPE else ""
        bundle = _tar(work / "b.tar.gz", [_file("edge/ok.txt"), _link("edge/x", target, kind)])
        with pytest.raises(safetar.UnsafeArchive, match=what):
            safetar.safe_extract(bundle, dest)
        assert not dest.exists()
    assert (outside / "keep.txt").read_text() == "mine"


def test_a_decompression_bomb_is_refused_before_it_is_written(box):
    """256 MiB of zeros gzip to about 261 KB; refused on its header by the default caps (ratio), not after."""
    work, dest, _ = box
    bomb = work / "bomb.tar.gz"
    size = 256 * 1024**2
    info = tarfile.TarInfo("edge/model.gguf")
    info.size = size
    with gzip.open(bomb, "wb", compresslevel=9) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        tar.addfile(info, io.BytesIO(bytes(size)))  # BytesIO of zeros, streamed: fine for a test
    assert bomb.stat().st_size < 400_000
    with pytest.raises(safetar.UnsafeArchive, match="when unpacked"):
        safetar.safe_extract(bomb, dest)
    assert not dest.exists()
    # And the absolute cap, whatever the ratio: a header declaring more than max_total_bytes.
    with pytest.raises(safetar.UnsafeArchive, match="when unpacked"):
        safetar.safe_extract(bomb, dest, max_total_bytes=1024**2, max_ratio=None)
    assert not dest.exists()


def test_the_caps_are_generous_but_finite():
    assert 2 * 1024**3 <= safetar.MAX_TOTAL_BYTES <= 16 * 1024**3
    assert 100 <= safetar.MAX_MEMBERS <= 10_000
    assert safetar.RATIO_FLOOR_BYTES >= 16 * 1024**2 and safetar.MAX_RATIO >= 10


def test_too_many_members_are_refused(box):
    work, dest, _ = box
    bundle = _tar(work / "many.tar.gz", [_file(f"edge/f{i}.txt") for i in range(safetar.MAX_MEMBERS + 1)])
    with pytest.raises(safetar.UnsafeArchive, match=f"more than {safetar.MAX_MEMBERS} members"):
        safetar.safe_extract(bundle, dest)
    assert not dest.exists()


def test_duplicates_a_non_empty_destination_and_garbage_are_refused(box):
    work, dest, _ = box
    twice = _tar(work / "twice.tar.gz", [_file("edge/a", b"1"), _file("edge/a", b"2")])
    with pytest.raises(safetar.UnsafeArchive, match="appears twice"):
        safetar.safe_extract(twice, dest)
    under_file = _tar(work / "under.tar.gz", [_file("edge/a", b"1"), _file("edge/a/b", b"2")])
    with pytest.raises(safetar.UnsafeArchive, match="inside a member that is a file"):
        safetar.safe_extract(under_file, dest)
    dest.mkdir()
    (dest / "old").write_text("x")
    with pytest.raises(safetar.UnsafeArchive, match="not empty"):
        safetar.safe_extract(_tar(work / "ok.tar.gz", [_file("edge/a")]), dest)
    assert _tree(dest) == {"old"}
    garbage = work / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b" + os.urandom(200))
    with pytest.raises(safetar.UnsafeArchive, match="cannot unpack"):
        safetar.safe_extract(garbage, work / "d2")
    assert not (work / "d2").exists()


def test_the_shipped_runner_unpacks_through_the_same_checks(tmp_path):
    """The files `toolkit bench --remote` copies to a device, run as plain scripts in isolated mode: a
    bundle with a `../` member and one with a symlink are refused there too, and a good one is found."""
    runner_dir = tmp_path / "device"
    runner_dir.mkdir()
    remote_src = (EVAL / "remote.py").read_text()
    shipped = [name for name in ("bench_runner.py", "machine.py", "safetar.py") if f'"{name}"' in remote_src]
    assert "safetar.py" in shipped  # RUNNER_FILES carries the unpacker to the device
    for name in shipped:
        shutil.copy(EVAL / name, runner_dir / name)
    shutil.copy(model_kind.__file__, runner_dir / "model_kind.py")  # RUNNER_FILES' one file from toolkit/core
    outside = tmp_path / "outside"
    outside.mkdir()
    bundles = {
        "dotdot": _tar(tmp_path / "dotdot.tar.gz", [_file("edge/m.gguf", b"GGUF"), _file("../outside/evil", b"x")]),
        "symlink": _tar(tmp_path / "symlink.tar.gz", [_link("edge/l", str(outside), tarfile.SYMTYPE),
                                                      _file("edge/l/evil", b"x")]),
        "ok": _tar(tmp_path / "ok.tar.gz", [_file("edge/m.gguf", b"GGUF")]),
    }
    # sys.path[0] = the runner's folder, as for `python3 bench_runner.py SPEC` on the device
    code = ("import json, os, sys; from pathlib import Path; sys.path.insert(0, os.getcwd()); import bench_runner\n"
            "try:\n    r = list(map(str, bench_runner.detect(Path(sys.argv[1]))))\n"
            "except Exception as e:\n    r = [type(e).__name__, str(e)]\nprint(json.dumps(r))\n")
    out = {}
    for key, bundle in bundles.items():
        proc = subprocess.run([sys.executable, "-I", "-c", code, str(bundle)], cwd=runner_dir, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        out[key] = json.loads(proc.stdout)
    assert out["dotdot"][0] == "UnsafeArchive" and "'..'" in out["dotdot"][1]
    assert out["symlink"][0] == "UnsafeArchive" and "symlink" in out["symlink"][1]
    assert out["ok"][0] == "llama.cpp" and out["ok"][1].endswith("edge/m.gguf")
    assert list(outside.iterdir()) == []


def raw_header(name: str, size: int, kind: bytes = b"0") -> bytes:
    """A ustar header block written byte by byte, so that it can say what tarfile's writer never would: a
    negative size is stored base-256 (first byte 0xff, then the two's complement in 11 bytes), as is one too
    large for 11 octal digits (first byte 0x80)."""
    block = bytearray(512)
    block[0:len(name)] = name.encode()
    block[100:108], block[108:116], block[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
    if 0 <= size < 8**11:
        block[124:136] = b"%011o\0" % size
    elif size > 0:
        block[124:136] = b"\x80" + size.to_bytes(11, "big")
    else:
        block[124:136] = b"\xff" + (256**11 + size).to_bytes(11, "big")
    block[136:148], block[156:157], block[257:265] = b"00000000000\0", kind, b"ustar\x0000"
    block[148:156] = b" " * 8  # the checksum counts its own field as spaces
    block[148:156] = b"%06o\0 " % sum(block)
    assert len(block) == 512
    return bytes(block)


def negative_size_archive(path: Path, cycles: int, size: int) -> Path:
    """Member p<i> (`size` bytes) is followed by n<i> of size -`size`, after which tarfile seeks back to the
    next header, which lies inside p<i>'s data. Each cycle writes `size` bytes and adds 0 to a running total."""
    data = bytearray(512 + size + 1024 * cycles + 1024)
    for i in range(cycles):
        data[1024 * i:1024 * i + 512] = raw_header(f"edge/p{i}", size)
        at = 512 + size + 1024 * i
        data[at:at + 512] = raw_header(f"edge/n{i}", -size)
    path.write_bytes(bytes(data))
    return path


def test_a_negative_member_size_is_refused(box):
    """A 1 KiB cap and 8 cycles of 1 KiB: tarfile reads every member, the total never passes 1 KiB, and the old
    unpacker wrote 8 KiB. Now the first negative size stops it, before anything is written."""
    work, dest, _ = box
    bundle = negative_size_archive(work / "neg.tar", cycles=8, size=1024)
    with tarfile.open(bundle) as tar:  # the archive does what it says: 16 members, half with a negative size
        assert [m.size for m in tar.getmembers()] == [1024, -1024] * 8
    with pytest.raises(safetar.UnsafeArchive, match=r"member 'edge/n0' has a negative size \(-1024\)"):
        safetar.safe_extract(bundle, dest, max_total_bytes=1024, max_ratio=None)
    assert not dest.exists()


def test_pax_sparse_members_are_refused(box):
    """A PAX header that makes a regular member sparse (GNU.sparse.*; its type stays '0')."""
    work, dest, _ = box
    info = tarfile.TarInfo("edge/model.gguf")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "edge/model.gguf",
                        "GNU.sparse.realsize": "1024"}
    data = b"1\n0\n1024\n".ljust(512, b"\0") + b"x" * 1024
    info.size = len(data)
    bundle = work / "sparse.tar"
    with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    with tarfile.open(bundle) as tar:
        assert tar.getmembers()[0].type == tarfile.REGTYPE  # a plain file to a type check
    with pytest.raises(safetar.UnsafeArchive, match="is a sparse file"):
        safetar.safe_extract(bundle, dest)
    assert not dest.exists()
