"""The ``curaclip`` command line: ``run``, ``eval``, ``serve``, ``stats``, ``artifacts``, ``gc``, ``show-config``
and ``unlock``."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from collections.abc import Sequence

from flows.config import STAGES, ConfigError
from flows.presets import PRESETS, preset_overrides

DEFAULT_WORKDIR = "runs/default"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curaclip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline (cached stages are skipped)")
    run.add_argument("--config", help="YAML config (default: the packaged synthetic-world config)")
    run.add_argument("--workdir", default=DEFAULT_WORKDIR,
                     help=f"artifacts, catalog, report (default {DEFAULT_WORKDIR})")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--only", choices=STAGES, help="run this stage alone from cached upstream artifacts")
    where.add_argument("--from", dest="start", choices=STAGES,
                       help="run from this stage on; earlier ones must be cached")
    run.add_argument("--force", nargs="+", choices=STAGES, default=[], metavar="STAGE",
                     help="recompute these stages and every stage after them")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set train.schedule.epochs=2 (repeatable)")
    run.add_argument("--preset", default="default", choices=sorted(PRESETS),
                     help="overrides applied before --set: 'smoke' runs every stage on a few hundred samples")
    run.add_argument("--wait", action="store_true",
                     help="when another run holds the workdir, wait for it to finish (default: stop at once)")

    _eval_parser(sub)

    serve = sub.add_parser("serve", help="serve the pipeline as a scheduled Prefect deployment (until interrupted)",
                           description="Serve the pipeline as the Prefect deployment curaclip-scheduled/<name> with a "
                           "cron schedule: this process runs each scheduled run and each run triggered through the "
                           "server (PREFECT_API_URL), e.g. `prefect deployment run curaclip-scheduled/curaclip`.")
    serve.add_argument("--cron", required=True, help='a cron schedule, e.g. "0 3 * * *" (03:00 every day)')
    serve.add_argument("--timezone", default="UTC", help="the schedule's time zone (default UTC)")
    serve.add_argument("--name", default="curaclip", help="the deployment's name (default curaclip)")
    serve.add_argument("--config", help="YAML config (default: the packaged synthetic-world config)")
    serve.add_argument("--workdir", default=DEFAULT_WORKDIR)
    serve.add_argument("--preset", default="default", choices=sorted(PRESETS))
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    _stats_parser(sub)

    _lifetime_parsers(sub)

    unlock = sub.add_parser("unlock", help="break the workdir's run lock (when the run holding it is gone)",
                            description="Remove <workdir>/.curaclip.lock, printing whose lock it was. A run whose "
                            "process died on this host, or whose lease expired, is taken over without this.")
    unlock.add_argument("--workdir", default=DEFAULT_WORKDIR)

    show = sub.add_parser("show-config", help="print the resolved config as YAML")
    show.add_argument("--config")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument("--preset", default="default", choices=sorted(PRESETS))
    return parser


def _stats_parser(sub: argparse._SubParsersAction) -> None:
    from tasks.store.stats_reports import FORMATS, REPORTS

    stats = sub.add_parser("stats", help="read-only SQL over the catalog (default: per-stage row counts)",
                           description="Read-only SQL over the catalog, or a named report with its plots. It "
                           "reads the catalog and the workdir's files only, and writes nothing there.")
    stats.add_argument("sql", nargs="?", help="one SQL statement; views: samples, quarantine, filtered, <stage>, "
                       "entry_counts, cluster_sizes, semdedup_pairs, train_metrics, eval_results; tables: stages, "
                       "caption_requests")
    stats.add_argument("--workdir", default=DEFAULT_WORKDIR)
    stats.add_argument("--report", choices=sorted(REPORTS), help="print a named report's tables, write its plots")
    stats.add_argument("--format", default="table", choices=FORMATS,
                       help="table (default), csv, or json (a list of row objects; a report: an object of tables)")
    stats.add_argument("--plots", default=".", metavar="DIR",
                       help="where --report writes its PNG plots (default: the current folder; not the workdir)")


def _lifetime_parsers(sub: argparse._SubParsersAction) -> None:
    from tasks.store.lifetime import DEFAULT_KEEP_RUNS

    listing = sub.add_parser("artifacts", help="list every artifact: stage, key, inputs, config hash, size, age, "
                             "the runs that use it")
    listing.add_argument("--stage", choices=STAGES, help="only this stage's artifacts")
    listing.add_argument("--workdir", default=DEFAULT_WORKDIR)
    gc = sub.add_parser("gc", help="delete the artifacts, staging areas and caption-cache entries no kept run needs",
                        description="Delete every artifact, staging area and caption-cache folder that none of the "
                        "kept runs (the newest --keep-runs run records) needs; what was written since the newest "
                        "run started always stays.")
    gc.add_argument("--keep-runs", type=int, default=DEFAULT_KEEP_RUNS, metavar="N",
                    help=f"keep what the N newest runs need (default {DEFAULT_KEEP_RUNS})")
    gc.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    gc.add_argument("--wait", action="store_true", help="wait while a run holds the workdir (default: stop at once)")
    gc.add_argument("--workdir", default=DEFAULT_WORKDIR)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    from eval.config import TASKS
    from eval.jobs import OUTPUT_TEMPLATE

    ev = sub.add_parser("eval", help="score any open_clip checkpoint on datasets; CLIP_benchmark-shaped JSON",
                        description="Score an open_clip checkpoint (ours or any other) on datasets, one JSON per "
                        "(dataset, task) in CLIP_benchmark's shape.")
    ev.add_argument("--checkpoint", required=True, help="open_clip checkpoint (state dict, or open_clip_train's)")
    ev.add_argument("--model", required=True, help="open_clip model name or a JSON model config")
    ev.add_argument("--dataset", nargs="+", required=True, metavar="SOURCE",
                    help="synthetic | folder:DIR (one sub-folder per class) | csv:FILE (image, caption rows) | "
                    "wds:DIR (CLIP_benchmark's WebDataset layout)")
    ev.add_argument("--task", nargs="+", default=[], choices=TASKS, metavar="TASK",
                    help=f"tasks to run (default: every task each dataset supports): {', '.join(TASKS)}")
    ev.add_argument("--classnames", help="class names, one per line, for the folder: and wds: datasets")
    ev.add_argument("--templates", help="a JSON list of prompt strings with {c}, for the folder: and wds: datasets "
                    "(default: a wds set's own file, else 'a photo of a {c}.')")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--amp", action="store_true", help="encode under autocast (bf16 on CPU, fp16 on CUDA)")
    ev.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    ev.add_argument("--output", default=OUTPUT_TEMPLATE,
                    help=f"result file or CLIP_benchmark template (default {OUTPUT_TEMPLATE})")
    ev.add_argument("--cache-dir", help="keep image features here; a later eval of the same checkpoint and files "
                    "encodes nothing (default: features are kept only while the command runs)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override an eval setting, e.g. --set fewshot.shots=1,4,16 (repeatable)")


def _eval(args: argparse.Namespace) -> int:
    import dataclasses

    from curation.world.pool import WorldConfig
    from eval.config import DatasetSpec
    from eval.features import FeatureCache
    from eval.jobs import clip_benchmark_dump, load_encoder, score_sources, write_dumps
    from eval.providers import SYNTHETIC, DatasetSource, as_spec
    from eval.suite import headline
    from flows.config import eval_config

    cfg = dataclasses.replace(eval_config(args.overrides), tasks=tuple(args.task), batch_size=args.batch_size,
                              amp=args.amp)
    sources = []
    for source in args.dataset:
        classifies = source.startswith(("folder:", "wds:"))  # the kinds that can hold classification sets
        files = {"classnames": args.classnames, "templates": args.templates} if classifies else {}
        spec = as_spec(DatasetSpec(source=source, **files))
        sources.append(DatasetSource(spec, WorldConfig() if source == SYNTHETIC else None))
    encoder = load_encoder(args.model, args.checkpoint, cfg, args.device)
    results, datasets = score_sources(encoder, sources, cfg, FeatureCache(args.cache_dir))
    if not results:
        raise ValueError(f"no dataset runs the tasks asked ({', '.join(args.task)})")
    dumps = [clip_benchmark_dump(r, args.model, args.checkpoint) for r in results]
    for d in datasets:
        rejected = f", {d['rejected']} rejected (e.g. {d['rejected_examples'][0]})" if d["rejected"] else ""
        print(f"{d['dataset']}: {d['kind']}, {d['images']} images{rejected}; tasks {', '.join(d['tasks'])}")
    for dump, path in zip(dumps, write_dumps(dumps, args.output), strict=True):
        figures = ", ".join(f"{k} {'n/a' if v is None else format(v, '.4f')}" for k, v in headline(dump).items())
        print(f"  {dump['dataset']} {dump['task']}: {figures}\n    -> {path}")
    return 0


EPHEMERAL_STARTUP_SECONDS = "180"
"""How long `curaclip run` waits for Prefect's temporary server when no PREFECT_API_URL is set (unless
PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS is). Prefect's default, 20 s, was too short on a fresh machine:
the first start creates and migrates ~/.prefect/prefect.db, and on two loaded cores `make run` failed there with
"Timed out while attempting to connect to ephemeral Prefect API server" (measured 2026-12-02)."""


def _run(args: argparse.Namespace) -> int:
    """Take the workdir's lock before anything slow (Prefect's import and server), so that a held workdir is
    reported at once; the pipeline flow then holds the same lock again for this run id (tasks/store/workdir_lock)."""
    from tasks.store.workdir_lock import WorkdirBusyError, hold, new_run_id

    run_id = new_run_id()
    try:
        with hold(args.workdir, run_id, wait=args.wait, say=lambda m: print(f"curaclip run: {m}", file=sys.stderr,
                                                                            flush=True)):
            return _run_held(args, run_id)
    except WorkdirBusyError as err:
        print(f"curaclip run: error: {err}", file=sys.stderr)
        return 2


def _run_held(args: argparse.Namespace, run_id: str) -> int:
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_SECONDS)
    from flows.config import load_config
    from flows.pipeline import pipeline

    cfg = load_config(args.config, [*preset_overrides(args.preset), *args.overrides])
    report = pipeline(cfg, workdir=args.workdir, only=args.only, start=args.start, force=tuple(args.force),
                      run_id=run_id)
    print(f"\nrun {report['run_id']} finished in {report['seconds']:.1f} s; report: {args.workdir}/report.md")
    for stage, s in report["stages"].items():
        print(f"  {stage:<8} {s['status']:<9} {s['seconds']:8.1f} s  rows {s['rows_in']} -> {s['rows_out']}")
    for stage, d in report.get("dry_run", {}).items():
        print(f"  {stage}: dry run, nothing sent: {d['requests']} requests to send ({d['cached']} cached) for "
              f"{d['samples']} samples, ~{d['prompt_tokens']} prompt tokens, {d['images']} images, "
              f"<= {d['max_completion_tokens']} completion tokens")
    for stage, t in report.get("captions", {}).items():
        if t.get("requests"):
            failed = ", ".join(f"{r} {n}" for r, n in t["failures"].items() if n) or "none"
            print(f"  {stage}: {t['requests']} requests, {t['cached']} cached, {t['sent']} sent, failed: {failed}")
    if report.get("eval_skipped"):
        print(f"  eval: skipped, {report['eval_skipped']}")
    for result in report.get("eval") or []:
        from eval.suite import headline

        figures = ", ".join(f"{k} {'n/a' if v is None else format(v, '.3f')}" for k, v in headline(result).items())
        print(f"  eval {result['dataset']} {result['task']}: {figures}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from prefect.schedules import Cron

    from flows.deployments import deployment_parameters, serve

    try:
        Cron(args.cron, timezone=args.timezone)
    except ValueError as err:
        raise ConfigError(f"--cron {args.cron!r}: {err}") from None
    serve(args.cron, deployment_parameters(args.config, args.workdir, args.preset, args.overrides), args.name,
          args.timezone)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from tasks.store.catalog import caption_table, query, stage_table
    from tasks.store.stats_reports import render

    if args.report:
        return _stats_report(args)
    tables = {"query": query(args.workdir, args.sql) if args.sql else stage_table(args.workdir)}
    print(render(tables, args.format, named=False))
    if args.format == "table" and not args.sql and (captions := caption_table(args.workdir))[1]:
        print("\ncaption requests (failed per reason, rejected answers):")
        print(render({"captions": captions}, "table", named=False))
    return 0


def _stats_report(args: argparse.Namespace) -> int:
    """Tables on stdout; the plots' paths after them (on stderr for csv and json, which stay parseable)."""
    from pathlib import Path

    from tasks.store import workdir as W
    from tasks.store.catalog import QueryError, reading
    from tasks.store.stats_reports import REPORTS, render

    if args.sql:
        raise QueryError("give either SQL or --report, not both")
    plots, resolved = Path(args.plots), Path(args.plots).resolve()
    if not W.is_remote(args.workdir) and W.local_path(args.workdir) in (str(resolved), *map(str, resolved.parents)):
        raise QueryError(f"--plots {args.plots} is inside the workdir, which stats does not write: name another "
                         "folder")
    plots.mkdir(parents=True, exist_ok=True)
    with reading(args.workdir) as reader:
        report = REPORTS[args.report](reader, plots)
    print(render(report.tables, args.format, named=True))
    for path in report.plots:
        print(f"wrote {path}", file=sys.stdout if args.format == "table" else sys.stderr)
    return 0


def _artifacts(args: argparse.Namespace) -> int:
    from tasks.store.catalog import format_table
    from tasks.store.lifetime import artifact_table, plan_gc

    plan = plan_gc(args.workdir)
    print(format_table(*artifact_table(plan, args.stage)))
    counts = plan.counts()
    print(f"\n{counts['staging']['found']} staging areas, {counts['cache']['found']} caption-cache folders, "
          f"{len(plan.runs)} run records (curaclip gc --dry-run: what gc would delete)")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from tasks.store.catalog import format_table
    from tasks.store.lifetime import deletion_table, gc, summary

    if args.dry_run:  # reads only
        plan = gc(args.workdir, args.keep_runs, dry_run=True)
    else:  # a writer like a run: never while a run uses the workdir (the artifacts it reads are not all recorded)
        from tasks.store.workdir_lock import hold, new_run_id

        with hold(args.workdir, f"gc-{new_run_id()}", wait=args.wait):
            plan = gc(args.workdir, args.keep_runs, dry_run=False)
    if plan.delete:
        print(("would delete:" if args.dry_run else "deleted:") + "\n" + format_table(*deletion_table(plan)) + "\n")
    print(summary(plan, done=not args.dry_run))
    return 0


def _unlock(args: argparse.Namespace) -> int:
    from tasks.store.workdir_lock import break_lock

    broken = break_lock(args.workdir)
    if broken is None:
        print(f"workdir {args.workdir} is not locked: nothing to break")
        return 0
    running = " (its process is still running: it goes on without the lock)" if broken.here() and broken.alive() \
        else ""
    print(f"broke the lock of {broken.describe()} on workdir {args.workdir}{running}")
    return 0


def _show_config(args: argparse.Namespace) -> int:
    from flows.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, [*preset_overrides(args.preset), *args.overrides])), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"run": _run, "eval": _eval, "serve": _serve, "stats": _stats, "artifacts": _artifacts, "gc": _gc,
                "show-config": _show_config, "unlock": _unlock}
    from curation.captions.runner import CaptionFailureError
    from tasks.stages.common import DiskFullError, EmptyPoolError, MissingArtifactError, PartFailedError, no_space
    from tasks.store.catalog import QueryError
    from tasks.store.workdir_lock import WorkdirBusyError

    try:
        return commands[args.command](args)
    except DiskFullError as err:  # a stage's: names the stage and its staging area
        print(f"curaclip {args.command}: error: {err.strerror}", file=sys.stderr)
        return 2
    except (ConfigError, QueryError, WorkdirBusyError, MissingArtifactError, EmptyPoolError, CaptionFailureError,
            PartFailedError, FileNotFoundError, ValueError) as err:  # PartFailedError: its stage, step and part
        print(f"curaclip {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except pickle.UnpicklingError as err:  # torch.load(weights_only=True) met a pickle that is not only weights
        first = str(err).split(".")[0].strip()
        print(f"curaclip {args.command}: error: {first}: the checkpoint holds objects other than tensors and plain "
              "values; checkpoints load with weights_only=True, since such a pickle can run code", file=sys.stderr)
        return 2
    except Exception as err:
        if (full := no_space(err)) is None:
            raise
        where = f" writing {full.filename}" if full.filename else ""  # a catalog, a report, the lock: no stage
        print(f"curaclip {args.command}: error: no space left on device{where}. Free space on that filesystem (or "
              "use a workdir on a larger one) and run the same command again: finished work is reused",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
