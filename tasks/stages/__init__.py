"""The Prefect stage tasks, one module per stage (the two caption stages share one), in pipeline order:
ingest, filter, curate, captions (rewrite, longcap), embed, cluster, shard, train, eval.

Each task is wiring only: compute the artifact key, return at once on a cache hit, otherwise hand the stage's
units of work (library dataclasses from ``curation/``, ``training/``, ``eval/``) to the run's executor through a
:class:`~tasks.stages.common.StageRun`, then record counts and reasons in the manifest. Algorithms live in the
library folders.
"""
