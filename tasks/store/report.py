"""The run report: ``report.json`` (machine-readable), ``report.md`` and PNG plots in ``<workdir>``.

Everything here is read back from artifacts (manifests, entry counts, metrics, eval results), so a
report of a fully cached run is the same as the one of the run that computed it, up to statuses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from eval.suite import headline  # noqa: E402
from tasks.store import layout as L  # noqa: E402
from tasks.store import workdir as W  # noqa: E402
from tasks.store.artifacts import ArtifactRef, ArtifactStore  # noqa: E402
from tasks.store.lifetime import write_run_record  # noqa: E402


def stage_summary(ref: ArtifactRef) -> dict[str, Any]:
    return {
        "status": ref.status,
        "seconds": round(ref.seconds, 3),
        "rows_in": int(ref.counts.get("rows_in", 0)),
        "rows_out": int(ref.counts.get("rows_out", 0)),
        "filtered": int(ref.counts.get("filtered", 0)),
        "quarantined": int(ref.counts.get("quarantined", 0)),
        "artifact": ref.path,
        "key": ref.key,
    }


def plot_entry_counts(entry_counts: Path, out: Path) -> Path:
    """MetaCLIP's pictures: sorted entry counts (log scale) and their cumulative share, before and after
    balancing."""
    table = pq.read_table(entry_counts).to_pydict()
    before = np.sort(np.asarray(table["count_before"]))[::-1]
    after = np.sort(np.asarray(table["count_after"]))[::-1]
    ranks = np.arange(1, len(before) + 1)
    fig, (ax, cum) = plt.subplots(1, 2, figsize=(10, 4))
    for label, counts in (("before balancing", before), ("after balancing", after)):
        ax.plot(ranks, np.maximum(counts, 0.5), label=label)
        cum.plot(ranks / len(ranks), np.cumsum(counts) / max(1, counts.sum()), label=label)
    ax.set(xlabel="entry rank", ylabel="matched samples", yscale="log", title="Metadata entry counts")
    cum.set(xlabel="fraction of entries (sorted by count)", ylabel="cumulative share of matches",
            title="Cumulative distribution")
    ax.legend()
    cum.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_loss(metrics: Path, out: Path) -> Path:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r and "step" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="objective (weighted sum)")
    monitor = [r for r in rows if "clip_raw_unweighted" in r]
    if monitor:  # the plain CLIP loss on the raw caption: one scale whatever the objectives
        ax.plot([r["step"] for r in monitor], [r["clip_raw_unweighted"] for r in monitor],
                label="plain CLIP, raw caption")
        ax.legend()
    ax.set(xlabel="step", ylabel="training loss", title="Training loss")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_eval(results: Sequence[Mapping[str, Any]], out: Path) -> Path:
    """One bar per headline metric of every (dataset, task) result, grouped by result."""
    bars = [(f"{r['dataset']}\n{r['task']}", metric, value) for r in results
            for metric, value in headline(r).items() if isinstance(value, (int, float))]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.35 * len(bars)), 4.5))
    groups = list(dict.fromkeys(g for g, _, _ in bars))
    colours = plt.get_cmap("tab10")
    for i, (group, _, value) in enumerate(bars):
        ax.bar(i, value, color=colours(groups.index(group) % 10))
        ax.text(i, value, f"{value:.2f}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(bars)), [f"{g.split(chr(10))[0]} {m}" for g, m, _ in bars], rotation=75, fontsize=6)
    ax.set(ylim=(0, 1.05), title="Evaluation (one colour per dataset and task)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_cluster_sizes(sizes: Path, out: Path) -> Path:
    """Samples per k-means center: sorted sizes (log scale) and their histogram."""
    counts = np.sort(pq.read_table(sizes).column("size").to_numpy())[::-1]
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot(np.arange(1, len(counts) + 1), np.maximum(counts, 0.5))
    ax.set(xlabel="center rank", ylabel="samples (top-1)", yscale="log", title="Cluster sizes, sorted")
    hist.hist(counts, bins=min(50, max(1, len(np.unique(counts)))))
    hist.set(xlabel="samples per center", ylabel="centers", title=f"{int((counts == 0).sum())} empty of {len(counts)}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _plots(workdir: Path, refs: Mapping[str, ArtifactRef], evaluation: Mapping[str, Any]) -> dict[str, str]:
    plots = {}

    def found(stage: str, name: str) -> Path | None:  # an artifact's file, present locally (pulled from a store)
        path = Path(refs[stage].path) / name if stage in refs else None
        if path is None or not W.exists(path):
            return None
        W.pull(path)
        return path

    if sizes := found("cluster", L.CLUSTER_SIZES):
        plots["cluster_sizes"] = plot_cluster_sizes(sizes, workdir / "cluster_sizes.png").name
    if counts := found("curate", L.ENTRY_COUNTS):
        plots["entry_counts"] = plot_entry_counts(counts, workdir / "entry_counts.png").name
    if metrics := found("train", L.TRAIN_METRICS):
        plots["train_loss"] = plot_loss(metrics, workdir / "train_loss.png").name
    if evaluation:
        plots["eval"] = plot_eval(evaluation, workdir / "eval.png").name
    return plots


def _markdown(report: Mapping[str, Any], manifests: Mapping[str, dict]) -> str:
    lines = [f"# curaclip run {report['run_id']}", "", f"config hash `{report['config_hash']}`, "
             f"{report['seconds']:.1f} s", "", "| stage | status | seconds | rows in | rows out | filtered "
             "| quarantined |", "|---|---|---:|---:|---:|---:|---:|"]
    for stage, s in report["stages"].items():
        lines.append(f"| {stage} | {s['status']} | {s['seconds']:.1f} | {s['rows_in']} | {s['rows_out']} "
                     f"| {s['filtered']} | {s['quarantined']} |")
    for stage, manifest in manifests.items():
        for kind, reasons in manifest.get("reasons", {}).items():
            if reasons:
                lines += ["", f"**{stage}, {kind}:** " + ", ".join(f"{r} {n}" for r, n in reasons.items())]
    lines += _curation_markdown(manifests.get("curate", {}))
    lines += _cluster_markdown(manifests.get("cluster", {}))
    if report.get("simulated"):
        lines += ["", "## Simulated stages", "", "| stage | backend | what it could see |", "|---|---|---|"]
        lines += [f"| {stage} | {b['name']} (error rate {b.get('error_rate')}) | {b['sees']} |"
                  for stage, b in report["simulated"].items()]
    lines += _captions_markdown(manifests, report.get("dry_run") or {})
    if "embed" in manifests:
        lines += ["", f"**embed** model: {manifests['embed'].get('model')}"]
    if report.get("eval_skipped"):
        lines += ["", "## Evaluation", "", f"Skipped: {report['eval_skipped']}."]
    lines += _eval_markdown(report.get("eval") or [], manifests.get("eval", {}).get("eval_datasets", []))
    lines += [""] + [f"![{name}]({file})" for name, file in report.get("plots", {}).items()]
    return "\n".join(lines) + "\n"


def _eval_markdown(results: Sequence[Mapping[str, Any]], datasets: Sequence[Mapping[str, Any]]) -> list[str]:
    """The headline metric of every (dataset, task), and each dataset's size and rejected rows."""
    if not results:
        return []
    lines = ["", "## Evaluation", "", "| dataset | task | metric | value |", "|---|---|---|---:|"]
    for r in results:
        lines += [f"| {r['dataset']} | {r['task']} | {metric} | "
                  f"{'n/a' if value is None else format(value, '.4f')} |" for metric, value in headline(r).items()]
    if datasets:
        lines += ["", "| dataset | kind | images | rejected | tasks |", "|---|---|---:|---:|---|"]
        lines += [f"| {d['dataset']} | {d['kind']} | {d['images']} | {d['rejected']} | {', '.join(d['tasks'])} |"
                  for d in datasets]
    return lines


def _captions_markdown(manifests: Mapping[str, dict], dry_run: Mapping[str, dict]) -> list[str]:
    """Requests per caption stage: sent, from the cache, failed per reason, tokens; and any dry-run estimate."""
    tallies = {stage: m["captions"] for stage, m in manifests.items() if m.get("captions", {}).get("requests")}
    lines = []
    if tallies:
        lines += ["", "## Caption requests", "", "| stage | requests | cached | sent | failed | failure share "
                  "| prompt tokens | completion tokens |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for stage, t in tallies.items():
            lines.append(f"| {stage} | {t['requests']} | {t['cached']} | {t['sent']} | "
                         f"{sum(t['failures'].values())} | {t['failure_share']:.2%} | {t['prompt_tokens']} "
                         f"| {t['completion_tokens']} |")
        for stage, t in tallies.items():
            if failed := {r: n for r, n in t["failures"].items() if n}:
                lines += ["", f"**{stage}, failed requests:** " + ", ".join(f"{r} {n}" for r, n in failed.items())]
    for stage, d in dry_run.items():
        lines += ["", f"## Dry run: {stage}", "", f"{d['requests']} requests to send ({d['cached']} already "
                  f"cached) for {d['samples']} samples; about {d['prompt_tokens']} prompt tokens, "
                  f"{d['images']} images, at most {d['max_completion_tokens']} completion tokens. Nothing was sent."]
    return lines


def _curation_markdown(manifest: Mapping[str, Any]) -> list[str]:
    dist = manifest.get("distribution")
    if not dist:
        return []
    lines = ["", "## Curation (MetaCLIP balancing)", "", "| statistic | before | after |", "|---|---:|---:|"]
    for name in ("matches", "head_share", "entropy_bits", "max_count"):
        b, a = dist[f"{name}_before"], dist[f"{name}_after"]
        lines.append(f"| {name} | {b:.3f} | {a:.3f} |" if isinstance(b, float) else f"| {name} | {b} | {a} |")
    lines += ["", f"t = {dist['t']}; {dist['entries_matched']} of {dist['entries']} entries matched, "
              f"{dist['head_entries']} in the head (count > t).", "",
              "| top entry | before | after |", "|---|---:|---:|"]
    lines += [f"| {e['entry']} | {e['count_before']} | {e['count_after']} |"
              for e in manifest.get("top_entries", [])[:10]]
    return lines


def _cluster_markdown(manifest: Mapping[str, Any]) -> list[str]:
    sizes = manifest.get("sizes")
    if not sizes:
        return []
    centers = manifest["centers"]
    lines = ["", "## Clusters (MLCD)", "",
             f"{centers['num_centers']} centers ({centers['method']} k-means on {manifest['points']} points, "
             f"{centers['assign']} assignment); samples per center: min {sizes['min']:.0f}, median "
             f"{sizes['median']:.0f}, max {sizes['max']:.0f}; {sizes['empty']:.0f} empty; imbalance "
             f"{sizes['imbalance']:.2f}."]
    if agreement := manifest.get("agreement"):
        lines += ["", "Agreement of the top-1 clusters with the synthetic world's true attributes (a random assignment "
                  "of the same sizes in brackets):", "", "| attribute | classes | NMI | purity |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {name} | {a['classes']} | {a['nmi']:.3f} ({a['nmi_random']:.3f}) | {a['purity']:.3f} "
                  f"({a['purity_random']:.3f}) |" for name, a in agreement.items()]
    if semdedup := manifest.get("semdedup"):
        counts = ", ".join(f"eps {eps}: {n}" for eps, n in semdedup["dropped_by_eps"].items())
        lines += ["", f"SemDeDup (eps {semdedup['eps']} applied, keep {semdedup['keep']}): dropped per eps {counts}."]
    return lines


def simulated_stages(manifests: Mapping[str, dict]) -> dict[str, dict]:
    """The stages whose model was a stand-in, with what the stand-in could see (from their manifests)."""
    return {stage: m["backend"] for stage, m in manifests.items()
            if isinstance(m.get("backend"), dict) and m["backend"].get("simulated")}


def write_report(workdir: str | Path, run_id: str, config_hash: str, refs: Mapping[str, ArtifactRef],
                 seconds: float, dry_run: Mapping[str, dict] | None = None, started_at: float | None = None
                 ) -> dict[str, Any]:
    """Write report.json, report.md and the plots; return the report dict. ``dry_run``: a caption stage's
    estimate, where the run stopped at it; ``started_at``: the run's start (epoch seconds), for gc."""
    workdir = Path(workdir)
    store = ArtifactStore(workdir, W.mirror_of(workdir))
    manifests = {stage: store.manifest(stage, ref.key) for stage, ref in refs.items()}
    evaluation = manifests.get("eval", {}).get("eval", [])
    report: dict[str, Any] = {
        "run_id": run_id,
        "config_hash": config_hash,
        "seconds": round(seconds, 3),
        **({"started_at": started_at} if started_at is not None else {}),
        "stages": {stage: stage_summary(ref) for stage, ref in refs.items()},
        "eval": list(evaluation),
        "eval_skipped": manifests.get("eval", {}).get("skipped"),
        "simulated": simulated_stages(manifests),
        "captions": {stage: m["captions"] for stage, m in manifests.items() if "captions" in m},
    }
    if dry_run:
        report["dry_run"] = dict(dry_run)
    report["plots"] = _plots(workdir, refs, evaluation)
    (workdir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False, default=str))
    (workdir / "report.md").write_text(_markdown(report, manifests))
    W.push(workdir / "report.json", workdir / "report.md", *(workdir / name for name in report["plots"].values()))
    write_run_record(workdir, report)  # reports/<run_id>.json: what gc keeps for the run (tasks.store.lifetime)
    return report
