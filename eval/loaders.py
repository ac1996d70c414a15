"""Real datasets into the dataset protocol: image folders, CSV/TSV caption files and CLIP_benchmark's WebDataset
layout (the ``folder:``, ``csv:`` and ``wds:`` sources of :mod:`eval.config`).

- ``folder:DIR``: a :class:`~eval.datasets.ClassificationSet` read as torchvision's ``ImageFolder`` reads it
  (``find_classes`` and ``make_dataset`` in torchvision/datasets/folder.py), so rows and class indices line up
  with CLIP_benchmark's, which builds its folder datasets with ``ImageFolder``. DIR is one split, or holds
  ``train/`` and ``test/`` (and ``val/`` or ``validation/``), each an ImageFolder of the same classes.
- ``csv:FILE``: a :class:`~eval.datasets.RetrievalSet` of (image, caption) rows, with open_clip's column names
  (``filepath``, ``title``) or ``image``, ``caption``; rows naming one image are its captions.
- ``wds:URL``: a local directory laid out as CLIP_benchmark's ``build_wds_dataset`` reads it
  (clip_benchmark/datasets/builder.py; written by clip_benchmark/webdataset_builder.py): ``test/`` (and
  ``train/``) of ``{0..n-1}.tar`` shards counted by ``nshards.txt``, ``classnames.txt``,
  ``zeroshot_classification_templates.txt`` and ``dataset_type.txt`` at the root; a sample is a webp/png/jpg
  image with a ``.cls`` (class index) or a ``.txt`` (captions, one a line).

Nothing is read outside the root a user gave, nor through a symlink: such a row is rejected unread. A row whose
file is missing or whose header no image decoder recognises is rejected too, with its reason, so
``len(images) + len(rejected)`` is the number of rows seen (CSV: the number of caption rows, the captions of
the kept images plus the rejected rows). Images stay on disk (:class:`LazyImages`); the fingerprint hashes
each row's path, size and mtime, so the feature cache drops a set whose files changed.

Where this departs from the code it follows, and why:

- symlinks are never followed (ImageFolder's walk follows them): a linked file or sub-folder is a rejected row,
  a linked class or split folder an error (skipping it would shift the class indices);
- images are checked from their header only (``PIL.Image.open``), not decoded: a full decode of every image at
  load time would cost as much as the encoding that follows;
- without templates of its own or given, a set gets DEFAULT_TEMPLATES; CLIP_benchmark's fallback for a name
  missing from its en_zeroshot_classification_templates.json is that file's 80 'imagenet1k' templates, and it
  refuses a wds set without zeroshot_classification_templates.txt: for figures comparable with its, pass its
  templates as spec.templates;
- wds: nshards.txt may be absent (every numbered .tar of the split then), the dataset type may be inferred
  from the samples, a sample it cannot use is rejected where webdataset would raise, and blank caption lines
  are dropped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, overload

import numpy as np
from PIL import Image

from eval.config import DatasetSpec, EvalConfig
from eval.datasets import ClassificationSet, EvalDataset, RetrievalSet

LOADER_VERSION = 1
"""Bumped when what a loader makes of the same files changes, so cached features of older sets are dropped."""

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision.datasets.folder.IMG_EXTENSIONS: the files ImageFolder takes (matched lower-cased)."""

WDS_IMAGE_SUFFIXES: tuple[str, ...] = ("webp", "png", "jpg", "jpeg")
"""A sample's image member, first found first (CLIP_benchmark's ``to_tuple(["webp", "png", "jpg", "jpeg"], ...)``)."""

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {c}.",)
"""Templates of a set that brings none and is given none (CLIP's single prompt; DatasetSpec.templates)."""

SPLIT_FOLDERS: dict[str, str] = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
"""Split sub-folder -> split name, for folders and wds roots that come with their own split."""

TEST_FRACTION = 0.5
"""Of each class of a set with no split of its own: the share scored by kNN / the probe / few-shot."""

VALIDATION_SHARE = 5
"""One in this many of the rest of a class chooses the probe's penalty and GDA's alpha (20%), the others fit."""

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_WDS_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: members it never groups


class ImageRef(NamedTuple):
    """Where one encoded image lies: a whole file, or a member of an (uncompressed) tar shard."""

    path: str
    """the checked absolute path that is read."""
    offset: int = 0
    """byte offset of the image in `path`."""
    size: int = -1
    """bytes to read from `offset`; -1 reads the whole file."""


def read_image(ref: ImageRef) -> bytes:
    """The encoded bytes of one image (never through a symlink, even one made after loading)."""
    with os.fdopen(os.open(ref.path, os.O_RDONLY | _NOFOLLOW), "rb") as f:
        f.seek(ref.offset)
        data = f.read() if ref.size < 0 else f.read(ref.size)
    if ref.size >= 0 and len(data) != ref.size:
        raise OSError(f"{ref.path}: {len(data)} of {ref.size} bytes at offset {ref.offset} (shard rewritten?)")
    return data


class LazyImages(Sequence[bytes]):
    """Encoded images read from disk on access: a 50k-image folder holds 50k paths, not 50k files, in memory.
    A slice is another LazyImages (nothing read until its items are)."""

    def __init__(self, refs: Sequence[ImageRef]) -> None:
        self.refs: tuple[ImageRef, ...] = tuple(refs)

    def __len__(self) -> int:
        return len(self.refs)

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> LazyImages: ...

    def __getitem__(self, index: int | slice) -> bytes | LazyImages:
        if isinstance(index, slice):
            return LazyImages(self.refs[index])
        return read_image(self.refs[index])

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} images)"


# ---------------------------------------------------------------------------------------------- files and checks

class _Checked(NamedTuple):
    """One image file after its checks: where to read it and its stamp, or why it is rejected."""

    ref: ImageRef | None
    stamp: tuple[str, int, int] | None
    """(path relative to the root, size, mtime_ns): what the fingerprint hashes."""
    reason: str | None


def _inside(root: str, path: str) -> tuple[str, str | None]:
    """`path` (relative to `root`, or absolute) normalised, and why it must not be read, or None. `root` is a
    realpath; the normalised path is the one read, so a '..' never walks out through a link."""
    full = os.path.normpath(os.path.join(root, path))
    if os.path.commonpath([root, full]) != root:
        return full, f"outside the dataset root {root}"
    if os.path.realpath(full) != full:
        return full, "a symlink (or a path through one): never followed"
    return full, None


def _header_problem(fp) -> str | None:
    """Why an image decoder would refuse these bytes, from the header alone (PIL's `Image.open` reads a few KB
    and decodes no pixels; a file truncated after its header passes and fails at encoding)."""
    try:
        Image.open(fp).close()
    except Exception as exc:  # PIL's plugins raise OSError, SyntaxError, ValueError, DecompressionBombError...
        return f"not a decodable image ({type(exc).__name__}: {exc})"
    return None


def _check_file(root: str, path: str) -> _Checked:
    """An image file under `root`: checked for escape, symlink, existence, kind and header, then stamped."""
    full, reason = _inside(root, path)
    if reason:
        return _Checked(None, None, reason)
    try:
        fd = os.open(full, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK)  # NONBLOCK: a FIFO must not hang the load
    except FileNotFoundError:
        return _Checked(None, None, "missing file")
    except OSError as exc:
        return _Checked(None, None, f"unreadable ({exc.strerror})")
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        reason = _header_problem(f) if stat.S_ISREG(st.st_mode) else "not a regular file"
    if reason:
        return _Checked(None, None, reason)
    return _Checked(ImageRef(full), (os.path.relpath(full, root), st.st_size, st.st_mtime_ns), None)


def _root(path: str, spec: DatasetSpec, *, directory: bool) -> str:
    """The realpath of a source's root (the user gave it: it may itself be a link), checked to exist."""
    if not path:
        raise ValueError(f"dataset {spec.source!r}: no path after the prefix")
    real = os.path.realpath(os.path.expanduser(path))
    if not (os.path.isdir(real) if directory else os.path.isfile(real)):
        raise ValueError(f"dataset {spec.source!r}: {path} is not an existing {'directory' if directory else 'file'}")
    return real


def _read_text(root: str, name: str, spec: DatasetSpec) -> str | None:
    """A metadata file at a dataset's root, or None when absent (refused through a symlink, as images are)."""
    full, reason = _inside(root, name)
    if not os.path.lexists(full):
        return None
    if reason:
        raise ValueError(f"dataset {spec.source!r}: {name} is {reason}")
    return Path(full).read_text(encoding="utf-8")


def _fingerprint(kind: str, rows: list, meta: dict) -> str:
    """sha256 over the loader version, the source kind, each row's stamp and the set's text (16 hex digits)."""
    text = json.dumps([LOADER_VERSION, kind, rows, meta], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _default_name(spec: DatasetSpec, root: str) -> str:
    return spec.name or (Path(root).stem if os.path.isfile(root) else Path(root).name)


# -------------------------------------------------------------------------------------- class names and templates

def parse_classnames(text: str, where: str) -> tuple[str, ...]:
    """One class name a line, in class-index order (trailing blank lines ignored; an inner one is an error)."""
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or not all(names):
        empty = next((i + 1 for i, n in enumerate(names) if not n), 1)
        raise ValueError(f"{where}: class names must be one per line, none empty (line {empty} is)")
    return tuple(names)


def validate_templates(templates: object, where: str) -> tuple[str, ...]:
    """A non-empty list of prompt strings, each with '{c}' or a single '{}' for the class name."""
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise ValueError(f"{where}: templates must be a non-empty list of strings, got {templates!r:.80}")
    for template in templates:
        try:
            ok = "{c}" in template or template.format("x") != template
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{where}: template {template!r} needs '{{c}}' (or one '{{}}') for the class name")
    return tuple(templates)


def _classnames(spec: DatasetSpec, own: tuple[str, ...] | None, num_classes: int | None = None
                ) -> tuple[str, ...]:
    """spec.classnames (a file) over the dataset's own names. They must number `num_classes` (a folder's class
    folders); without it (wds), as many as the dataset's own classnames.txt, or, with none, they set the count."""
    names, where = own, f"dataset {spec.source!r}"
    if spec.classnames:
        names = parse_classnames(Path(spec.classnames).read_text(encoding="utf-8"), spec.classnames)
        where = spec.classnames
    if names is None:
        raise ValueError(f"dataset {spec.source!r}: no classnames.txt and no classnames file given")
    expected = num_classes if num_classes is not None else len(own or names)
    if len(names) != expected:
        raise ValueError(f"{where}: {len(names)} class names for the {expected} classes of {spec.source!r}")
    return names


def _templates(spec: DatasetSpec, own: tuple[str, ...] | None) -> tuple[str, ...]:
    """spec.templates (a JSON list) over the dataset's own, else DEFAULT_TEMPLATES."""
    if spec.templates:
        try:
            loaded = json.loads(Path(spec.templates).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{spec.templates}: not JSON ({exc})") from exc
        return validate_templates(loaded, spec.templates)
    return own if own is not None else DEFAULT_TEMPLATES


def _no_class_files(spec: DatasetSpec) -> None:
    if spec.classnames or spec.templates:
        raise ValueError(f"dataset {spec.source!r} is a retrieval set: classnames and templates do not apply")


# ------------------------------------------------------------------------------------------------------- splits

def stratified_three_way(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Per class, a seeded shuffle puts half the rows (rounded down, at least one when the class has two) in
    'test', one in VALIDATION_SHARE of the rest in 'validation' and the others in 'train'. A class of one image
    goes to 'train' only: a test row of a class the probe never saw is a certain miss that says nothing of
    the features, and zero-shot scores it anyway (a set without a split of its own zero-shots every row).
    'validation' is left out when it gets no row (the probe then holds out a part of 'train' itself)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_test = max(1, int(TEST_FRACTION * len(rows))) if len(rows) >= 2 else 0
        n_val = (len(rows) - n_test) // VALIDATION_SHARE
        parts["test"].append(rows[:n_test])
        parts["validation"].append(rows[n_test:n_test + n_val])
        parts["train"].append(rows[n_test + n_val:])
    splits = {name: np.sort(np.concatenate(p)).astype(np.int64) for name, p in parts.items()}
    return {name: rows for name, rows in splits.items() if name != "validation" or len(rows)}


def _given_splits(split_of_row: list[str]) -> dict[str, np.ndarray]:
    """Row indices of each split a dataset came with."""
    names = np.asarray(split_of_row)
    return {name: np.flatnonzero(names == name) for name in dict.fromkeys(split_of_row)}


class _Rows:
    """Accepted rows as they are found (image, stamp, label or captions, split) and the rejected ones."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.refs: list[ImageRef] = []
        self.stamps: list[list] = []
        self.labels: list[int] = []
        self.captions: list[tuple[str, ...]] = []
        self.splits: list[str] = []
        self.rejected: list[tuple[str, str]] = []

    def add(self, ref: ImageRef, stamp: list, split: str, label: int | None = None,
            captions: tuple[str, ...] | None = None) -> None:
        self.refs.append(ref)
        self.stamps.append(stamp)
        self.splits.append(split)
        if label is not None:
            self.labels.append(label)
        if captions is not None:
            self.captions.append(captions)


def _classification(spec: DatasetSpec, cfg: EvalConfig, rows: _Rows, classnames: tuple[str, ...],
                    templates: tuple[str, ...], own_split: bool, kind: str, meta: dict) -> ClassificationSet:
    """The set of the accepted rows: the dataset's own splits (zero-shot on 'test') when it came with them,
    else a seeded stratified split (zero-shot on every row)."""
    if not rows.refs:
        raise ValueError(f"dataset {spec.source!r}: no usable image ({len(rows.rejected)} rejected, first: "
                         f"{rows.rejected[:1]})")
    labels = np.asarray(rows.labels, dtype=np.int64)
    splits = _given_splits(rows.splits) if own_split else stratified_three_way(labels, cfg.seed)
    return ClassificationSet(
        images=LazyImages(rows.refs), labels=labels, classnames=classnames, templates=templates, splits=splits,
        name=rows.name, zeroshot_split="test" if own_split else None,
        fingerprint=_fingerprint(kind, rows.stamps, {**meta, "classnames": classnames, "templates": templates}),
        rejected=tuple(rows.rejected))


# ------------------------------------------------------------------------------------------------------- folder

def _find_classes(directory: str, spec: DatasetSpec) -> list[str]:
    """torchvision's find_classes: sorted names of the sub-folders (a symlinked one is refused: ImageFolder
    would follow it out of the root)."""
    entries = [entry for entry in os.scandir(directory) if entry.is_dir()]
    if linked := sorted(entry.name for entry in entries if entry.is_symlink()):
        raise ValueError(f"dataset {spec.source!r}: class folders {linked} in {directory} are symlinks, which are "
                         "never followed: copy them in or point at the real folder")
    if not entries:
        raise ValueError(f"dataset {spec.source!r}: no class folder in {directory}")
    return sorted(entry.name for entry in entries)


def _class_files(class_dir: str) -> Iterator[tuple[str, str | None]]:
    """torchvision's make_dataset for one class, in its order (walks sorted by folder path, files sorted
    within one): (path, None) for each image-extension file, (path, reason) for each symlinked sub-folder,
    which ImageFolder would follow and this walk does not."""
    for root, dirs, files in sorted(os.walk(class_dir)):
        for name in sorted(d for d in dirs if os.path.islink(os.path.join(root, d))):
            yield os.path.join(root, name), "a symlinked folder: never followed"
        for name in sorted(files):
            if name.lower().endswith(IMG_EXTENSIONS):
                yield os.path.join(root, name), None


def _split_folders(root: str, spec: DatasetSpec) -> dict[str, str]:
    """Split name -> its sub-folder when `root` comes with train/ and test/ (optionally val/ or validation/);
    empty when `root` is itself one ImageFolder."""
    dirs = {entry.name for entry in os.scandir(root) if entry.is_dir()}
    if not {"train", "test"} <= dirs:
        if dirs and dirs <= SPLIT_FOLDERS.keys():
            raise ValueError(f"dataset {spec.source!r}: split folders {sorted(dirs)} without both train/ and test/;"
                             " point at one of them to use it as a single split")
        return {}
    if others := sorted(dirs - SPLIT_FOLDERS.keys()):
        raise ValueError(f"dataset {spec.source!r}: train/ and test/ beside other folders {others}: a dataset root "
                         "holds either split folders or class folders")
    if {"val", "validation"} <= dirs:
        raise ValueError(f"dataset {spec.source!r}: both val/ and validation/; keep one")
    return {SPLIT_FOLDERS[d]: d for d in ("train", "val", "validation", "test") if d in dirs}


def _folder_classes(root: str, folders: dict[str, str], spec: DatasetSpec) -> list[str]:
    """The class folders, the same in every split folder."""
    for sub in folders.values():
        if reason := _inside(root, sub)[1]:
            raise ValueError(f"dataset {spec.source!r}: the split folder {sub}/ is {reason}")
    found = {split: _find_classes(os.path.join(root, sub), spec) for split, sub in folders.items()}
    first_split, classes = next(iter(found.items()))
    for split, names in found.items():
        if names != classes:
            raise ValueError(f"dataset {spec.source!r}: the {split} split's class folders differ from the "
                             f"{first_split} split's: {sorted(set(names) ^ set(classes))}")
    return classes


def _folder_rows(root: str, folders: dict[str, str], classes: list[str], rows: _Rows, spec: DatasetSpec) -> None:
    """Every split's ImageFolder rows, checked, split after split."""
    for split, sub in folders.items():
        empty = []
        for label, name in enumerate(classes):
            seen = 0
            for path, reason in _class_files(os.path.join(root, sub, name)):
                seen += 1
                checked = _Checked(None, None, reason) if reason else _check_file(root, path)
                if checked.ref is None:
                    rows.rejected.append((os.path.relpath(path, root), checked.reason))
                else:
                    rows.add(checked.ref, [*checked.stamp, label], split, label=label)
            empty += [] if seen else [name]
        if empty:  # ImageFolder raises FileNotFoundError for these
            raise ValueError(f"dataset {spec.source!r}: no file with an image extension {IMG_EXTENSIONS} for the "
                             f"classes {empty} of {os.path.join(root, sub)}")


def load_folder(path: str, spec: DatasetSpec, cfg: EvalConfig) -> ClassificationSet:
    """An ImageFolder tree (or train/ test/ [val/] trees of the same classes) as a ClassificationSet; class
    names are the folder names with '_' read as spaces unless spec.classnames names them."""
    root = _root(path, spec, directory=True)
    folders = _split_folders(root, spec) or {"all": "."}
    classes = _folder_classes(root, folders, spec)
    rows = _Rows(_default_name(spec, root))
    _folder_rows(root, folders, classes, rows, spec)
    classnames = _classnames(spec, tuple(c.replace("_", " ") for c in classes), len(classes))
    return _classification(spec, cfg, rows, classnames, _templates(spec, None), "all" not in folders, "folder",
                           {"folders": classes})


# ---------------------------------------------------------------------------------------------------------- csv

IMAGE_COLUMNS = ("filepath", "image")
"""The image-path column: open_clip's CsvDataset default (--csv-img-key filepath), or 'image'."""

CAPTION_COLUMNS = ("title", "caption")
"""The caption column: open_clip's default (--csv-caption-key title), or 'caption'."""

SEPARATORS = {".csv": ",", ".tsv": "\t"}


def _column(header: list[str], names: tuple[str, ...], spec: DatasetSpec) -> int:
    found = [name for name in names if name in header]
    if len(found) != 1:
        raise ValueError(f"dataset {spec.source!r}: the header needs exactly one of the columns {list(names)}, "
                         f"has {header}")
    return header.index(found[0])


def _csv_records(file: str, spec: DatasetSpec) -> Iterator[tuple[int, str | None, str | None]]:
    """(line, image path, caption) of each data row; (line, None, None) for a row with the wrong width."""
    separator = SEPARATORS.get(Path(file).suffix.lower())
    if separator is None:
        raise ValueError(f"dataset {spec.source!r}: a caption file ends in .csv or .tsv")
    with open(file, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=separator)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"dataset {spec.source!r}: empty file, no header")
        image, caption = _column(header, IMAGE_COLUMNS, spec), _column(header, CAPTION_COLUMNS, spec)
        for record in reader:
            if not record:
                continue
            if len(record) != len(header):
                yield reader.line_num, None, None
            else:
                yield reader.line_num, record[image], record[caption]


def load_csv(path: str, spec: DatasetSpec, cfg: EvalConfig) -> RetrievalSet:
    """(image, caption) rows as a RetrievalSet: images in order of first appearance, each with the captions of
    every row naming it (two spellings of one path are one image). Paths are relative to the file's folder;
    an absolute one must lie inside it."""
    _no_class_files(spec)
    file = _root(path, spec, directory=False)
    root = os.path.dirname(file)
    checked: dict[str, _Checked] = {}  # normalised path -> its image
    captions: dict[str, list[str]] = {}
    rejected: list[tuple[str, str]] = []
    for line, image, caption in _csv_records(file, spec):
        if image is None or not image.strip() or not (caption or "").strip():
            rejected.append((f"{file}:{line}", "the row needs an image path and a caption of the header's width"))
            continue
        key = _inside(root, image)[0]
        if key not in checked:
            checked[key] = _check_file(root, image)
        if checked[key].ref is None:
            rejected.append((image, f"line {line}: {checked[key].reason}"))
        else:
            captions.setdefault(key, []).append(caption)
    if not captions:
        raise ValueError(f"dataset {spec.source!r}: no usable row ({len(rejected)} rejected, first: {rejected[:1]})")
    images = [checked[key] for key in captions]
    texts = tuple(tuple(c) for c in captions.values())
    return RetrievalSet(images=LazyImages([c.ref for c in images]), captions=texts, name=_default_name(spec, file),
                        fingerprint=_fingerprint("csv", [[*c.stamp, t] for c, t in zip(images, texts)], {}),
                        rejected=tuple(rejected))


# ------------------------------------------------------------------------------------------------- webdataset

class _Sample(NamedTuple):
    """One webdataset sample of a shard: its image, its label or caption text, or why it is rejected."""

    source: str
    """shard (relative to the root) and key."""
    ref: ImageRef | None
    stamp: list | None
    cls: bytes | None
    txt: bytes | None
    reason: str | None


def _wds_name(name: str) -> tuple[str | None, str | None]:
    """webdataset's base_plus_ext: (key, suffix) of a member, the key running to the basename's first dot."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (match.group(1), match.group(2).lower()) if match else (None, None)


def _tar_groups(tar: tarfile.TarFile, links: list[str]) -> Iterator[tuple[str, list[tarfile.TarInfo]]]:
    """Members grouped as webdataset's tar_file_iterator and group_by_keys group them: regular files only,
    consecutive members of one key. Links and special files (which webdataset skips too) go to `links`."""
    key, group = None, []
    for member in tar:
        prefix, _ = _wds_name(member.name)
        if not member.isreg():
            links += [] if member.isdir() else [member.name]
            continue
        if prefix is None or _WDS_META.match(member.name):
            continue
        if prefix != key and group:
            yield key, group
            group = []
        key = prefix
        group.append(member)
    if group:
        yield key, group


def _read_sample(tar: tarfile.TarFile, shard: str, source: str, members: list[tarfile.TarInfo]) -> _Sample:
    """A sample's image (header checked, located by offset) and its .cls / .txt bytes."""
    by_suffix: dict[str, tarfile.TarInfo] = {}
    for member in members:
        suffix = _wds_name(member.name)[1]
        if suffix in by_suffix:  # webdataset raises on these
            return _Sample(source, None, None, None, None, f"two members with suffix .{suffix}")
        by_suffix[suffix] = member
    image = next((by_suffix[s] for s in WDS_IMAGE_SUFFIXES if s in by_suffix), None)
    text = {s: tar.extractfile(by_suffix[s]).read() if s in by_suffix else None for s in ("cls", "txt")}
    if image is None:
        return _Sample(source, None, None, *text.values(), f"no image member (.{', .'.join(WDS_IMAGE_SUFFIXES)})")
    reason = _header_problem(tar.extractfile(image))
    ref = ImageRef(shard, image.offset_data, image.size)
    return _Sample(source, None if reason else ref, [source, image.offset_data, image.size], *text.values(), reason)


def _shard_samples(root: str, rel: str, spec: DatasetSpec) -> tuple[list[_Sample], list]:
    """Every sample of one shard, and the shard's stamp."""
    full, reason = _inside(root, rel)
    if reason or not os.path.isfile(full):
        raise ValueError(f"dataset {spec.source!r}: shard {rel} is {reason or 'missing'}")
    with os.fdopen(os.open(full, os.O_RDONLY | _NOFOLLOW), "rb") as f:
        st = os.fstat(f.fileno())
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                links: list[str] = []
                samples = [_read_sample(tar, full, f"{rel}:{key}", members)
                           for key, members in _tar_groups(tar, links)]
        except tarfile.TarError as exc:
            raise ValueError(f"dataset {spec.source!r}: shard {rel} is not an uncompressed tar ({exc})") from exc
    samples += [_Sample(f"{rel}:{name}", None, None, None, None, "a link or special member: never read")
                for name in links]
    return samples, [rel, st.st_size, st.st_mtime_ns]


def _shard_names(root: str, sub: str, spec: DatasetSpec) -> list[str]:
    """A split's shards: 0.tar .. n-1.tar as nshards.txt counts them (CLIP_benchmark's rule), else every .tar
    of the folder in numeric order."""
    counted = _read_text(root, os.path.join(sub, "nshards.txt"), spec)
    if counted is not None:
        try:
            return [os.path.join(sub, f"{i}.tar") for i in range(int(counted.strip()))]
        except ValueError as exc:
            raise ValueError(f"dataset {spec.source!r}: {sub}/nshards.txt is not a number") from exc
    names = [n for n in os.listdir(os.path.join(root, sub)) if n.endswith(".tar")]
    names.sort(key=lambda n: (0, int(n[:-4]), n) if n[:-4].isdigit() else (1, 0, n))
    if not names:
        raise ValueError(f"dataset {spec.source!r}: no .tar shard in {sub}/")
    return [os.path.join(sub, n) for n in names]


def _wds_kind(root: str, samples: list[_Sample], spec: DatasetSpec) -> str:
    """'classification' or 'retrieval': dataset_type.txt when present (CLIP_benchmark: absent means
    classification), else what the samples carry (.cls: classification, .txt alone: retrieval)."""
    declared = _read_text(root, "dataset_type.txt", spec)
    if declared is not None:
        kind = declared.strip().lower() or "classification"
        if kind not in ("classification", "retrieval"):
            raise ValueError(f"dataset {spec.source!r}: dataset_type {kind!r} is not supported (classification, "
                             "retrieval)")
        return kind
    has_txt = any(s.txt is not None for s in samples)
    return "retrieval" if has_txt and not any(s.cls is not None for s in samples) else "classification"


def _label(sample: _Sample, num_classes: int) -> tuple[int | None, str | None]:
    if sample.cls is None:
        return None, "no .cls member"
    try:
        label = int(sample.cls.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return None, f".cls {sample.cls[:20]!r} is not a class index"
    return (label, None) if 0 <= label < num_classes else (None, f".cls {label} is not one of {num_classes} classes")


def _captions(sample: _Sample) -> tuple[tuple[str, ...] | None, str | None]:
    """CLIP_benchmark's str.splitlines of the .txt, blank lines dropped (a blank line captions nothing)."""
    if sample.txt is None:
        return None, "no .txt member"
    try:
        lines = tuple(line for line in sample.txt.decode("utf-8").splitlines() if line.strip())
    except UnicodeDecodeError:
        return None, ".txt is not UTF-8"
    return (lines, None) if lines else (None, "an empty .txt")


def _wds_rows(samples: dict[str, list[_Sample]], name: str, field: str, read: Callable) -> _Rows:
    """Accepted samples (image and the label or captions `read` gets from them), split by split."""
    rows = _Rows(name)
    for split, split_samples in samples.items():
        for sample in split_samples:
            value, reason = (None, sample.reason) if sample.ref is None else read(sample)
            if reason:
                rows.rejected.append((sample.source, reason))
            else:
                rows.add(sample.ref, [*sample.stamp, value], split, **{field: value})
    return rows


def _wds_root(url: str, spec: DatasetSpec) -> str:
    """A local directory, as a path or a file:// URL (nothing is fetched over a network)."""
    path = url.removeprefix("file://")
    if "://" in path:
        raise ValueError(f"dataset {spec.source!r}: only local wds roots (a path or file://) are read")
    return _root(path, spec, directory=True)


def _split_samples(root: str, sub: str, spec: DatasetSpec) -> tuple[list[_Sample], list[list]]:
    """The samples of a split's shards, in shard order, and the shards' stamps."""
    samples, stamps = [], []
    for shard in _shard_names(root, sub, spec):
        shard_samples, stamp = _shard_samples(root, shard, spec)
        samples += shard_samples
        stamps.append(stamp)
    return samples, stamps


def _wds_retrieval(root: str, test: list[_Sample], stamps: list[list], spec: DatasetSpec) -> RetrievalSet:
    """test/'s samples with their captions (CLIP_benchmark scores retrieval on test; train/ is not read)."""
    _no_class_files(spec)
    rows = _wds_rows({"test": test}, _default_name(spec, root), "captions", _captions)
    if not rows.refs:
        raise ValueError(f"dataset {spec.source!r}: no usable sample ({len(rows.rejected)} rejected, first: "
                         f"{rows.rejected[:1]})")
    return RetrievalSet(images=LazyImages(rows.refs), captions=tuple(rows.captions), name=rows.name,
                        fingerprint=_fingerprint("wds-retrieval", rows.stamps, {"shards": stamps}),
                        rejected=tuple(rows.rejected))


def _wds_templates(root: str, spec: DatasetSpec) -> tuple[str, ...]:
    """spec.templates, else zeroshot_classification_templates.txt (one a line), else DEFAULT_TEMPLATES."""
    name = "zeroshot_classification_templates.txt"
    text = _read_text(root, name, spec)
    own = None if text is None else validate_templates(
        [line.strip() for line in text.splitlines() if line.strip()], os.path.join(root, name))
    return _templates(spec, own)


def _wds_classification(root: str, folders: dict[str, str], test: tuple[list[_Sample], list[list]],
                        spec: DatasetSpec, cfg: EvalConfig) -> ClassificationSet:
    """Labelled samples: the train/ (and val/) and test/ splits, or test/ alone split as a folder is."""
    classnames = _classnames(spec, _wds_lines(root, "classnames.txt", spec))
    parts = {split: test if split == "test" else _split_samples(root, sub, spec) for split, sub in folders.items()}
    samples = {split: part[0] for split, part in parts.items()} if "train" in parts else {"all": test[0]}
    rows = _wds_rows(samples, _default_name(spec, root), "label", lambda s: _label(s, len(classnames)))
    stamps = [stamp for part in parts.values() for stamp in part[1]]
    return _classification(spec, cfg, rows, classnames, _wds_templates(root, spec), "train" in parts,
                           "wds-classification", {"shards": stamps})


def _wds_lines(root: str, name: str, spec: DatasetSpec) -> tuple[str, ...] | None:
    text = _read_text(root, name, spec)
    return None if text is None else parse_classnames(text, os.path.join(root, name))


def load_wds(url: str, spec: DatasetSpec, cfg: EvalConfig) -> ClassificationSet | RetrievalSet:
    """CLIP_benchmark's wds layout: classification from `.cls` samples (its train/test split when train/ is
    there, else a seeded stratified split of test/), or retrieval from `.txt` samples of test/."""
    root = _wds_root(url, spec)
    folders = {SPLIT_FOLDERS[d]: d for d in SPLIT_FOLDERS if os.path.isdir(os.path.join(root, d))}
    if "test" not in folders:
        raise ValueError(f"dataset {spec.source!r}: no test/ folder of shards in {root}")
    if {"val", "validation"} <= set(os.listdir(root)):
        raise ValueError(f"dataset {spec.source!r}: both val/ and validation/; keep one")
    test = _split_samples(root, "test", spec)
    if _wds_kind(root, test[0], spec) == "retrieval":
        return _wds_retrieval(root, *test, spec)
    return _wds_classification(root, folders, test, spec, cfg)


# ------------------------------------------------------------------------------------------------------ entry

LOADERS: dict[str, Callable[[str, DatasetSpec, EvalConfig], EvalDataset]] = {
    "folder": load_folder, "csv": load_csv, "wds": load_wds,
}
"""Source prefix -> loader(path after the prefix, spec, eval config). 'synthetic' is eval.synthetic_world's."""


def load_dataset(spec: DatasetSpec, cfg: EvalConfig) -> list[EvalDataset]:
    """The dataset a `folder:`, `csv:` or `wds:` source names, in the dataset protocol."""
    prefix, sep, path = spec.source.partition(":")
    if prefix == "synthetic" and not sep:
        raise ValueError("dataset 'synthetic' is built by eval.synthetic_world, not eval.loaders")
    if not sep or prefix not in LOADERS:
        raise ValueError(f"dataset {spec.source!r}: the source must be {', '.join(f'{p}:PATH' for p in LOADERS)}")
    return [LOADERS[prefix](path, spec, cfg)]
