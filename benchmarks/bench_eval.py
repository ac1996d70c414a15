"""Eval benchmark: the suite on one dataset with a cold feature cache against the same run reading it back.

Writes the synthetic world's shape images as an image folder (the layout `curaclip eval --dataset folder:DIR`
reads), loads it through eval/loaders.py, and times in this one process, with a randomly initialised open_clip
model (`--model`, default curaclip-vit-tiny):

(a) the reference: `eval.suite.run_suite` of every classification task (zero-shot, linear probe, kNN, GDA on
    augmented views) with an empty feature cache: the images and the drawn rows' views are encoded;
(b) the same call with a new FeatureCache over the same folder, as a second `curaclip eval --cache-dir` is.

It checks the two give identical metrics and prints images/s of the encoding, ``ratio_cold_vs_warm`` (how
many times faster the cached rerun is) and the share of the cold run spent encoding.

    python benchmarks/bench_eval.py [--per-class TRAIN VAL TEST] [--model NAME] [--views V]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "docs" / "examples")]

from shapes_folder import write_folder  # noqa: E402

from eval.config import DatasetSpec, EvalConfig, FewShotConfig  # noqa: E402
from eval.features import FeatureCache  # noqa: E402
from eval.jobs import load_encoder  # noqa: E402
from eval.loaders import load_dataset  # noqa: E402
from eval.suite import run_suite, tasks_for  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, nargs=3, default=(20, 5, 10), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--model", default="curaclip-vit-tiny")
    parser.add_argument("--views", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shapes"
        n = write_folder(folder, dict(zip(("train", "val", "test"), args.per_class, strict=True)), seed=7)
        cfg = EvalConfig(fewshot=FewShotConfig(shots=(1, 4), draws=2, augment_views=args.views))
        [ds] = load_dataset(DatasetSpec(f"folder:{folder}"), cfg)
        encoder = load_encoder(args.model, None, cfg, "cpu")
        work = [(ds, tasks_for(ds, (), False))]
        features = Path(tmp) / "features"
        _, encode_s = timed(lambda: encoder.images(list(ds.images)))  # encoding alone, for the share
        cold, cold_s = timed(lambda: run_suite(encoder, work, cfg, FeatureCache(features)))
        warm, warm_s = timed(lambda: run_suite(encoder, work, cfg, FeatureCache(features)))
        if cold != warm:
            raise SystemExit("the cached rerun gave other metrics than the cold run")
        print(f"images {n}, tasks {', '.join(work[0][1])}, load average {os.getloadavg()[0]:.1f}")
        print(f"encode images/s {n / encode_s:.0f}")
        print(f"cold run {cold_s:.2f} s, cached rerun {warm_s:.2f} s")
        print(f"ratio_cold_vs_warm {cold_s / warm_s:.2f}")
        print(f"encode_share_of_cold {min(1.0, encode_s / cold_s):.2f}")


if __name__ == "__main__":
    main()
