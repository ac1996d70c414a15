"""The ``curaclip`` command line: ``run``, ``stats`` and ``show-config``."""

from __future__ import annotations

import argparse
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

    stats = sub.add_parser("stats", help="read-only SQL over the catalog (default: per-stage row counts)")
    stats.add_argument("sql", nargs="?", help="one SELECT statement; views: samples, quarantine, filtered, <stage>...")
    stats.add_argument("--workdir", default=DEFAULT_WORKDIR)

    show = sub.add_parser("show-config", help="print the resolved config as YAML")
    show.add_argument("--config")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument("--preset", default="default", choices=sorted(PRESETS))
    return parser


def _run(args: argparse.Namespace) -> int:
    from flows.config import load_config
    from flows.pipeline import pipeline

    cfg = load_config(args.config, [*preset_overrides(args.preset), *args.overrides])
    report = pipeline(cfg, workdir=args.workdir, only=args.only, start=args.start, force=tuple(args.force))
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
    if report.get("eval"):
        e = report["eval"]
        print(f"  eval: zero-shot top-1 {e['zeroshot_top1']:.3f} over {e['num_classes']} classes, "
              f"retrieval R@1 i2t {e['retrieval_i2t_r1']:.3f} t2i {e['retrieval_t2i_r1']:.3f}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from tasks.store.catalog import caption_table, format_table, query, stage_table

    columns, rows = query(args.workdir, args.sql) if args.sql else stage_table(args.workdir)
    print(format_table(columns, rows))
    if not args.sql and (captions := caption_table(args.workdir))[1]:
        print("\ncaption requests (failed per reason, rejected answers):")
        print(format_table(*captions))
    return 0


def _show_config(args: argparse.Namespace) -> int:
    from flows.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, [*preset_overrides(args.preset), *args.overrides])), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"run": _run, "stats": _stats, "show-config": _show_config}
    from curation.captions.runner import CaptionFailureError
    from tasks.stages.common import MissingArtifactError
    from tasks.store.catalog import QueryError

    try:
        return commands[args.command](args)
    except (ConfigError, QueryError, MissingArtifactError, CaptionFailureError, FileNotFoundError, ValueError) as err:
        print(f"curaclip {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
