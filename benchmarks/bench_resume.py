"""Exact-resume benchmark: what per-sample randomness costs a training stream, and what skipping saves a resume.

A training stream on shards draws each sample's randomness (caption sampling, objective inputs, the crop and
flip) from a seed of its own, (seed, rank, worker, position) (``training.data.sample_randomness``), so that a
resumed run can skip the batches it already trained on without decoding them and still see the undisturbed
run's samples (``shard_loader(skip_batches=)``). Both halves are timed on the same shards (the synthetic world
with every caption field, written by ``curation.sharding`` as the shard stage writes them), in one process:

(a) decoding: ``training.data.decode_samples`` over the raw tar samples, held in memory so that only decoding
    is timed, against the reference loop that decodes the same samples with one generator shared by the whole
    stream (numpy's, and torch's global one for the transform), as a stream that cannot resume exactly would.
    Printed: the ratio ours / reference and the extra time per sample. Goal: <= 0.15 ms a sample (3% of a sample
    of bench_train's CPU training at ~170 samples/s; the synthetic world's small images make the ratio itself
    large, since their decoding costs little).
(b) resuming: the time to the first batch of ``shard_loader(skip_batches=k)`` against reading and decoding the
    k batches before it and then that batch (a resume that replays the stream to reach its position); the
    two batches are checked equal. Goal: >= 5x at k = 40.

    python benchmarks/bench_resume.py [--samples N] [--batch-size B] [--skip K] [--repeats R]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # repo, bench_train

import training  # noqa: E402, F401, I001  (OMP_WAIT_POLICY before torch, as bench_train)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402

from bench_train import write_bench_shards  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import BatchFields, decode_raw, decode_samples, default_transform, shard_loader  # noqa: E402
from training.models import create_model  # noqa: E402

FIELDS = BatchFields(synthetic=True, num_subcaptions=6)
"""The fields the heaviest objectives read (ALIP's synthetic caption, DreamLIP's sub-captions): the most work
drawn from a sample's generator."""
SAMPLER = "laclip"
"""LaCLIP's caption sampling (the original or one of its rewrites): one more draw per sample."""


def raw_samples(urls: list[str]) -> list[dict]:
    """Every raw tar sample of the shards, in order, read once."""
    return list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))


def shared_generator_stream(samples: Sequence[dict], transform, seed: int):
    """The reference: the same decoding with one numpy generator and torch's global generator for the stream."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    for raw in samples:
        sample = decode_raw(raw, transform, SAMPLER, rng, FIELDS)
        if sample is not None:
            yield sample


def timed(run):
    """(seconds, result) of ``run()``."""
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def decoding(samples: list[dict], repeats: int) -> dict[str, float]:
    transform = default_transform(True)

    def ours() -> int:
        return sum(1 for _ in decode_samples(samples, transform, SAMPLER, seed=0, rank=0, fields=FIELDS))

    def reference() -> int:
        return sum(1 for _ in shared_generator_stream(samples, transform, seed=0))

    decoded = reference()  # also the warm-up: allocator, transform
    ours_s, reference_s = [], []
    for _ in range(repeats):  # interleaved, so load drift hits both alike
        for run, times in ((ours, ours_s), (reference, reference_s)):
            elapsed, count = timed(run)
            if count != decoded:
                raise AssertionError(f"{run.__name__} decoded {count} samples, not {decoded}")
            times.append(elapsed)
    best, reference_best = min(ours_s), min(reference_s)
    return {"samples": decoded, "ours_s": best, "reference_s": reference_best,
            "ratio_ours_vs_shared_generator": best / reference_best,
            "extra_ms_per_sample": (best - reference_best) / decoded * 1e3}


def batch_at(urls: list[str], batch_size: int, tokenizer, position: int, skipping: bool) -> dict:
    """Batch ``position`` of the training stream: the first batch of a stream told to skip to it, or reached by
    reading every batch before it."""
    stream = shard_loader(urls, batch_size, (position + 1) * batch_size, tokenizer, train=True, workers=0, seed=0,
                          text_sampler=SAMPLER, fields=FIELDS, skip_batches=position if skipping else 0)
    return next(itertools.islice(iter(stream), 0 if skipping else position, None))


def resuming(urls: list[str], batch_size: int, skip: int) -> dict[str, float]:
    _, _, tokenizer = create_model(TrainConfig().model)
    skipped_s, skipped = timed(lambda: batch_at(urls, batch_size, tokenizer, skip, skipping=True))
    replayed_s, replayed = timed(lambda: batch_at(urls, batch_size, tokenizer, skip, skipping=False))
    same = sorted(skipped) == sorted(replayed) and all(
        torch.equal(skipped[k], replayed[k]) if torch.is_tensor(replayed[k]) else skipped[k] == replayed[k]
        for k in replayed)
    if not same:
        raise AssertionError(f"batch {skip} of the skipping stream differs from the replayed stream's")
    return {"skip_batches": skip, "skipped_s": skipped_s, "replayed_s": replayed_s,
            "speedup_skip_vs_replay": replayed_s / skipped_s}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        urls = write_bench_shards(Path(tmp), args.samples, per_shard=512, num_centers=1000)
        result = {"decoding": decoding(raw_samples(urls), args.repeats),
                  "resuming": resuming(urls, args.batch_size, args.skip)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
