"""Read-only fsspec filesystems through which ``curaclip stats`` lets DuckDB see a workdir's files.

DuckDB's ``allowed_directories`` grants every file operation under a prefix: reading, but also creating and
overwriting (measured on DuckDB 2.0.1: with ``allowed_directories=[<workdir>]`` and external access off,
``COPY (SELECT 1) TO '<workdir>/x.csv'`` and ``EXPORT DATABASE '<workdir>/x'`` still write). So the catalog's
queries do not reach the workdir through DuckDB's own local filesystem (it is disabled for them,
``disabled_filesystems='LocalFileSystem'``) but through one of these, registered with the connection: they
open files for reading only and refuse every call that would create, change, move or remove one.

The local one also keeps every path inside the workdir after symlinks are resolved: DuckDB checks
``allowed_directories`` against the path as written (``..`` folded) and cannot see that a link inside the
workdir points out of it, since to DuckDB this is a foreign filesystem.
"""

from __future__ import annotations

import functools
import os
import re

import fsspec
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "curaclip-ro"
"""The URL scheme of a local workdir seen through :class:`ReadOnlyLocalFileSystem`: ``curaclip-ro:///abs/path``."""

READ_MODES = ("rb",)
"""The only mode DuckDB's Python filesystem opens a file in to read it."""


class ReadOnlyFiles:
    """Mixin before an fsspec filesystem class: ``open`` for reading only; every writing call refused."""

    def open(self, path, mode="rb", *args, **kwargs):
        if mode not in READ_MODES:
            raise PermissionError(f"{path}: the workdir is read-only for curaclip stats (open mode {mode!r})")
        return super().open(path, mode, *args, **kwargs)

    def _refuse(self, path="", *args, **kwargs):
        raise PermissionError(f"{path}: the workdir is read-only for curaclip stats")

    mkdir = makedirs = rm = rm_file = rmdir = mv = touch = cp_file = copy = put = put_file = pipe = pipe_file \
        = _refuse


class ReadOnlyLocalFileSystem(ReadOnlyFiles, LocalFileSystem):
    """A local folder ``root`` (already resolved), read-only, under :data:`PROTOCOL`; a path that leaves it
    once symlinks are resolved is refused as if it did not exist for us."""

    protocol = (PROTOCOL,)
    root_marker = "/"

    def __init__(self, root: str, **kwargs):
        super().__init__(**kwargs)
        self.root = root.rstrip("/") or "/"

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3:]
        return super()._strip_protocol(path)

    def _outside(self, path) -> str | None:
        """The resolved path of ``path`` (a URL, a path or a ``scandir`` entry) if it is outside the root."""
        real = os.path.realpath(path.path if isinstance(path, os.DirEntry) else self._strip_protocol(path))
        return None if real == self.root or real.startswith(self.root + "/") else real

    def _check(self, path) -> None:
        if (real := self._outside(path)) is not None:
            raise PermissionError(f"{path}: resolves outside the workdir ({real})")

    def open(self, path, mode="rb", *args, **kwargs):
        if mode in READ_MODES:
            self._check(path)
        return super().open(path, mode, *args, **kwargs)

    def ls(self, path, detail=False, **kwargs):
        self._check(path)
        return super().ls(path, detail=detail, **kwargs)

    def glob(self, path, **kwargs):
        literal = re.split(r"[*?\[]", self._strip_protocol(path), maxsplit=1)
        self._check(literal[0] if len(literal) == 1 else os.path.dirname(literal[0]))  # the folder it lists
        return super().glob(path, **kwargs)

    def info(self, path, **kwargs):
        if isinstance(path, os.DirEntry) and self._outside(path) is not None:
            raise FileNotFoundError(path.path)  # a listing leaves out a link to outside (LocalFileSystem.ls)
        self._check(path)
        return super().info(path, **kwargs)


@functools.cache
def _read_only_class(cls: type) -> type:
    return type(f"ReadOnly{cls.__name__}", (ReadOnlyFiles, cls), {})


def read_only(fs: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem:
    """The same store as ``fs`` (an object store's: same protocol, same options, credentials from the
    environment as ``fs`` had them), read-only."""
    return _read_only_class(type(fs))(**fs.storage_options)
