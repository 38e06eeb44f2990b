"""The run directory: its folder layout and the manifest that records stages, counts and timings."""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from toolkit.core import untrusted_json
from toolkit.core.errors import ToolkitError
from toolkit.core.jsonio import atomic_write_json


RUN_PACKAGES = ("toolkit", "torch", "transformers", "peft", "llama_cpp_python", "openai", "gguf")


def versions(packages: tuple[str, ...] = RUN_PACKAGES) -> dict[str, str]:
    """Python and the installed versions of `packages` (default: those that shape a run's results)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# manifest["kind"] of every run folder `toolkit distill` makes: what lets --fresh delete a folder.
RUN_KIND = "toolkit-run"


def is_run_manifest(manifest: dict) -> bool:
    """A manifest written by `toolkit distill`: our mark, or (runs made before the mark) our own fields."""
    if manifest.get("kind") == RUN_KIND:
        return True
    versions_ = manifest.get("versions")
    return (isinstance(manifest.get("recipe_sha256"), str) and isinstance(manifest.get("stages"), dict)
            and isinstance(versions_, dict) and "toolkit" in versions_)


class RunDir:
    """`<output_dir>/<name>/`: one folder per round plus `manifest.json` at the top.

    The manifest holds, per stage, its status, wall-clock seconds and counts; a stage marked
    done is skipped on resume because its outputs were written atomically before the mark.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.manifest: dict[str, Any] = {}

    def open(self, recipe_digest: str, recipe_dump: dict, seed: int, fresh: bool,
             extends: Callable[[dict], str | None] | None = None) -> None:
        """Open or create the run folder for a recipe. A finished stage of another recipe refuses it, unless
        `extends(the run's recipe)` names what the new recipe only adds (more rounds): the run then goes on
        under the new recipe, and the manifest's `extended` list records the change."""
        # Only a folder that is ours (our manifest) or empty is deleted by --fresh or written into: a
        # name or output_dir that points at someone's documents must not cost them their files.
        ours = self._inspect()
        if fresh and ours:
            shutil.rmtree(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ToolkitError(f"cannot create run folder {self.root}: {exc.strerror}") from None
        if ours:
            self.sweep_temporaries()
        else:  # empty, or a first manifest write that was killed: only its temporary is there
            for tmp in self.root.glob(f".{self.manifest_path.name}.*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
        if self.manifest_path.is_file():
            self.manifest = self._read_manifest()
        if self.manifest.get("stages") and self.manifest.get("recipe_sha256") != recipe_digest:
            earlier = self.manifest.get("recipe")
            change = extends(earlier) if extends is not None and isinstance(earlier, dict) else None
            if change is None:
                raise ToolkitError(
                    f"{self.root} was made by a different recipe; use --fresh to start over "
                    f"or give the run another name (raising distill.rounds alone continues a run)"
                )
            self.manifest["recipe_sha256"], self.manifest["recipe"] = recipe_digest, recipe_dump
            self.manifest.setdefault("extended", []).append(
                {"change": change, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        if not self.manifest.get("stages"):  # nothing finished yet: (re)start under this recipe
            self.manifest = {"kind": RUN_KIND, "recipe_sha256": recipe_digest, "recipe": recipe_dump, "seed": seed,
                             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stages": {}}
        self.manifest["kind"] = RUN_KIND
        self.manifest["versions"] = versions()
        self.manifest["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
        self.save()

    def _inspect(self) -> bool:
        """True when the folder is a run folder of ours, False when it is absent or empty (or holds only our
        killed first manifest write); otherwise a ToolkitError naming the folder (exit 2)."""
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            raise ToolkitError(f"{self.root} is not a toolkit run folder (a link or a file): not touching it; "
                               f"give the run another name or output_dir")
        if not self.root.is_dir():
            return False
        manifest_tmp = f".{self.manifest_path.name}."
        try:
            entries = [p for p in self.root.iterdir()
                       if not (p.name.startswith(manifest_tmp) and p.name.endswith(".tmp"))]
        except OSError as exc:
            raise ToolkitError(f"cannot read run folder {self.root}: {exc.strerror}") from None
        if not entries:
            return False
        if self.manifest_path.is_file() and is_run_manifest(self._read_manifest()):
            return True
        raise ToolkitError(f"{self.root} is not a toolkit run folder (it holds files but no manifest.json of a "
                           f"toolkit run): not deleting or writing into it; give the run another name or output_dir")

    def _read_manifest(self) -> dict:
        # A run folder may come from elsewhere: too large, too deep, not JSON or not an object is one line.
        try:
            return untrusted_json.load(self.manifest_path)
        except OSError as exc:
            raise ToolkitError(f"cannot read the run manifest {self.manifest_path}: {exc.strerror}") from None
        except untrusted_json.UntrustedJSONError as exc:
            raise untrusted_json.UntrustedJSONError(
                exc.source, exc.reason, f"run manifest {self.manifest_path} is corrupt ({exc.reason}): move "
                f"{self.root} aside (nothing was deleted) and run again to start over; the teacher cache is "
                f"untouched") from None

    def sweep_temporaries(self) -> None:
        """Remove what a killed run was still writing: temp files and half-saved model folders."""
        for tmp in self.root.rglob("*.tmp"):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):  # a read-only folder: the save after says so
                    tmp.unlink(missing_ok=True)

    def round_dir(self, k: int) -> Path:
        path = self.root / f"round-{k}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def done(self, stage: str) -> bool:
        return self.manifest["stages"].get(stage, {}).get("status") == "done"

    def stage(self, stage: str) -> dict:
        return self.manifest["stages"].get(stage, {})

    def finish(self, stage: str, seconds: float, **info: Any) -> None:
        self.manifest["stages"][stage] = {"status": "done", "seconds": round(seconds, 2), **info}
        self.save()

    def forget(self, stage: str) -> None:
        """Drop `stage`'s record, so that it runs again (its settings changed since it finished)."""
        if self.manifest["stages"].pop(stage, None) is not None:
            self.save()

    def save(self) -> None:
        atomic_write_json(self.manifest_path, self.manifest)
