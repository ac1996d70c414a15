"""Real datasets into the protocol: image folders row for row as torchvision's ImageFolder, CSV/TSV captions,
CLIP_benchmark's wds layout; bad rows rejected with reasons, nothing read outside the root, fingerprints that
follow the files."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from eval import loaders
from eval.config import DatasetSpec, EvalConfig
from eval.datasets import ClassificationSet, RetrievalSet
from eval.loaders import IMG_EXTENSIONS, LazyImages, load_dataset, stratified_three_way

CFG = EvalConfig(seed=0)
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (90, 90, 90)]


def encoded(colour=(255, 0, 0), fmt="PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format=fmt)
    return out.getvalue()


def write(path, data: bytes | None = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(encoded(COLOURS[len(str(path)) % len(COLOURS)]) if data is None else data)
    return str(path)


def class_tree(root, counts: dict[str, int]) -> None:
    for name, n in counts.items():
        for i in range(n):
            write(root / name / f"{i:02d}.png", encoded(COLOURS[i % len(COLOURS)]))


def load(source: str, cfg: EvalConfig = CFG, **spec):
    (ds,) = load_dataset(DatasetSpec(source=source, **spec), cfg)
    return ds


def relpaths(ds, root) -> list[str]:
    return [os.path.relpath(ref.path, root) for ref in ds.images.refs]


# ------------------------------------------------------------------------------------------------------- folder

def test_image_extensions_are_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS as TORCHVISION_EXTENSIONS
    assert IMG_EXTENSIONS == TORCHVISION_EXTENSIONS


def messy_tree(root) -> None:
    """Upper and lower case classes, nested folders whose sort order differs from a depth-first walk
    ('sub-x' sorts before 'sub/deeper'), upper-case extensions, numbers that sort as text, non-images."""
    for rel in ["b_cls/10.png", "b_cls/2.jpg", "b_cls/sub/z.PNG", "b_cls/sub-x/a.jpeg", "b_cls/sub/deeper/a.png",
                "b_cls/notes.txt", "a_cls/x.webp", "a_cls/a.bmp", "Zed/only.tiff", "Zed/.hidden.png"]:
        fmt = {"jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}.get(
            rel.rsplit(".", 1)[1].lower(), "PNG")
        write(root / rel, encoded(COLOURS[len(rel) % 7], fmt) if not rel.endswith(".txt") else b"not an image")


def test_folder_rows_and_class_indices_are_imagefolders(tmp_path):
    from torchvision.datasets import ImageFolder
    messy_tree(tmp_path)
    ds = load(f"folder:{tmp_path}")
    reference = ImageFolder(str(tmp_path))
    assert isinstance(ds, ClassificationSet) and ds.rejected == ()
    assert [(str(tmp_path / p), int(y)) for p, y in zip(relpaths(ds, tmp_path), ds.labels)] == reference.samples
    assert ds.labels.tolist() == reference.targets
    assert ds.classnames == ("Zed", "a cls", "b cls") and tuple(reference.classes) == ("Zed", "a_cls", "b_cls")
    assert ds.templates == loaders.DEFAULT_TEMPLATES and ds.name == tmp_path.name


def test_split_folders_concatenate_each_splits_imagefolder(tmp_path):
    from torchvision.datasets import ImageFolder
    class_tree(tmp_path / "train", {"cat": 3, "dog": 2})
    class_tree(tmp_path / "val", {"cat": 1, "dog": 1})
    class_tree(tmp_path / "test", {"cat": 2, "dog": 2})
    ds = load(f"folder:{tmp_path}")
    reference = [s for split in ("train", "val", "test") for s in ImageFolder(str(tmp_path / split)).samples]
    assert [(str(tmp_path / p), int(y)) for p, y in zip(relpaths(ds, tmp_path), ds.labels)] == reference
    assert {k: v.tolist() for k, v in ds.splits.items()} == {
        "train": [0, 1, 2, 3, 4], "validation": [5, 6], "test": [7, 8, 9, 10]}
    assert ds.zeroshot_split == "test" and ds.zeroshot_rows().tolist() == [7, 8, 9, 10]
    assert all(p.startswith(dict(train="train/", validation="val/", test="test/")[split])
               for split, rows in ds.splits.items() for p in np.asarray(relpaths(ds, tmp_path))[rows])


@pytest.mark.parametrize("layout, words", [
    ({"train/cat": 1, "train/dog": 1, "test/cat": 1}, "the test split's class folders differ"),
    ({"train/cat": 1, "test/cat": 1, "extra/cat": 1}, "beside other folders ['extra']"),
    ({"test/cat": 1, "test/dog": 1}, "without both train/ and test/"),
    ({"train/cat": 1, "test/cat": 1, "val/cat": 1, "validation/cat": 1}, "both val/ and validation/"),
    ({"cat": 1, "dog": 0}, "no file with an image extension"),
])
def test_a_malformed_folder_names_what_is_wrong(tmp_path, layout, words):
    for rel, n in layout.items():
        os.makedirs(tmp_path / rel, exist_ok=True)
        class_tree(tmp_path, {rel: n})
    with pytest.raises(ValueError, match=f"folder:{tmp_path}.*{__import__('re').escape(words)}"):
        load(f"folder:{tmp_path}")


def test_classnames_come_from_a_file_that_must_name_every_class(tmp_path):
    class_tree(tmp_path / "data", {"n01_x": 2, "n02_y": 2})
    names = tmp_path / "names.txt"
    names.write_text("golden retriever\ntabby cat\n\n")
    assert load(f"folder:{tmp_path / 'data'}", classnames=str(names)).classnames == ("golden retriever", "tabby cat")
    names.write_text("golden retriever\n")
    with pytest.raises(ValueError, match="1 class names for the 2 classes"):
        load(f"folder:{tmp_path / 'data'}", classnames=str(names))
    names.write_text("golden retriever\n\ntabby cat\n")
    with pytest.raises(ValueError, match="line 2 is"):
        load(f"folder:{tmp_path / 'data'}", classnames=str(names))


@pytest.mark.parametrize("content, words", [
    ('["a photo of a {c}.", "a {} in the wild."]', None),
    ('{"pets": ["a {c}."]}', "non-empty list of strings"),
    ("[]", "non-empty list of strings"),
    ('["a photo of a {c}.", 3]', "non-empty list of strings"),
    ('["a photo of a dog."]', "needs '{c}'"),
    ('["a {} and a {}."]', "needs '{c}'"),
    ('["a {c}", "{name}"]', "needs '{c}'"),
    ("a photo of a {c}.", "not JSON"),
])
def test_templates_are_a_json_list_of_prompts_with_a_class_slot(tmp_path, content, words):
    class_tree(tmp_path / "data", {"cat": 2})
    (tmp_path / "templates.json").write_text(content)
    source, templates = f"folder:{tmp_path / 'data'}", str(tmp_path / "templates.json")
    if words is None:
        assert load(source, templates=templates).templates == tuple(json.loads(content))
    else:
        with pytest.raises(ValueError, match=words):
            load(source, templates=templates)


# ------------------------------------------------------------------------------------------------------- splits

def test_a_folder_without_splits_is_split_per_class_seeded_and_zero_shot_scores_every_row(tmp_path):
    class_tree(tmp_path, {"a": 10, "b": 4, "c": 2, "d": 1})
    ds = load(f"folder:{tmp_path}")
    assert ds.zeroshot_split is None and ds.zeroshot_rows().tolist() == list(range(17))
    rows = {name: set(r.tolist()) for name, r in ds.splits.items()}
    assert sorted(i for r in rows.values() for i in r) == list(range(17))  # disjoint and covering
    per_class = {name: np.bincount(ds.labels[r], minlength=4).tolist() for name, r in ds.splits.items()}
    assert per_class == {"train": [4, 2, 1, 1], "validation": [1, 0, 0, 0], "test": [5, 2, 1, 0]}
    again = load(f"folder:{tmp_path}")
    other = load(f"folder:{tmp_path}", cfg=EvalConfig(seed=1))
    assert all(np.array_equal(ds.splits[k], again.splits[k]) for k in ds.splits)
    assert not np.array_equal(ds.splits["test"], other.splits["test"])
    assert ds.fingerprint == other.fingerprint  # the rows are the same; the seed is in the eval key


def test_the_three_way_split_leaves_validation_out_when_no_class_fills_it():
    splits = stratified_three_way(np.array([0, 0, 1, 1, 1]), seed=3)
    assert set(splits) == {"train", "test"} and len(splits["test"]) == 2 and len(splits["train"]) == 3


# ---------------------------------------------------------------------------------------------------------- csv

def test_csv_rows_of_one_image_are_its_captions_in_order_of_first_appearance(tmp_path):
    for name in ("a.png", "b.jpg", "sub/c.png"):
        write(tmp_path / name, encoded(COLOURS[len(name) % 7], "JPEG" if name.endswith("jpg") else "PNG"))
    (tmp_path / "caps.csv").write_text('image,caption\nb.jpg,"a dog, running"\na.png,a cat\n./b.jpg,a brown dog\n'
                                       f"{tmp_path}/sub/c.png,a bird\na.png,a small cat\n")
    ds = load(f"csv:{tmp_path / 'caps.csv'}")
    assert isinstance(ds, RetrievalSet) and ds.name == "caps" and ds.rejected == ()
    assert relpaths(ds, tmp_path) == ["b.jpg", "a.png", "sub/c.png"]
    assert ds.captions == (("a dog, running", "a brown dog"), ("a cat", "a small cat"), ("a bird",))


def test_tsv_takes_open_clips_column_names(tmp_path):
    write(tmp_path / "a.png")
    (tmp_path / "caps.tsv").write_text("title\tfilepath\textra\na cat, sitting\ta.png\tx\n")
    ds = load(f"csv:{tmp_path / 'caps.tsv'}", name="mine")
    assert ds.captions == (("a cat, sitting",),) and ds.name == "mine"


@pytest.mark.parametrize("file, content, words", [
    ("caps.csv", "path,caption\na.png,a cat\n", r"one of the columns \['filepath', 'image'\]"),
    ("caps.csv", "image,filepath,caption\na.png,a.png,a cat\n", r"one of the columns \['filepath', 'image'\]"),
    ("caps.csv", "", "no header"),
    ("caps.json", "image,caption\na.png,a cat\n", "ends in .csv or .tsv"),
])
def test_a_malformed_caption_file_names_what_is_wrong(tmp_path, file, content, words):
    (tmp_path / file).write_text(content)
    with pytest.raises(ValueError, match=words):
        load(f"csv:{tmp_path / file}")


def test_a_retrieval_set_takes_no_classnames_or_templates(tmp_path):
    write(tmp_path / "a.png")
    (tmp_path / "caps.csv").write_text("image,caption\na.png,a cat\n")
    with pytest.raises(ValueError, match="retrieval set: classnames and templates do not apply"):
        load(f"csv:{tmp_path / 'caps.csv'}", templates="t.json")


# ---------------------------------------------------------------------------------------------------- rejection

def test_corrupt_and_missing_images_are_rejected_with_reasons_and_counts_reconcile(tmp_path):
    write(tmp_path / "good.png")
    write(tmp_path / "bad.png", b"\x89PNG not really")
    write(tmp_path / "empty.jpg", b"")
    (tmp_path / "caps.csv").write_text("image,caption\ngood.png,one\nbad.png,two\ngone.png,three\ngood.png,four\n"
                                       "empty.jpg,five\ngood.png,\ngood.png,six,extra\n")
    ds = load(f"csv:{tmp_path / 'caps.csv'}")
    assert ds.captions == (("one", "four"),)
    reasons = dict(ds.rejected)
    assert "not a decodable image" in reasons["bad.png"] and "line 3" in reasons["bad.png"]
    assert "missing file" in reasons["gone.png"] and "not a decodable image" in reasons["empty.jpg"]
    assert sum(1 for source, _ in ds.rejected if source.endswith((":7", ":8"))) == 2
    assert sum(map(len, ds.captions)) + len(ds.rejected) == 7


def test_a_corrupt_image_in_a_folder_is_rejected_and_imagefolder_counts_reconcile(tmp_path):
    from torchvision.datasets import ImageFolder
    class_tree(tmp_path, {"cat": 3, "dog": 2})
    write(tmp_path / "dog" / "broken.jpg", encoded(fmt="JPEG")[:2] + b"garbage")
    ds = load(f"folder:{tmp_path}")
    assert [source for source, _ in ds.rejected] == ["dog/broken.jpg"]
    assert len(ds.images) + len(ds.rejected) == len(ImageFolder(str(tmp_path)).samples) == 6


def test_a_set_with_nothing_usable_is_an_error(tmp_path):
    write(tmp_path / "cat" / "a.png", b"nope")
    with pytest.raises(ValueError, match="no usable image .1 rejected"):
        load(f"folder:{tmp_path}")


@pytest.fixture
def opened(monkeypatch):
    """Every path the loaders open."""
    paths, real_open = [], os.open
    monkeypatch.setattr(loaders.os, "open", lambda path, *a, **k: paths.append(str(path)) or real_open(path, *a, **k))
    return paths


def test_paths_outside_the_root_and_symlinks_are_rejected_unread(tmp_path, opened):
    outside = write(tmp_path / "outside" / "secret.png")
    root = tmp_path / "data"
    write(root / "ok.png")
    os.symlink(outside, root / "link.png")
    os.symlink(root / "ok.png", root / "inner-link.png")
    os.makedirs(root / "sub")
    (root / "caps.csv").write_text(f"image,caption\nok.png,fine\n../outside/secret.png,up\n{outside},absolute\n"
                                   "link.png,link out\ninner-link.png,link in\nsub/../../outside/secret.png,tricky\n")
    ds = load(f"csv:{root / 'caps.csv'}")
    assert ds.captions == (("fine",),)
    reasons = [reason for _, reason in ds.rejected]
    assert sum("outside the dataset root" in r for r in reasons) == 3 and sum("symlink" in r for r in reasons) == 2
    assert not any(os.path.realpath(p) == os.path.realpath(outside) for p in opened)


def test_symlinks_in_a_folder_are_rejected_unread_and_a_symlinked_class_is_an_error(tmp_path, opened):
    outside = tmp_path / "outside"
    class_tree(outside, {"x": 2})
    root = tmp_path / "data"
    class_tree(root, {"cat": 2})
    os.symlink(outside / "x" / "00.png", root / "cat" / "link.png")
    os.symlink(outside / "x", root / "cat" / "linked-folder")
    os.mkfifo(root / "cat" / "pipe.png")  # opening it for reading must not hang the load
    ds = load(f"folder:{root}")
    assert dict(ds.rejected) == {"cat/link.png": "a symlink (or a path through one): never followed",
                                 "cat/linked-folder": "a symlinked folder: never followed",
                                 "cat/pipe.png": "not a regular file"}
    assert not any(str(outside) in os.path.realpath(p) for p in opened)
    os.symlink(outside / "x", root / "dog")
    with pytest.raises(ValueError, match=r"class folders \['dog'\] .* are symlinks"):
        load(f"folder:{root}")
    split_root = tmp_path / "splits"
    class_tree(split_root / "test", {"x": 1})
    os.symlink(outside, split_root / "train")
    with pytest.raises(ValueError, match="split folder train/ is a symlink"):
        load(f"folder:{split_root}")


# -------------------------------------------------------------------------------------- fingerprint, laziness

def test_the_fingerprint_follows_the_files_and_nothing_else(tmp_path):
    class_tree(tmp_path / "data", {"cat": 2, "dog": 2})
    source = f"folder:{tmp_path / 'data'}"
    first = load(source).fingerprint
    assert len(first) == 16 and load(source).fingerprint == first
    image = tmp_path / "data" / "cat" / "00.png"
    st = os.stat(image)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched
    touched = load(source).fingerprint
    write(image, encoded((1, 2, 3), "JPEG"))  # rewritten (another size)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    rewritten = load(source).fingerprint
    (tmp_path / "names.txt").write_text("kitty\npuppy\n")
    renamed = load(source, classnames=str(tmp_path / "names.txt")).fingerprint
    assert len({first, touched, rewritten, renamed}) == 4


def test_images_are_read_lazily_and_are_the_files_bytes(tmp_path):
    class_tree(tmp_path, {"cat": 3})
    ds = load(f"folder:{tmp_path}")
    files = [(tmp_path / "cat" / f"{i:02d}.png").read_bytes() for i in range(3)]
    assert isinstance(ds.images, LazyImages) and len(ds.images) == 3
    assert list(ds.images) == files and ds.images[-1] == files[2]
    assert isinstance(ds.images[1:], LazyImages) and list(ds.images[1:]) == files[1:]
    assert ds.images[np.int64(0)] == files[0]
    write(tmp_path / "cat" / "00.png", encoded((7, 7, 7)))
    assert ds.images[0] == (tmp_path / "cat" / "00.png").read_bytes() != files[0]  # read on access, not held


# --------------------------------------------------------------------------------------------------- webdataset

def write_tar(path, members: list[tuple[str, bytes | str]]) -> None:
    """Members are (name, bytes) files, or (name, target) symlinks."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def labelled(start: int, labels: list[int], fmt="png") -> list[tuple[str, bytes]]:
    """CLIP_benchmark's convert_dataset samples: key s%07d, the image, then its class index as text."""
    members = []
    for i, label in enumerate(labels, start):
        members += [(f"s{i:07d}.{fmt}", encoded(COLOURS[i % 7], "JPEG" if fmt == "jpg" else fmt.upper())),
                    (f"s{i:07d}.cls", str(label).encode())]
    return members


def wds_classification(root, *, train=True) -> None:
    write_tar(root / "test" / "0.tar", labelled(0, [0, 1, 0]))
    write_tar(root / "test" / "1.tar", labelled(3, [1, 1], fmt="webp") + [("s0000009.cls", b"0")])
    (root / "test" / "nshards.txt").write_text("2\n")
    if train:
        write_tar(root / "train" / "0.tar", labelled(0, [1, 0, 1, 0], fmt="jpg"))
        (root / "train" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("cat\ndog\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na blurry photo of a {c}.\n")


def test_wds_classification_reads_clip_benchmarks_layout(tmp_path):
    import webdataset as wds
    wds_classification(tmp_path)
    ds = load(f"wds:file://{tmp_path}")
    assert isinstance(ds, ClassificationSet) and ds.name == tmp_path.name
    assert ds.classnames == ("cat", "dog") and ds.templates == ("a photo of a {c}.", "a blurry photo of a {c}.")
    assert ds.labels.tolist() == [1, 0, 1, 0, 0, 1, 0, 1, 1]
    assert {k: v.tolist() for k, v in ds.splits.items()} == {"train": [0, 1, 2, 3], "test": [4, 5, 6, 7, 8]}
    assert ds.zeroshot_split == "test"
    assert ds.rejected == (("test/1.tar:s0000009", "no image member (.webp, .png, .jpg, .jpeg)"),)
    reference = [sample for split, shards in (("train", "0"), ("test", "{0..1}")) for sample in
                 wds.WebDataset(f"{tmp_path}/{split}/{shards}.tar", shardshuffle=False)
                 .select(lambda s: "cls" in s and any(k in s for k in loaders.WDS_IMAGE_SUFFIXES))
                 .to_tuple("webp;png;jpg;jpeg", "cls")]
    assert list(ds.images) == [image for image, _ in reference]
    assert ds.labels.tolist() == [int(label) for _, label in reference]


def test_wds_without_train_is_split_like_a_folder_and_bad_samples_are_rejected(tmp_path):
    wds_classification(tmp_path, train=False)
    (tmp_path / "test" / "nshards.txt").unlink()  # every .tar of the folder, in numeric order
    write_tar(tmp_path / "test" / "10.tar", labelled(10, [2]) + labelled(11, [0]) + [
        ("s0000012.png", b"junk"), ("s0000012.cls", b"1"), ("s0000013.png", "/etc/passwd"), ("s0000013.cls", b"0")])
    ds = load(f"wds:{tmp_path}")
    assert ds.zeroshot_split is None and len(ds.images) == 6 and set(ds.splits) == {"train", "test"}
    assert [ref.path for ref in ds.images.refs][-1].endswith("10.tar")
    reasons = dict(ds.rejected)
    assert reasons["test/10.tar:s0000010"] == ".cls 2 is not one of 2 classes"
    assert "not a decodable image" in reasons["test/10.tar:s0000012"]
    assert reasons["test/10.tar:s0000013.png"] == "a link or special member: never read"
    assert reasons["test/10.tar:s0000013"].startswith("no image member")  # grouped as webdataset groups it
    assert len(ds.images) + len(ds.rejected) == 11


def test_wds_retrieval_reads_captions_one_a_line(tmp_path):
    members = [("a/s0.png", encoded()), ("a/s0.txt", b"a red square\na crimson tile\n"),
               ("a/s1.jpg", encoded((0, 0, 9), "JPEG")), ("a/s1.txt", b"a dark square"),
               ("a/s2.png", encoded()), ("a/s2.txt", b"\n")]
    write_tar(tmp_path / "test" / "0.tar", members)
    (tmp_path / "test" / "nshards.txt").write_text("1")
    ds = load(f"wds:{tmp_path}")  # no dataset_type.txt: .txt samples without .cls are retrieval
    assert isinstance(ds, RetrievalSet) and ds.captions == (("a red square", "a crimson tile"), ("a dark square",))
    assert ds.rejected == (("test/0.tar:a/s2", "an empty .txt"),)
    assert list(ds.images) == [members[0][1], members[2][1]]
    (tmp_path / "dataset_type.txt").write_text("retrieval\n")
    assert load(f"wds:{tmp_path}").fingerprint == ds.fingerprint
    (tmp_path / "dataset_type.txt").write_text("multilabel\n")
    with pytest.raises(ValueError, match="dataset_type 'multilabel' is not supported"):
        load(f"wds:{tmp_path}")


def test_wds_fingerprint_follows_the_shards_and_metadata_is_required(tmp_path):
    wds_classification(tmp_path)
    first = load(f"wds:{tmp_path}").fingerprint
    shard = tmp_path / "train" / "0.tar"
    st = os.stat(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert load(f"wds:{tmp_path}").fingerprint not in ("", first)
    (tmp_path / "classnames.txt").unlink()
    with pytest.raises(ValueError, match="no classnames.txt"):
        load(f"wds:{tmp_path}")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    assert load(f"wds:{tmp_path}", classnames=str(tmp_path / "names.txt")).classnames == ("cat", "dog")
    (tmp_path / "train" / "nshards.txt").write_text("2\n")
    with pytest.raises(ValueError, match="shard train/1.tar is missing"):
        load(f"wds:{tmp_path}", classnames=str(tmp_path / "names.txt"))


# -------------------------------------------------------------------------------------------------------- entry

@pytest.mark.parametrize("source, words", [
    ("synthetic", "eval.synthetic_world"),
    ("imagenet", "the source must be folder:PATH, csv:PATH, wds:PATH"),
    ("hf:org/set", "the source must be"),
    ("folder:", "no path after the prefix"),
    ("folder:/no/such/dir", "is not an existing directory"),
    ("csv:/no/such.csv", "is not an existing file"),
    ("wds:https://huggingface.co/datasets/x", "only local wds roots"),
])
def test_a_source_it_cannot_load_is_named_in_the_error(source, words):
    with pytest.raises(ValueError, match=words):
        load(source)
