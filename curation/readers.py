"""Readers of raw image-text formats: each record of a source becomes exactly one ``RawRow``.

The formats are img2dataset's output formats (https://github.com/rom1504/img2dataset, "output_format"):

- ``webdataset``: ``{shard:05d}.tar`` shards of ``<key>.jpg|jpeg|png|webp``, ``<key>.txt`` and
  ``<key>.json`` members, streamed with ``tarfile`` over fsspec and never extracted to disk. Members
  of one sample are adjacent and share the key before the first dot of their base name (WebDataset's
  rule). A sample with an absolute, ``..`` or link member is quarantined whole as ``unsafe_path``.
  The sibling ``.parquet`` is not read: the tar is the truth.
- ``parquet``: an image column holding encoded bytes, a path/URL (relative paths resolve against the
  Parquet file's folder) or a Hugging Face ``{"bytes", "path"}`` struct, and a caption column.
- ``folder``: ``name.jpg`` + ``name.txt`` (+ optional ``name.json``) pairs, searched recursively
  (img2dataset's ``files`` output).
- ``csv``: CSV or TSV (the delimiter follows the extension) with a header row, a caption column and
  an image path/URL column.

The uid of a row is the ``uid_column`` value when configured; else img2dataset's ``key`` (the tar
member key, a ``key`` column, or the ``key`` field of a folder sample's ``.json``); else the sha256 of
the image bytes and the caption (``curation.validation.content_uid``).

Whole-file problems never stop the stage: a configured column missing from one Parquet/CSV file
quarantines every row of that file as ``missing_column`` (other files of the source may have it), and
a file that cannot be opened or parsed past some point (a missing shard, a truncated tar, a corrupt
Parquet footer) yields one ``unreadable_file`` row for its unread rest, after its good rows. Only a
source block that cannot be planned at all (unknown format, no path, nothing to read) raises
``ValueError``, before any work starts.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal, NamedTuple

import fsspec
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from curation.validation import RawRow, RowProblem


@dataclass(frozen=True)
class SourceConfig:
    """One raw pool to ingest; several combine (their partitions are planned together)."""

    format: Literal["synthetic", "webdataset", "parquet", "folder", "csv"] = "synthetic"
    """"synthetic" (the world of ``IngestConfig.world``), "webdataset", "parquet", "folder" or "csv"."""
    path: str = ""
    """local path or fsspec URL: a file, a folder, a glob ("data/*.tar") or brace ranges
    ("s3://bucket/{00000..00099}.tar")."""
    image_column: str = "image"
    """parquet/csv: column of image bytes or an image path/URL. A column absent from a file quarantines
    every row of that file as "missing_column"."""
    text_column: str = "text"
    """parquet/csv column (webdataset/folder: .json field used when there is no .txt) holding the caption;
    img2dataset writes "caption"."""
    uid_column: str | None = None
    """column (webdataset/folder: .json field) of the uid; None: img2dataset's key, else a content hash."""
    files_per_partition: int = 1
    """webdataset/parquet/csv: files read by one partition (one Ray task)."""
    pairs_per_partition: int = 10_000
    """folder: samples (image + caption pairs) read by one partition."""
    allowed_roots: tuple[str, ...] = ()
    """parquet/csv/folder: the folders or bucket prefixes (local paths or URLs) image files may be read from; an
    image path or URL anywhere else (``..``, an absolute path, a symlink out, another bucket) quarantines its row
    as "path_outside_roots". Empty: the source's own folder (a local source) or bucket (an object store)."""
    fetch_urls: bool = False
    """parquet/csv: fetch image cells that are http(s) URLs (img2dataset-style URL lists). Off: such a row is
    quarantined as "path_outside_roots", so a pool cannot make the pipeline reach a host it names."""


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
"""Image members/files, in the order a sample with several picks its image."""

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")
_TAR_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


class FolderSample(NamedTuple):
    """The files of one stem of a folder source."""

    stem: str
    images: tuple[str, ...]
    text: str | None
    meta: str | None


# --- paths ------------------------------------------------------------------------------------

def expand_braces(pattern: str) -> list[str]:
    """Brace expansion as WebDataset URLs use it: ``{00000..00099}`` (keeping zero padding), ``{a,b}``."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[:match.start()], match.group(1), pattern[match.end():]
    items = _brace_items(body)
    if items is None:  # braces that expand to nothing stay literal
        return [head + "{" + body + "}" + rest for rest in expand_braces(tail)]
    return [out for item in items for out in expand_braces(head + item + tail)]


def _brace_items(body: str) -> list[str] | None:
    if (span := _RANGE.fullmatch(body)) is not None:
        a, b = span.groups()
        padded = any(len(x.lstrip("-")) > 1 and x.lstrip("-").startswith("0") for x in (a, b))
        width = max(len(a), len(b)) if padded else 0
        step = 1 if int(b) >= int(a) else -1
        return [str(i).zfill(width) for i in range(int(a), int(b) + step, step)]
    return body.split(",") if "," in body else None


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def list_files(path: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files of a source path (absolute paths or full URLs): a file, a glob, or a folder's files ending
    in one of ``suffixes`` (recursively); brace patterns expand first. A named file need not exist:
    reading it then quarantines it as ``unreadable_file``, so a missing shard shows."""
    files: list[str] = []
    for pattern in expand_braces(path):
        fs, root = fsspec.core.url_to_fs(pattern)
        if any(c in root for c in "*?["):
            found = fs.glob(root)
        elif fs.isdir(root):
            found = [p for p in fs.find(root) if p.lower().endswith(suffixes)]
        else:
            found = [root]
        files.extend(_url(fs, p) for p in sorted(found))
    return files


def read_bytes(url: str) -> bytes:
    with fsspec.open(url, "rb") as f:
        return f.read()


def resolve(base: str, path: str) -> str:
    """A path cell as a URL: absolute paths and URLs as they are, others relative to the table's folder."""
    return path if "://" in path or posixpath.isabs(path) else posixpath.join(base, path)


# --- where image files may come from ----------------------------------------------------------

REMOTE_SCHEMES = ("http", "https")


class Roots(NamedTuple):
    """Where a source may read image files from: normalised prefixes (local real paths, or ``scheme://...``
    URLs), and whether http(s) URLs are fetched."""

    prefixes: tuple[str, ...]
    fetch_urls: bool


def _static_prefix(path: str) -> str:
    """The part of a source path before its first glob or brace character."""
    cut = min((i for i, c in enumerate(path) if c in "*?[{"), default=len(path))
    return path[:cut]


def _normalised(url: str) -> str:
    """A local path as its real path (symlinks and ``..`` resolved); a URL with its path's ``..`` collapsed."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return os.path.realpath(url)
    if scheme == "file":
        return os.path.realpath(rest)
    return f"{scheme}://{posixpath.normpath(rest)}"


def default_root(path: str) -> str:
    """A source's own folder (a local source) or bucket (an object-store source)."""
    prefix = _static_prefix(path)
    scheme, sep, rest = prefix.partition("://")
    if sep and scheme != "file":
        return f"{scheme}://{rest.split('/', 1)[0]}"
    local = rest if sep else prefix
    return local if os.path.isdir(local) else (os.path.dirname(local.rstrip("/")) or ".")


@functools.lru_cache(maxsize=64)
def source_roots(src: SourceConfig) -> Roots:
    """The source's :class:`Roots`, resolved once per process and source (not per file or folder sample)."""
    return Roots(tuple(_normalised(r) for r in (src.allowed_roots or (default_root(src.path),))), src.fetch_urls)


def check_within(url: str, roots: Roots) -> None:
    """Raise RowProblem("path_outside_roots") unless ``url`` lies under one of ``roots``."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme in REMOTE_SCHEMES:
        if roots.fetch_urls:
            return
        raise RowProblem("path_outside_roots", f"{url}: remote URLs are not fetched (the source's fetch_urls is off)")
    target = _normalised(url)
    if not any(target == root or target.startswith(root.rstrip("/") + "/") for root in roots.prefixes):
        raise RowProblem("path_outside_roots", f"{url} resolves to {target}, outside {', '.join(roots.prefixes)}")


# --- table cells ------------------------------------------------------------------------------

def fetch_image(cell: object, base: str, roots: Roots) -> bytes:
    """Image bytes of a table cell: bytes, a path/URL, or a Hugging Face ``{"bytes", "path"}`` struct."""
    if isinstance(cell, dict):
        cell = cell.get("bytes") if cell.get("bytes") is not None else cell.get("path")
    if isinstance(cell, bytes):
        return cell
    if cell is None or cell == "":
        raise RowProblem("missing_image", "empty image cell")
    if not isinstance(cell, str):
        raise RowProblem("wrong_type", f"image cell must be bytes or a path, got {type(cell).__name__}")
    url = resolve(base, cell)
    check_within(url, roots)
    try:
        return read_bytes(url)
    except Exception as err:  # not found, a folder, an unreachable URL: the row has no image
        raise RowProblem("missing_image", f"{url}: {type(err).__name__}: {err}") from err


def table_row(row_id: str, text: object, image_cell: object, uid: object, uid_column: str | None,
              base: str, roots: Roots) -> RawRow:
    """The RawRow of one Parquet/CSV record (the image fetched when the cell is a path)."""
    if uid_column is not None and uid is None:
        return RawRow(row_id, text, None, problem=("wrong_type", f"uid column {uid_column!r} is null"))
    try:
        image = fetch_image(image_cell, base, roots)
    except RowProblem as problem:
        return RawRow(row_id, text, None, uid, (problem.reason, problem.detail))
    return RawRow(row_id, text, image, uid)


def whole_file_problem(url: str, rows: int, reason: str, detail: str) -> Iterator[RawRow]:
    """Every row of a file quarantined for the same reason (a configured column it lacks)."""
    for row in range(rows):
        yield RawRow(f"{url}#{row}", None, None, problem=(reason, detail))


# --- parquet ----------------------------------------------------------------------------------

def read_parquet(url: str, src: SourceConfig) -> Iterator[RawRow]:
    with fsspec.open(url, "rb") as f:
        table = pq.ParquetFile(f)
        names = table.schema_arrow.names
        uid_column = src.uid_column or ("key" if "key" in names else None)
        columns = list(dict.fromkeys(c for c in (src.image_column, src.text_column, uid_column) if c))
        absent = [c for c in columns if c not in names]
        if absent:
            detail = f"column {absent[0]!r} not in {url} (columns: {', '.join(names)})"
            yield from whole_file_problem(url, table.metadata.num_rows, "missing_column", detail)
            return
        row, base, roots = 0, posixpath.dirname(url), source_roots(src)
        for batch in table.iter_batches(batch_size=256, columns=columns):
            cells = batch.to_pydict()
            for i in range(batch.num_rows):
                uid = cells[uid_column][i] if uid_column else None
                yield table_row(f"{url}#{row}", cells[src.text_column][i], cells[src.image_column][i], uid,
                                uid_column, base, roots)
                row += 1


# --- csv / tsv --------------------------------------------------------------------------------

def _csv_records(reader: Iterator[list[str]]) -> Iterator[list[str] | csv.Error]:
    """Records, with a parser error in place of a record it rejects (the parser resumes on the next line)."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield err


def read_csv(url: str, src: SourceConfig) -> Iterator[RawRow]:
    delimiter = "\t" if url.lower().endswith(".tsv") else ","
    with fsspec.open(url, "rb") as raw:
        # Undecodable bytes become lone surrogates, so one bad caption quarantines one row, not the file.
        lines = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        records = _csv_records(csv.reader(lines, delimiter=delimiter))
        header = next(records, None)
        if header is None:
            return
        if isinstance(header, csv.Error):
            raise header
        yield from _csv_rows(url, src, header, records)


def _csv_rows(url: str, src: SourceConfig, header: list[str], records: Iterator) -> Iterator[RawRow]:
    index = {name: i for i, name in enumerate(header)}
    uid_column = src.uid_column or ("key" if "key" in index else None)
    absent = [c for c in (src.image_column, src.text_column, uid_column) if c and c not in index]
    base, roots = posixpath.dirname(url), source_roots(src)
    for row, record in enumerate(r for r in records if r != []):  # blank lines are not records
        row_id = f"{url}#{row}"
        if absent:
            detail = f"column {absent[0]!r} not in {url} (header: {', '.join(header)})"
            yield RawRow(row_id, None, None, problem=("missing_column", detail))
        elif isinstance(record, csv.Error):
            yield RawRow(row_id, None, None, problem=("malformed_row", str(record)))
        elif len(record) != len(header):
            yield RawRow(row_id, None, None,
                         problem=("malformed_row", f"{len(record)} fields, the header has {len(header)}"))
        else:
            uid = record[index[uid_column]] if uid_column else None
            yield table_row(row_id, record[index[src.text_column]], record[index[src.image_column]], uid,
                            uid_column, base, roots)


# --- webdataset tars --------------------------------------------------------------------------

def unsafe_member(member: tarfile.TarInfo) -> str | None:
    """Why extracting this member could write outside its folder (or is not plain data); None if safe."""
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if not member.isfile():
        return f"special file (tar type {member.type!r})"
    name = member.name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "path climbs out with '..'"
    return None


def split_key(name: str) -> tuple[str, str]:
    """(sample key, lower-case extension) of a member name; WebDataset's rule: first dot of the base name."""
    match = _TAR_KEY.match(name)
    return (match.group(1), match.group(2).lower()) if match else (name, "")


def tar_samples(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes], str | None]]:
    """(key, {extension: bytes}, why unsafe or None) of each run of adjacent members sharing a key."""
    key, files, unsafe = None, {}, None
    for member in tar:
        if member.isdir():
            continue
        member_key, ext = split_key(member.name)
        if member_key != key:
            if key is not None:
                yield key, files, unsafe
            key, files, unsafe = member_key, {}, None
        why = unsafe_member(member)
        if why is not None:
            unsafe = unsafe or f"{member.name!r}: {why}"
        elif ext not in files:
            files[ext] = tar.extractfile(member).read()
    if key is not None:
        yield key, files, unsafe


def json_meta(data: bytes | None, name: str) -> dict:
    """A sample's .json metadata as a dict ({} when there is none)."""
    if data is None:
        return {}
    try:
        meta = json.loads(data)
    except ValueError as err:
        raise RowProblem("wrong_type", f"{name} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise RowProblem("wrong_type", f"{name} is not a JSON object")
    return meta


def meta_uid(meta: dict, uid_column: str | None, default: object, name: str) -> object:
    """The uid from .json metadata: the configured field (missing_column if absent), else ``default``."""
    if uid_column is None:
        return meta.get("key", default)
    if uid_column not in meta:
        raise RowProblem("missing_column", f"field {uid_column!r} not in {name}")
    if meta[uid_column] is None:
        raise RowProblem("wrong_type", f"field {uid_column!r} of {name} is null")
    return meta[uid_column]


def tar_row(url: str, key: str, files: dict[str, bytes], unsafe: str | None, src: SourceConfig) -> RawRow:
    row_id = f"{url}#{key}"
    if unsafe is not None:
        return RawRow(row_id, None, None, problem=("unsafe_path", unsafe))
    try:
        meta = json_meta(files.get("json"), f"{key}.json")
        uid = meta_uid(meta, src.uid_column, key, f"{key}.json")
    except RowProblem as problem:
        return RawRow(row_id, None, None, problem=(problem.reason, problem.detail))
    image = next((files[ext] for ext in IMAGE_EXTENSIONS if ext in files), None)
    text = files.get("txt", meta.get(src.text_column))
    if image is None:
        return RawRow(row_id, text, None, uid, ("missing_image", f"no image member for key {key!r}"))
    if text is None:
        return RawRow(row_id, None, image, uid, ("missing_caption", f"no {key}.txt member"))
    return RawRow(row_id, text, image, uid)


def check_tar_end(tar: tarfile.TarFile, size: int) -> None:
    """Raise if a plain tar stops before its end-of-archive block: tarfile's stream mode ends quietly
    on a header cut short (or missing), which would hide a truncated shard's lost samples."""
    if getattr(tar.fileobj, "comptype", "tar") == "tar" and size - tar.offset < tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"archive of {size} bytes ends inside or before the header at byte {tar.offset}")


def read_tar(url: str, src: SourceConfig) -> Iterator[RawRow]:
    fs, path = fsspec.core.url_to_fs(url)
    size = fs.size(path)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for key, files, unsafe in tar_samples(tar):
            yield tar_row(url, key, files, unsafe, src)
        check_tar_end(tar, size)


# --- folders of image + txt pairs -------------------------------------------------------------

def plan_folder(path: str) -> list[FolderSample]:
    """Every stem of a folder (recursively) with its image, .txt and .json files, in path order."""
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.isdir(root):
        raise ValueError(f"folder source {path!r} is not a folder")
    groups: dict[str, dict] = {}
    for file in sorted(fs.find(root)):
        stem, ext = posixpath.splitext(file)
        ext = ext[1:].lower()
        if ext in IMAGE_EXTENSIONS:
            groups.setdefault(stem, {}).setdefault("images", []).append(_url(fs, file))
        elif ext in ("txt", "json"):
            groups.setdefault(stem, {})[ext] = _url(fs, file)
    return [FolderSample(_url(fs, stem), tuple(g.get("images", ())), g.get("txt"), g.get("json"))
            for stem, g in sorted(groups.items())]


def folder_rows(sample: FolderSample, src: SourceConfig) -> Iterator[RawRow]:
    """One row per image of a stem (a caption without an image is one ``missing_image`` row)."""
    try:
        text = read_bytes(sample.text) if sample.text else None
        meta = json_meta(read_bytes(sample.meta) if sample.meta else None, sample.meta or "")
        uid = meta_uid(meta, src.uid_column, None, sample.meta or f"{sample.stem}.json")
        problem = None if text is not None else ("missing_caption", f"no {sample.stem}.txt beside the image")
    except RowProblem as err:
        text, uid, problem = None, None, (err.reason, err.detail)
    except Exception as err:  # a .txt or .json that cannot be read
        text, uid, problem = None, None, ("unreadable_file", f"{type(err).__name__}: {err}")
    if not sample.images:
        missing = ("missing_image", f"no image beside {sample.text or sample.meta}")
        yield RawRow(sample.stem, text, None, uid, problem or missing)
    roots = source_roots(src)
    for image_url in sample.images:
        if problem is not None:
            yield RawRow(image_url, text, None, uid, problem)
            continue
        try:
            check_within(image_url, roots)  # a symlink in the folder that points out of it
        except RowProblem as outside:
            yield RawRow(image_url, text, None, uid, (outside.reason, outside.detail))
            continue
        try:
            yield RawRow(image_url, text, read_bytes(image_url), uid)
        except Exception as err:
            yield RawRow(image_url, text, None, uid, ("missing_image", f"{type(err).__name__}: {err}"))


# --- formats ----------------------------------------------------------------------------------

FileReader = Callable[[str, SourceConfig], Iterator[RawRow]]
FILE_FORMATS: dict[str, tuple[tuple[str, ...], FileReader]] = {
    "webdataset": ((".tar",), read_tar),
    "parquet": ((".parquet",), read_parquet),
    "csv": ((".csv", ".tsv"), read_csv),
}
"""format -> (file suffixes searched for in a folder, reader of one file)."""

FORMATS = (*FILE_FORMATS, "folder")
"""Every format these readers handle (the synthetic world is ``curation.sources``' own)."""


def guarded(url: str, rows: Iterator[RawRow]) -> Iterator[RawRow]:
    """The rows of one file, then one ``unreadable_file`` row if reading stopped on an error."""
    count = 0
    try:
        for row in rows:
            count += 1
            yield row
    except Exception as err:
        detail = f"stopped after {count} rows: {type(err).__name__}: {err}"
        yield RawRow(f"{url}#rest", None, None, problem=("unreadable_file", detail))


def plan_units(src: SourceConfig) -> list[tuple]:
    """A source's partitions: tuples of file URLs, or of FolderSamples for a folder."""
    if src.format == "folder":
        units: list = plan_folder(src.path)
        size = max(1, src.pairs_per_partition)
    else:
        units = list_files(src.path, FILE_FORMATS[src.format][0])
        size = max(1, src.files_per_partition)
    if not units:
        raise ValueError(f"{src.format} source {src.path!r} holds nothing to read")
    return [tuple(units[i:i + size]) for i in range(0, len(units), size)]


def iter_rows(src: SourceConfig, units: tuple) -> Iterator[RawRow]:
    """Every record of one partition, as RawRows."""
    if src.format == "folder":
        for sample in units:
            yield from guarded(sample.stem, folder_rows(sample, src))
        return
    read = FILE_FORMATS[src.format][1]
    for url in units:
        yield from guarded(url, read(url, src))
