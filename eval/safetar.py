"""Member-checked extraction of .tar.gz edge bundles: the one unpacker for local and remote bench runs.

Stdlib only and self-contained: `toolkit bench --remote` ships this file beside bench_runner.py to the
device (Raspberry Pi OS bookworm runs Python 3.11.2, whose tarfile has no `filter=` argument), so it
must not lean on tarfile's extraction filters. Every member is checked before anything is written:
plain files and folders only (no symlinks, hardlinks, devices, fifos or sparse files), a relative path that
stays inside the destination, caps on member count and total size (sizes never negative, members in file
order: tarfile accepts a negative size and then seeks back, which would let a member's data be read again as
new members while the running total falls), and modes without setuid/setgid/sticky or group/other write bits.
Files are then written by this module (never `extractall`), so the result is the same on every Python version.
"""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath

# A bundle is one folder holding a model of about 100 MB to 1 GB (the 1.5B teacher at Q4_K_M is 1.1 GB, an fp16
# 1.5B export about 3 GB), its tokenizer, export.json, run.py, README.md and SHA256SUMS. 8 GiB leaves room for a
# 3B fp16 model and still stops a bundle from filling the device's disk.
MAX_TOTAL_BYTES = 8 * 1024**3
# A GGUF bundle has 5 members, an onnxruntime-genai one about 15; 512 is generous and still finite.
MAX_MEMBERS = 512
# Model weights barely compress (measured: the SmolLM2-135M Q4_1 GGUF gzips to 94% of its size; float weights also
# shrink by well under 2x), while gzip reaches ~1000x on zeros. Above this ratio of unpacked to packed size a bundle
# is a decompression bomb, not a model (a 261 KB file declaring 256 MiB is 1000x). Small bundles (tiny test models,
# tokenizers alone) are exempt up to RATIO_FLOOR_BYTES.
MAX_RATIO = 50
RATIO_FLOOR_BYTES = 64 * 1024**2
_CHUNK = 1024 * 1024


class UnsafeArchive(ValueError):
    """The archive holds a member we refuse to write (its message names the archive and the member)."""


def _check_name(name: str) -> PurePosixPath:
    """The member's relative path, or UnsafeArchive for absolute paths, `..`, backslashes and control bytes."""
    if not name or name.startswith("/") or "\\" in name or any(ord(c) < 32 for c in name):
        raise UnsafeArchive("an absolute path or a name with a backslash or control character")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if not parts:
        return PurePosixPath(".")
    if ".." in parts:
        raise UnsafeArchive("a path with '..'")
    if ":" in parts[0]:  # C:foo on Windows, where a laptop may unpack a bundle too
        raise UnsafeArchive("a drive-letter path")
    return PurePosixPath(*parts)


def check_members(tar: tarfile.TarFile, dest: Path, *, max_members: int = MAX_MEMBERS,
                  max_total_bytes: int = MAX_TOTAL_BYTES) -> list[tuple[tarfile.TarInfo, PurePosixPath]]:
    """Every member with its checked relative path; raises UnsafeArchive at the first bad one.

    Reads headers only, one member at a time, and stops at the first member over a cap, so a bomb
    is refused without decompressing it whole.
    """
    root = dest.resolve()
    out: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
    files: set[PurePosixPath] = set()
    dirs: set[PurePosixPath] = set()
    total = 0
    end = 0  # where the previous member's data ends in the (uncompressed) archive, in bytes
    while True:
        member = tar.next()
        if member is None:
            return out
        if len(out) >= max_members:
            raise UnsafeArchive(f"more than {max_members} members")
        if member.size < 0:  # tarfile reads a base-256 size field as a signed number
            raise UnsafeArchive(f"member {member.name!r} has a negative size ({member.size})")
        if member.offset < end or member.offset_data <= member.offset:
            raise UnsafeArchive(f"member {member.name!r} starts at byte {member.offset}, inside the data "
                                f"before it (which ends at byte {end})")
        blocks = -(-member.size // tarfile.BLOCKSIZE) if member.isreg() else 0  # as tarfile skips: files only
        end = member.offset_data + blocks * tarfile.BLOCKSIZE
        try:
            rel = _check_name(member.name)
        except UnsafeArchive as exc:
            raise UnsafeArchive(f"member {member.name!r}: {exc}") from None
        sparse = member.issparse() or any(k.startswith("GNU.sparse.") for k in member.pax_headers)
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE) or sparse:
            kind = ("a symlink" if member.issym() else "a hardlink" if member.islnk() else
                    "a fifo" if member.isfifo() else "a device" if member.isdev() else
                    "a sparse file" if sparse else "not a plain file")
            raise UnsafeArchive(f"member {member.name!r} is {kind}; a bundle holds plain files and folders only")
        # Resolved against the real destination: nothing we write can land outside it.
        target = (root / rel).resolve() if rel != PurePosixPath(".") else root
        if target != root and root not in target.parents:
            raise UnsafeArchive(f"member {member.name!r} points outside the destination")
        if member.isdir():
            if rel in files:
                raise UnsafeArchive(f"member {member.name!r} is both a file and a folder")
            dirs.add(rel)
        else:
            if rel in files or rel in dirs or rel == PurePosixPath("."):
                raise UnsafeArchive(f"member {member.name!r} appears twice")
            files.add(rel)
            total += member.size
            if total > max_total_bytes:
                raise UnsafeArchive(f"more than {max_total_bytes / 1024**3:.3g} GiB when unpacked "
                                    f"(member {member.name!r})")
        if any(parent in files for parent in rel.parents):
            raise UnsafeArchive(f"member {member.name!r} is inside a member that is a file")
        out.append((member, rel))


def safe_extract(archive: str | Path, dest: str | Path, *, max_members: int = MAX_MEMBERS,
                 max_total_bytes: int = MAX_TOTAL_BYTES, max_ratio: float | None = MAX_RATIO) -> Path:
    """Unpack a (gzip/bz2/xz) tar file into `dest` (created; it must be empty) after checking every member.

    Raises UnsafeArchive naming the archive and the first refused member; then nothing is left in
    `dest` (a folder this call created is removed) and nothing was ever written outside it.
    """
    archive, dest = Path(archive), Path(dest)
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise UnsafeArchive(f"{archive}: refusing to unpack into {dest}, which is not empty")
    cap = max_total_bytes
    if max_ratio is not None:  # a decompression bomb: far more unpacked than packed
        cap = min(cap, max(RATIO_FLOOR_BYTES, int(max_ratio * archive.stat().st_size)))
    written: list[Path] = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = check_members(tar, dest, max_members=max_members, max_total_bytes=cap)
            for member, rel in members:
                _write(tar, member, dest / rel, written)
    except UnsafeArchive as exc:
        _undo(dest, created, written)
        raise UnsafeArchive(f"{archive}: {exc}") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:  # truncated or not a tar file, disk full
        _undo(dest, created, written)
        raise UnsafeArchive(f"{archive}: cannot unpack ({type(exc).__name__}: {exc})") from None
    return dest


def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, written: list[Path]) -> None:
    # The folders above were checked to be plain folders inside dest (members are never symlinks), and
    # O_NOFOLLOW|O_EXCL refuses to write through anything that appeared since.
    for parent in reversed(path.parents):
        if not parent.exists():
            parent.mkdir(mode=0o755)
            written.append(parent)
    if member.isdir():
        if not path.exists():
            path.mkdir(mode=0o755)
            written.append(path)
        return
    # Owner read/write, everyone read, and exec only where the member had it: no setuid, setgid,
    # sticky or group/other write bits, whatever the archive says.
    mode = 0o755 if member.mode & stat.S_IXUSR else 0o644
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, mode)
    written.append(path)
    src = tar.extractfile(member)
    left = member.size
    with os.fdopen(fd, "wb") as f:
        while left > 0:  # never more than the header declared and the caps admitted
            chunk = src.read(min(_CHUNK, left)) if src is not None else b""
            if not chunk:
                raise EOFError(f"member {member.name!r} is cut short")
            f.write(chunk)
            left -= len(chunk)
    os.chmod(path, mode)  # the umask may have narrowed it; never widened beyond `mode`


def _undo(dest: Path, created: bool, written: list[Path]) -> None:
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for p in reversed(written):
        try:
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError:
            pass
