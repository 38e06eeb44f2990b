"""Property tests (hypothesis) of the bundle unpacker against generated archives: paths outside the folder, links,
devices, negative and huge sizes, GNU and PAX sparse members, PAX paths and duplicate names. Whatever the archive,
nothing lands outside the destination, nothing but plain files and folders is made, the bytes written never pass
the cap, and a refusal leaves no destination behind."""
from __future__ import annotations

import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import event, given
from hypothesis import strategies as st

from tests.test_safetar import raw_header, safetar

CAP = 64 * 1024  # bytes: max_total_bytes in these runs
SAFE_NAMES = ("edge", "edge/a", "edge/b", "edge/d/c", "./edge/e", "x")
HOSTILE_NAMES = ("../evil", "edge/../../evil", "/ABS/evil", "edge\\..\\evil", "C:evil", "edge/\x01", "")
KINDS = {"file": b"0", "dir": b"5", "symlink": b"2", "hardlink": b"1", "chardev": b"3", "blockdev": b"4",
         "fifo": b"6", "contiguous": b"7", "gnu-sparse": b"S"}


@dataclass(frozen=True)
class Member:
    name: str
    kind: str  # a KINDS key
    size: int  # declared size in bytes: negative or huge ones are written base-256
    pax: str  # "", "path" (the name comes from a PAX header) or "sparse" (GNU.sparse.* PAX keys)

    @property
    def refused(self) -> bool:
        """A member that the unpacker must refuse wherever it appears."""
        return (self.kind not in ("file", "dir") or self.size < 0 or self.kind == "file" and self.size > CAP
                or self.pax == "sparse" or self.name in HOSTILE_NAMES)


def _bytes(member: Member, outside: Path) -> bytes:
    """The member's header block(s) and, for the types whose data tarfile skips, that data (as many bytes as it
    declares, up to the cap and a block: a larger member must be refused before its data is read)."""
    name = member.name.replace("/ABS", str(outside))
    length = max(0, min(member.size, CAP + 512))
    data = (bytes(range(256)) * (length // 256 + 1))[:length]
    if member.pax:  # tarfile's writer moves a size that does not fit in octal (negative, huge) to PAX "size"
        info = tarfile.TarInfo("pax-placeholder" if member.pax == "path" else name)
        info.type, info.size = KINDS[member.kind], member.size
        info.pax_headers = ({"path": name} if member.pax == "path" else
                            {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
                             "GNU.sparse.realsize": str(len(data))})
        head = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    else:
        head = raw_header(name, member.size, KINDS[member.kind])
    if member.kind in ("file", "contiguous", "gnu-sparse"):
        head += data + bytes(-len(data) % 512)
    return head


any_member = st.builds(
    Member,
    name=st.sampled_from(SAFE_NAMES + HOSTILE_NAMES),
    kind=st.sampled_from(["file"] * 4 + ["dir"] * 2 + sorted(KINDS)),
    size=st.one_of(st.integers(0, 3000), st.integers(-4096, -1).map(lambda n: n - n % 512),
                   st.sampled_from([CAP + 1, 2**33 + 5, 2**70])),
    pax=st.sampled_from(["", "", "", "path", "sparse"]))
plain_member = st.builds(Member, name=st.sampled_from(SAFE_NAMES), kind=st.sampled_from(["file", "file", "dir"]),
                         size=st.integers(0, 3000), pax=st.sampled_from(["", "path"]))
members = st.one_of(plain_member, plain_member, any_member)  # so that some archives unpack and are checked too


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in folder.rglob("*")}


@given(st.lists(members, min_size=1, max_size=6))
def test_no_archive_writes_outside_or_past_the_cap(spec):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        outside = work / "outside"
        outside.mkdir()
        (outside / "keep.txt").write_text("mine")
        archive = work / "b.tar"
        archive.write_bytes(b"".join(_bytes(m, outside) for m in spec) + bytes(1024))
        dest = work / "dest"
        before = {p.name for p in work.iterdir()}
        try:
            safetar.safe_extract(archive, dest, max_total_bytes=CAP, max_ratio=None)
        except safetar.UnsafeArchive as exc:
            event("refused")  # --hypothesis-show-statistics: how the examples split
            assert str(exc).startswith(f"{archive}: ") and "\n" not in str(exc)
            assert not dest.exists()  # a refusal leaves no destination behind
        else:
            event("unpacked")
            assert not any(m.refused for m in spec), spec
            written = 0
            for path in dest.rglob("*"):
                mode = path.lstat().st_mode
                assert path.is_dir() or path.is_file() and not path.is_symlink(), path
                assert mode & 0o7022 == 0, (path, oct(mode))  # no setuid/setgid/sticky, no group/other write
                written += path.stat().st_size if path.is_file() else 0
            assert written <= CAP
            names = [os.path.normpath(m.name) for m in spec if m.kind == "file"]
            assert len(names) == len(set(names))  # a duplicate never passes
        assert _snapshot(outside) == {"keep.txt": b"mine"}
        assert {p.name for p in work.iterdir()} <= before | {"dest"}


@given(st.lists(st.sampled_from(SAFE_NAMES[1:]), min_size=1, max_size=5, unique=True),
       st.lists(st.binary(max_size=2000), min_size=5, max_size=5))
def test_plain_bundles_unpack_byte_for_byte(names, contents):
    """The other side: an archive of plain files whose names do not collide unpacks exactly."""
    names = [n for n in names if not any(o != n and o.startswith(n + "/") for o in names)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        archive = work / "ok.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for name, data in zip(names, contents):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        dest = safetar.safe_extract(archive, work / "dest")
        for name, data in zip(names, contents):
            assert (dest / name).read_bytes() == data
