"""Write the synthetic world's shape images as an image-folder dataset, the layout `curaclip eval --dataset
folder:DIR` reads (torchvision's ImageFolder, one sub-folder per class, with train/ val/ test/ splits), to try
`curaclip eval` on files as a user's own dataset would be.

    .venv/bin/python docs/examples/shapes_folder.py /tmp/shapes --per-class 40 10 20

The images are drawn from seeds apart from the pool's and from the eval stage's own sets (another world seed),
so none is a training image or an image the pipeline's eval scored.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from curation.world.evaluation import classification_set
from curation.world.pool import WorldConfig


def write_folder(out: Path, per_split: dict[str, int], seed: int) -> int:
    """Class folders under out/<split>/; returns the number of images written."""
    table = classification_set(WorldConfig(seed=seed), sum(per_split.values()))
    images, names = table.column("image").to_pylist(), table.column("classname").to_pylist()
    num_classes = len(set(names))
    start = 0
    for split, n in per_split.items():
        for i in range(start * num_classes, (start + n) * num_classes):  # row i is class i % C
            folder = out / split / names[i].replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:06d}.png").write_bytes(images[i])
        start += n
    return len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, nargs=3, default=(40, 10, 20), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--seed", type=int, default=7, help="world seed (the default run's is 0)")
    args = parser.parse_args()
    n = write_folder(args.out, dict(zip(("train", "val", "test"), args.per_class, strict=True)), args.seed)
    print(f"wrote {n} images under {args.out}/{{train,val,test}}/<class>/")


if __name__ == "__main__":
    main()
