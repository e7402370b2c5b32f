"""The data layer's own error types: every decode, mask and reader failure names the file or folder at fault.

`DataError` subclasses ValueError and `DataNotFoundError` subclasses both DataError and FileNotFoundError, so
callers that caught ValueError / FileNotFoundError before these types existed still catch them. Errors about
argument values that do not depend on what is on disk (an unknown dataset name, a bad size) stay plain
ValueError / TypeError.
"""

from __future__ import annotations

import os


class DataError(ValueError):
    """A file or folder that cannot be read as the data it should be; `path` is that file or folder.

    The message always contains the path (it is appended when the message does not already hold it).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        if self.path is not None and self.path not in message:
            message = f"{message} ({self.path})"
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.args[0], self.path))


class DataNotFoundError(DataError, FileNotFoundError):
    """A file or folder the layout requires is missing (also a FileNotFoundError)."""
