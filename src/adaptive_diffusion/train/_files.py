"""Files of a run written so that a kill at any moment leaves the old file or the new one."""

import os
import pathlib
import tempfile


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, renamed over
    `path` once complete (`os.replace` is atomic on POSIX): a process killed meanwhile
    leaves `path` as it was, never empty or half-written.

    **Raises:** `OSError` if the folder cannot be written (the temporary file is removed).
    """
    path = pathlib.Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
