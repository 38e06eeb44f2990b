"""Write failures (a full disk, a file-size limit, a read-only or unwritable folder) as one clear line."""
from __future__ import annotations

import errno
import os
import re

# errno values a user fixes by freeing space or pointing the run elsewhere.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.ENOTDIR}
# Libraries that write through Rust or C (safetensors, tokenizers) report the OS error in their text.
_OS_ERROR_TEXT = re.compile(r"os error (\d+)")


def write_failure(exc: BaseException) -> str | None:
    """The reason a write failed when `exc` is one the user can fix, else None."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot write{where}: {exc.strerror or os.strerror(exc.errno)}"
    match = _OS_ERROR_TEXT.search(str(exc))
    if match and int(match.group(1)) in WRITE_ERRNOS:
        return f"cannot write: {os.strerror(int(match.group(1)))}"
    return None
