"""Where llama.cpp's own binaries (llama-server, llama-bench, llama-batched-bench, llama-quantize) are: PATH first, then our build."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from toolkit.core.defaults import user_cache
from toolkit.core.errors import ModelError

LLAMA_CPP_VERSION = "0.3.36"  # the llama-cpp-python release whose vendored llama.cpp scripts/build-llama-tools.sh builds


def tools_dir() -> Path:
    """The folder scripts/build-llama-tools.sh installs into ($TOOLKIT_LLAMA_TOOLS overrides).

    Not under $TOOLKIT_CACHE: that one holds per-run teacher caches (tests point it at temporary
    folders), while a 20-minute build is shared by every run of the machine.
    """
    if os.environ.get("TOOLKIT_LLAMA_TOOLS"):
        return Path(os.environ["TOOLKIT_LLAMA_TOOLS"]).expanduser()
    return user_cache() / f"llama.cpp-{LLAMA_CPP_VERSION}"


def find_tool(name: str) -> Path | None:
    """The user's own `name` on PATH if any, else the cached build, else None."""
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    built = tools_dir() / "bin" / name
    return built if built.is_file() and os.access(built, os.X_OK) else None


def require_tool(name: str) -> Path:
    """Like find_tool, but a missing binary is a ModelError that says how to build it."""
    path = find_tool(name)
    if path is None:
        raise ModelError(f"{name} not found on PATH or in {tools_dir() / 'bin'}; build it once with "
                         "scripts/build-llama-tools.sh (about 20 minutes on 2 cores)")
    return path
