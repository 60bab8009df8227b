"""Does T.stddev predict the student? Pearson, Spearman and Kendall (with p-values) between each
candidate's T.stddev and its students' final test loss (and accuracy), per teacher->student
pair, read from MLflow; a scatter plot; Markdown and HTML reports; artifacts on the sweep run.

For validation sweeps (every candidate trained) it also answers the pruning question: would a
top-k pruned sweep have kept the exhaustive winner, for every k, and at what compute.
"""
from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Optional

import numpy as np
from mlflow import MlflowClient
from scipy import stats

from augtune.search.results.tracking import (BASELINE_VERDICT_TAG, CANDIDATE_TAG, PAIR_TAG, REPORT_VERDICT_TAG, STAGE_TAG,
                                             VALIDATE_PROXY_TAG, Tracker)
from augtune.search.results.trials import completed_trials, trial_rows
from augtune.search.selection.trust import noise_ceiling, seed_bootstrap, separability, topk_regret, verdict

MIN_CANDIDATES = 3


class ReportError(ValueError):
    """Not enough data for a report; the CLI exits with code 2 and writes nothing."""


@dataclass
class CandidatePoint:
    candidate: str
    t_stddev: float
    low: float
    high: float
    test_loss: float
    test_acc: float
    seeds: int
    test_loss_std: float = 0.0
    test_losses: list = field(default_factory=list)  # one per seed
    val_loss: float = float("nan")
    val_losses: list = field(default_factory=list)
    zoo: dict = field(default_factory=dict)  # the proxy zoo's other scores (search/selection/proxy.py ZOO)


@dataclass
class Correlation:
    target: str
    pearson: float
    pearson_p: float
    spearman: float
    spearman_p: float
    kendall: float
    kendall_p: float
    n: int


@dataclass
class PairReport:
    pair: str
    sweep_run_id: str
    validate_proxy: bool
    points: list[CandidatePoint]
    correlations: list[Correlation]
    pruning: dict = field(default_factory=dict)
    trust: dict = field(default_factory=dict)  # seed-bootstrap intervals, noise ceiling, regret, verdict
    zoo: list = field(default_factory=list)  # zoo_analysis rows
    baseline: Optional[str] = None  # the sweep's recipe-baseline line (search/results/baseline.py), when it trained one


def correlate(x: list[float], y: list[float], target: str) -> Correlation:
    pearson = stats.pearsonr(x, y)
    spearman = stats.spearmanr(x, y)
    kendall = stats.kendalltau(x, y)
    return Correlation(target, float(pearson.statistic), float(pearson.pvalue), float(spearman.statistic),
                       float(spearman.pvalue), float(kendall.statistic), float(kendall.pvalue), len(x))


def _sweeps(tracker: Tracker, sweep_run_id: Optional[str]) -> list:
    if sweep_run_id:
        return [tracker.client.get_run(sweep_run_id)]
    runs = tracker.runs(f"tags.`{STAGE_TAG}` = 'sweep'", order_by=["attributes.start_time DESC"])
    latest: dict[str, object] = {}
    for run in runs:  # the most recent sweep of each pair
        latest.setdefault(run.data.tags.get(PAIR_TAG, "?"), run)
    return list(latest.values())


def collect_points(tracker: Tracker, sweep_run_id: str) -> list[CandidatePoint]:
    proxy = {r.data.tags[CANDIDATE_TAG]: r.data.metrics for r in tracker.children(sweep_run_id, "proxy")}
    trials: dict[str, list] = {}
    for row in completed_trials(trial_rows(tracker, sweep_run_id), "test_loss"):
        trials.setdefault(row.augmentation, []).append(row)
    points = []
    for candidate, complete in sorted(trials.items()):
        if candidate not in proxy:
            continue
        losses = [m.test_loss for m in complete]
        val_losses = [m.val_loss for m in complete if m.val_loss is not None]
        p = proxy[candidate]
        points.append(CandidatePoint(candidate, p["t_stddev"], p.get("t_stddev_low", math.nan),
                                     p.get("t_stddev_high", math.nan), mean(losses),
                                     mean(m.test_acc for m in complete), len(complete),
                                     float(np.std(losses, ddof=1)) if len(losses) > 1 else 0.0,
                                     losses, mean(val_losses) if len(val_losses) == len(losses) else math.nan,
                                     val_losses if len(val_losses) == len(losses) else [],
                                     {k.removeprefix("proxy."): v for k, v in p.items() if k.startswith("proxy.")}))
    return points


def zoo_analysis(points: list[CandidatePoint], resamples: int = 2000) -> list[dict]:
    """How well each zoo score predicted this sweep's students: Spearman and Kendall with the
    mean test loss, signed so that + means the score's predicted direction held (ZOO), with 95%
    seed-bootstrap intervals."""
    from augtune.search.selection.proxy import ZOO  # loads torch (2.4 s), which a report needs nowhere else

    rows = []
    for name, direction in ZOO.items():
        values = [p.t_stddev if name == "t_stddev" else p.zoo.get(name, math.nan) for p in points]
        if any(v is None or math.isnan(v) for v in values) or len(set(values)) < 2:
            continue
        # lower-is-better scores should rise with the loss; higher-is-better ones fall with it
        sign = 1.0 if direction == "lower" else -1.0
        corr = correlate([sign * v for v in values], [p.test_loss for p in points], "test_loss")
        interval = seed_bootstrap([sign * v for v in values], [p.test_losses for p in points], resamples)
        rows.append({"score": name, "direction": direction, "spearman": corr.spearman,
                     "spearman_interval": list(interval["spearman"]), "kendall": corr.kendall,
                     "kendall_interval": list(interval["kendall"]), "n": corr.n})
    return rows


def pruning_analysis(points: list[CandidatePoint], survivors: Optional[list[str]], all_candidates: int) -> dict:
    """For a validation sweep: for each k, does top-k by proxy contain the winner by test loss?"""
    by_proxy = sorted(points, key=lambda p: p.t_stddev)
    winner = min(points, key=lambda p: p.test_loss).candidate
    rank_of_winner = [p.candidate for p in by_proxy].index(winner) + 1
    table = [{"k": k, "keeps_winner": k >= rank_of_winner, "compute_fraction": k / len(points)}
             for k in range(1, len(points) + 1)]
    out = {"exhaustive_winner": winner, "winner_proxy_rank": rank_of_winner, "candidates": len(points),
           "top_k": table}
    if survivors is not None:
        out["kept"] = survivors
        out["kept_winner"] = winner in survivors
    out["all_candidates"] = all_candidates
    return out


def trust_analysis(points: list[CandidatePoint], correlations: list[Correlation], top_k: int = 3) -> dict:
    """How far these numbers let one trust the proxy (search.trust): for test loss (the paper's
    protocol) and, where logged, validation loss."""

    names = [p.candidate for p in points]
    proxy = [p.t_stddev for p in points]
    out: dict = {}
    for target, per_seed in (("test_loss", [p.test_losses for p in points]),
                             ("val_loss", [p.val_losses for p in points])):
        if any(len(v) == 0 for v in per_seed):
            continue
        sep = separability(per_seed)
        corr = next((c for c in correlations if c.target == target), None)
        intervals = seed_bootstrap(proxy, per_seed)
        regret = topk_regret(names, proxy, [float(np.mean(v)) for v in per_seed])
        out[target] = {"anova_f": sep.f, "anova_p": sep.p, "icc1": sep.icc1, "reliability": sep.reliability,
                       "seed_sd": sep.within_sd, "spread_sd": sep.between_sd, "noise_ceiling": noise_ceiling(sep),
                       "intervals": {k: list(v) for k, v in intervals.items()}, "regret": regret,
                       "verdict": verdict(sep, corr.spearman, intervals["spearman"], regret, top_k,
                                          spearman_p=corr.spearman_p) if corr else ""}
    return out


def build_reports(uri: str, experiment: str, sweep_run_id: Optional[str] = None) -> list[PairReport]:
    if MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment) is None:
        raise ReportError(f"no MLflow experiment named {experiment!r} at {uri}")
    tracker = Tracker(uri, experiment)
    reports = []
    for sweep in _sweeps(tracker, sweep_run_id):
        points = collect_points(tracker, sweep.info.run_id)
        pair = sweep.data.tags.get(PAIR_TAG, "?")
        if len(points) < MIN_CANDIDATES:
            raise ReportError(f"sweep {sweep.info.run_id} ({pair}) has {len(points)} candidate(s) with students "
                              f"trained to the end; a correlation needs at least {MIN_CANDIDATES}. Run "
                              f"`augtune sweep CONFIG --validate-proxy` to train every candidate.")
        t = [p.t_stddev for p in points]
        correlations = [correlate(t, [p.test_loss for p in points], "test_loss"),
                        correlate(t, [p.test_acc for p in points], "test_acc")]
        if all(not math.isnan(p.val_loss) for p in points):  # selection data, beside the paper's test protocol
            correlations.append(correlate(t, [p.val_loss for p in points], "val_loss"))
        validate = sweep.data.tags.get(VALIDATE_PROXY_TAG) == "True"
        survivors = sweep.data.params.get("survivors")
        total = len(tracker.children(sweep.info.run_id, "proxy"))
        pruning = pruning_analysis(points, None if validate or survivors is None else survivors.split(","), total)
        pruning.update({k: sweep.data.metrics[k] for k in ("estimated_seconds_saved", "compute_saved_fraction",
                                                            "trial_seconds", "proxy_seconds") if k in sweep.data.metrics})
        top_k = int(sweep.data.params.get("prune.top_k", 3))
        reports.append(PairReport(pair, sweep.info.run_id, validate, points, correlations, pruning,
                                  trust_analysis(points, correlations, top_k), zoo_analysis(points),
                                  sweep.data.tags.get(BASELINE_VERDICT_TAG)))
    if not reports:
        raise ReportError(f"experiment {experiment!r} has no sweep runs")
    return reports


# ---------------------------------------------------------------- rendering

def plot(report: PairReport, path: Path) -> Path:
    import matplotlib  # a second of import, for the plot only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    x = np.array([p.t_stddev for p in report.points])
    for ax, target, label in ((axes[0], "test_loss", "student test CE loss"), (axes[1], "test_acc", "student test accuracy")):
        y = np.array([getattr(p, target) for p in report.points])
        low = np.array([p.low for p in report.points])
        high = np.array([p.high for p in report.points])
        xerr = np.vstack([np.nan_to_num(x - low), np.nan_to_num(high - x)]).clip(min=0)
        yerr = [p.test_loss_std for p in report.points] if target == "test_loss" else None
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=3, color="tab:blue")
        for p, yi in zip(report.points, y):
            ax.annotate(p.candidate.replace("entropy=teacher,", ""), (p.t_stddev, yi),
                        textcoords="offset points", xytext=(4, 4), fontsize=6)
        slope, intercept = np.polyfit(x, y, 1)
        grid = np.linspace(x.min(), x.max(), 50)
        corr = next(c for c in report.correlations if c.target == target)
        ax.plot(grid, slope * grid + intercept, "--", color="tab:red",
                label=f"fit; Pearson {corr.pearson:.3f} (p={corr.pearson_p:.3g})")
        ax.set_xlabel("T.stddev (teacher only)")
        ax.set_ylabel(label + (" (mean ± std over seeds)" if target == "test_loss" else " (mean over seeds)"))
        ax.legend(fontsize=8)
    fig.suptitle(f"{report.pair}: T.stddev vs student ({len(report.points)} candidates)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _with_interval(value: float, trust: dict, target: str, name: str) -> str:
    interval = trust.get(target, {}).get("intervals", {}).get(name)
    if not interval or any(math.isnan(v) for v in interval):
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]"


def _table_rows(report: PairReport) -> list[list[str]]:
    t = report.trust
    return [[c.target, _with_interval(c.pearson, t, c.target, "pearson"), f"{c.pearson_p:.3g}",
             _with_interval(c.spearman, t, c.target, "spearman"), f"{c.spearman_p:.3g}",
             _with_interval(c.kendall, t, c.target, "kendall"), f"{c.kendall_p:.3g}", str(c.n)]
            for c in report.correlations]


REGRET_HEADER = ["k", "kept best", "regret (test loss)", "keeps winner", "compute"]


def _regret_rows(report: PairReport) -> list[list[str]]:
    rows = report.trust.get("test_loss", {}).get("regret", [])
    return [[str(r["k"]), r["kept_best"], f"{r['regret']:.4f}", "yes" if r["keeps_winner"] else "no",
             f"{r['compute_fraction']:.0%}"] for r in rows]


ZOO_HEADER = ["proxy", "better when", "Spearman (+ = as predicted)", "Kendall", "n"]


def _zoo_rows(report: PairReport) -> list[list[str]]:
    def cell(value, interval):
        return f"{value:+.2f} [{interval[0]:+.2f}, {interval[1]:+.2f}]"

    return [[r["score"], r["direction"], cell(r["spearman"], r["spearman_interval"]),
             cell(r["kendall"], r["kendall_interval"]), str(r["n"])] for r in report.zoo]


def _trust_lines(report: PairReport) -> list[str]:
    lines = []
    for target, t in report.trust.items():
        lines.append(f"{target}: students separate the candidates with ANOVA F = {t['anova_f']:.2f} "
                     f"(p = {t['anova_p']:.2g}); seed sd {t['seed_sd']:.4f} against a spread of means of "
                     f"{t['spread_sd']:.4f}; reliability of the means {t['reliability']:.2f}, so no predictor can "
                     f"correlate above {t['noise_ceiling']:.2f} (noise ceiling). Intervals: 95% seed bootstrap.")
    if "test_loss" in report.trust:
        lines.append("Verdict: " + report.trust["test_loss"]["verdict"])
    return lines


HEADER = ["target", "Pearson", "p", "Spearman", "p", "Kendall", "p", "n"]
POINT_HEADER = ["candidate", "T.stddev", "interval", "test loss", "test acc", "seeds"]


def _point_rows(report: PairReport) -> list[list[str]]:
    return [[p.candidate, f"{p.t_stddev:.6f}", f"[{p.low:.6f}, {p.high:.6f}]", f"{p.test_loss:.4f}",
             f"{p.test_acc:.4f}", str(p.seeds)] for p in sorted(report.points, key=lambda p: p.t_stddev)]


def _pruning_lines(report: PairReport) -> list[str]:
    pr = report.pruning
    lines = [f"Exhaustive winner (lowest mean test loss): `{pr['exhaustive_winner']}`, proxy rank "
             f"{pr['winner_proxy_rank']} of {pr['candidates']}."]
    if "kept_winner" in pr:
        lines.append(f"This pruned sweep kept {len(pr['kept'])} of {pr['all_candidates']} candidates; the best "
                     f"among the trained ones {'is' if pr['kept_winner'] else 'is not'} "
                     "what an exhaustive sweep of the kept set found (the exhaustive winner over all "
                     "candidates is known only from a validation sweep).")
    else:
        smallest = next(row["k"] for row in pr["top_k"] if row["keeps_winner"])
        lines.append(f"A top-k pruned sweep keeps the winner for every k >= {smallest} "
                     f"(training {smallest / pr['candidates']:.0%} of the candidates).")
    if report.validate_proxy:
        if "proxy_seconds" in pr and "trial_seconds" in pr:
            lines.append(f"Validation sweep: every candidate trained. The proxy took {pr['proxy_seconds']:.0f} s "
                         f"against {pr['trial_seconds']:.0f} trial-seconds of student training.")
    elif "compute_saved_fraction" in pr:
        lines.append(f"Compute saved by this sweep's pruning: {pr['compute_saved_fraction']:.0%} "
                     f"(about {pr.get('estimated_seconds_saved', 0):.0f} s).")
    return lines


def markdown(reports: list[PairReport], images: dict[str, str]) -> str:
    out = ["# T.stddev vs student: correlation report", ""]
    for r in reports:
        out += [f"## {r.pair} (sweep run `{r.sweep_run_id}`{', validation sweep' if r.validate_proxy else ''})", "",
                "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(row) + " |" for row in _table_rows(r)]
        out += ["", "| " + " | ".join(POINT_HEADER) + " |", "|" + "---|" * len(POINT_HEADER)]
        out += ["| " + " | ".join(row) + " |" for row in _point_rows(r)]
        if _regret_rows(r):
            out += ["", "| " + " | ".join(REGRET_HEADER) + " |", "|" + "---|" * len(REGRET_HEADER)]
            out += ["| " + " | ".join(row) + " |" for row in _regret_rows(r)]
        if _zoo_rows(r):
            out += ["", "The proxy zoo against this sweep's students (test loss; 95% seed-bootstrap intervals):", "",
                    "| " + " | ".join(ZOO_HEADER) + " |", "|" + "---|" * len(ZOO_HEADER)]
            out += ["| " + " | ".join(row) + " |" for row in _zoo_rows(r)]
        out += ["", *_trust_lines(r), "", *_pruning_lines(r), ""]
        if r.baseline:
            out += ["Recipe " + r.baseline, ""]
        out += [f"![scatter]({images[r.sweep_run_id]})", ""]
    return "\n".join(out)


def html_page(reports: list[PairReport], image_paths: dict[str, Path]) -> str:
    def table(header, rows):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>augtune correlation report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style>",
             "</head><body><h1>T.stddev vs student: correlation report</h1>"]
    for r in reports:
        png = base64.b64encode(image_paths[r.sweep_run_id].read_bytes()).decode()
        parts += [f"<h2>{html.escape(r.pair)}</h2><p>sweep run <code>{r.sweep_run_id}</code></p>",
                  table(HEADER, _table_rows(r)), table(POINT_HEADER, _point_rows(r)),
                  table(REGRET_HEADER, _regret_rows(r)) if _regret_rows(r) else "",
                  table(ZOO_HEADER, _zoo_rows(r)) if _zoo_rows(r) else "",
                  "".join(f"<p>{html.escape(line)}</p>" for line in _trust_lines(r)),
                  "".join(f"<p>{html.escape(line)}</p>" for line in _pruning_lines(r)),
                  f"<p>Recipe {html.escape(r.baseline)}</p>" if r.baseline else "",
                  f"<img alt='scatter' src='data:image/png;base64,{png}'>"]
    parts.append("</body></html>")
    return "".join(parts)


def write_report(uri: str, experiment: str, output: Path, sweep_run_id: Optional[str] = None,
                 log_to_mlflow: bool = True) -> dict[str, Path]:
    """Build everything in memory first; only then write files (no half-written report)."""
    reports = build_reports(uri, experiment, sweep_run_id)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    images = {}
    for r in reports:
        safe = "".join(ch if ch.isalnum() else "_" for ch in r.pair)
        images[r.sweep_run_id] = plot(r, output / f"correlation_{safe}.png")
    files = {"png": list(images.values())[0], "markdown": output / "report.md", "html": output / "report.html",
             "json": output / "report.json"}
    files["markdown"].write_text(markdown(reports, {k: v.name for k, v in images.items()}))
    files["html"].write_text(html_page(reports, images))
    files["json"].write_text(json.dumps([asdict(r) for r in reports], indent=2))
    if log_to_mlflow:
        tracker = Tracker(uri, experiment)
        for r in reports:
            for path in (files["markdown"], files["html"], files["json"], images[r.sweep_run_id]):
                tracker.log_file(r.sweep_run_id, path, "report")
            if "test_loss" in r.trust:
                t = r.trust["test_loss"]
                tracker.log(r.sweep_run_id, metrics={"report_noise_ceiling": t["noise_ceiling"],
                                                     "report_anova_p": t["anova_p"],
                                                     "report_spearman_low": t["intervals"]["spearman"][0],
                                                     "report_spearman_high": t["intervals"]["spearman"][1]},
                            tags={REPORT_VERDICT_TAG: t["verdict"]})
            for c in r.correlations:
                tracker.log(r.sweep_run_id, metrics={f"{c.target}_pearson": c.pearson, f"{c.target}_spearman": c.spearman,
                                                     f"{c.target}_kendall": c.kendall,
                                                     f"{c.target}_pearson_p": c.pearson_p,
                                                     f"{c.target}_spearman_p": c.spearman_p,
                                                     f"{c.target}_kendall_p": c.kendall_p})
    files["reports"] = reports  # type: ignore[assignment]
    return files
