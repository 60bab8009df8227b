"""Correlation reports: numbers equal scipy's, files exist and agree, too little data exits 2."""
import json

import numpy as np
import pytest
from scipy import stats

from augtune.search.cli import main
from augtune.search.results.report import correlate
from augtune.search.results.tracking import CANDIDATE_TAG, PAIR_TAG, Tracker

FIXTURE = {  # candidate: (t_stddev, final test losses per seed, final test acc per seed)
    "identity": (0.0140, [0.61, 0.65], [0.80, 0.79]),
    "flip(p=0.5)": (0.0131, [0.55, 0.52], [0.83, 0.84]),
    "cutout": (0.0122, [0.50, 0.49], [0.85, 0.86]),
    "mixup(alpha=1.0)": (0.0151, [0.70, 0.74], [0.76, 0.75]),
    "cutmix(alpha=1.0)": (0.0118, [0.47, 0.52], [0.86, 0.85]),
}


def _log_fixture_sweep(uri, experiment, validate=True, candidates=FIXTURE):
    tracker = Tracker(uri, experiment)
    parent = tracker.start_run("sweep:fixture", "sweep", tags={PAIR_TAG: "wrn_40_2->wrn_16_2",
                                                               "augtune.validate_proxy": str(validate)})
    for cand, (t, losses, accs) in candidates.items():
        p = tracker.start_run(f"proxy:{cand}", "proxy", parent, {CANDIDATE_TAG: cand})
        tracker.log(p, metrics={"t_stddev": t, "t_stddev_low": t * 0.9, "t_stddev_high": t * 1.1})
        tracker.end_run(p)
        for loss, acc in zip(losses, accs):
            r = tracker.start_run(f"trial:{cand}", "trial", parent, {CANDIDATE_TAG: cand})
            tracker.log(r, metrics={"final_test_loss": loss, "final_test_acc": acc, "epochs_trained": 30}, step=30)
            tracker.end_run(r)
    # a trial stopped early by ASHA must not enter the means
    r = tracker.start_run("trial:early", "trial", parent, {CANDIDATE_TAG: "identity"})
    tracker.log(r, metrics={"final_test_loss": 9.0, "final_test_acc": 0.1, "epochs_trained": 4})
    tracker.end_run(r)
    tracker.end_run(parent)
    return parent


def test_coefficients_equal_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.random(9).tolist(), rng.random(9).tolist()
    c = correlate(x, y, "test_loss")
    assert c.pearson == pytest.approx(stats.pearsonr(x, y).statistic)
    assert c.pearson_p == pytest.approx(stats.pearsonr(x, y).pvalue)
    assert c.spearman == pytest.approx(stats.spearmanr(x, y).statistic)
    assert c.spearman_p == pytest.approx(stats.spearmanr(x, y).pvalue)
    assert c.kendall == pytest.approx(stats.kendalltau(x, y).statistic)
    assert c.kendall_p == pytest.approx(stats.kendalltau(x, y).pvalue)


def test_report_files_agree_with_scipy_on_fixture_runs(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/m.db"
    parent = _log_fixture_sweep(uri, "fixture")
    out = tmp_path / "report"
    assert main(["report", "--experiment", "fixture", "--tracking-uri", uri, "--output", str(out)]) == 0
    t = [v[0] for v in FIXTURE.values()]
    loss = [float(np.mean(v[1])) for v in FIXTURE.values()]
    expected = stats.pearsonr(t, loss)
    data = json.loads((out / "report.json").read_text())[0]
    loss_corr = next(c for c in data["correlations"] if c["target"] == "test_loss")
    assert loss_corr["pearson"] == pytest.approx(expected.statistic)
    assert loss_corr["pearson_p"] == pytest.approx(expected.pvalue)
    assert loss_corr["kendall"] == pytest.approx(stats.kendalltau(t, loss).statistic)
    assert loss_corr["n"] == 5
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    shown = f"{expected.statistic:.3f}"
    assert shown in md and shown in html and shown in capsys.readouterr().out
    assert "cutmix(alpha=1.0)" in md and "winner" in md
    png = next(out.glob("*.png"))
    from PIL import Image
    with Image.open(png) as img:
        img.load()
        assert img.size[0] > 500
    assert "data:image/png;base64," in html
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/report.html", "report/report.json"} <= logged
    assert client.get_run(parent).data.metrics["test_loss_pearson"] == pytest.approx(expected.statistic)
    # pruning analysis: the winner by mean loss is cutmix, ranked 1st by the proxy
    assert data["pruning"]["exhaustive_winner"] == "cutmix(alpha=1.0)"
    assert data["pruning"]["winner_proxy_rank"] == 1


def test_report_states_how_far_to_trust_the_proxy(tmp_path, capsys):
    from augtune.search.selection.trust import seed_bootstrap

    uri = f"sqlite:///{tmp_path}/m.db"
    parent = _log_fixture_sweep(uri, "trust")
    out = tmp_path / "report"
    assert main(["report", "--experiment", "trust", "--tracking-uri", uri, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    trust = json.loads((out / "report.json").read_text())[0]["trust"]["test_loss"]
    groups = [v[1] for v in FIXTURE.values()]
    ref = stats.f_oneway(*groups)
    assert trust["anova_f"] == pytest.approx(ref.statistic) and trust["anova_p"] == pytest.approx(ref.pvalue)
    means = np.array([np.mean(g) for g in groups])
    msb = 2 * np.sum((means - means.mean()) ** 2) / 4
    msw = sum(np.sum((np.array(g) - np.mean(g)) ** 2) for g in groups) / 5
    assert trust["noise_ceiling"] == pytest.approx(np.sqrt((msb - msw) / msb))
    expected = seed_bootstrap([v[0] for v in FIXTURE.values()], groups)  # same default resamples and seed
    assert trust["intervals"]["spearman"] == pytest.approx(list(expected["spearman"]))
    # top-k regret by hand: proxy order cutmix, cutout, flip, identity, mixup; cutmix is the winner (0.495)
    assert [r["regret"] for r in trust["regret"]] == pytest.approx([0.0] * 5)
    low, high = trust["intervals"]["spearman"]
    rho = stats.spearmanr([v[0] for v in FIXTURE.values()], means).statistic
    assert low > 0 and trust["verdict"].startswith("T.stddev ranks these candidates")
    assert f"{rho:+.2f} [{low:+.2f}, {high:+.2f}]" in trust["verdict"] and "top-3 keeps the winner" in trust["verdict"]
    md = (out / "report.md").read_text()
    assert "Verdict: " + trust["verdict"] in md and "noise ceiling" in md
    assert "verdict: " + trust["verdict"] in printed
    from mlflow import MlflowClient
    run = MlflowClient(tracking_uri=uri).get_run(parent)
    assert run.data.tags["augtune.report_verdict"] == trust["verdict"]
    assert run.data.metrics["report_noise_ceiling"] == pytest.approx(trust["noise_ceiling"])


def test_fewer_than_three_candidates_exits_2_without_files(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/m.db"
    two = dict(list(FIXTURE.items())[:2])
    _log_fixture_sweep(uri, "small", candidates=two)
    out = tmp_path / "report"
    assert main(["report", "--experiment", "small", "--tracking-uri", uri, "--output", str(out)]) == 2
    assert "at least 3" in capsys.readouterr().err
    assert not out.exists()


def test_best_ranks_full_length_runs_before_early_stopped_ones(tmp_path):
    from augtune.search.results.best import summarise_trials

    uri = f"sqlite:///{tmp_path}/m.db"
    parent = _log_fixture_sweep(uri, "best")
    tracker = Tracker(uri, "best")
    # a candidate stopped early by ASHA with a lower loss must not win over full-length runs
    r = tracker.start_run("trial:flip-early", "trial", parent, {CANDIDATE_TAG: "autoaugment"})
    tracker.log(r, metrics={"final_test_loss": 0.01, "final_test_acc": 0.99, "epochs_trained": 10})
    tracker.end_run(r)
    summaries = summarise_trials(uri, "best", "test_loss")
    assert summaries[0].candidate == "cutmix(alpha=1.0)" and summaries[0].best == pytest.approx(0.47)
    assert summaries[-1].candidate == "autoaugment" and not summaries[-1].complete
    identity = next(s for s in summaries if s.candidate == "identity")
    assert identity.mean == pytest.approx(0.63)  # the 4-epoch run (loss 9.0) is left out


def test_report_scores_the_proxy_zoo_against_the_students(tmp_path):
    """Zoo scores logged by the proxy stage (`proxy.NAME`) are correlated with the students' mean
    test loss, signed by each score's predicted direction, and shown with intervals."""
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker(uri, "zoo")
    parent = tracker.start_run("sweep:zoo", "sweep", tags={PAIR_TAG: "r20->r8", "augtune.validate_proxy": "True"})
    entropy = {"identity": 0.10, "flip(p=0.5)": 0.20, "cutout": 0.30, "mixup(alpha=1.0)": 0.05,
               "cutmix(alpha=1.0)": 0.40}
    for cand, (t, losses, accs) in FIXTURE.items():
        p = tracker.start_run(f"proxy:{cand}", "proxy", parent, {CANDIDATE_TAG: cand})
        tracker.log(p, metrics={"t_stddev": t, "proxy.entropy": entropy[cand], "proxy.kl": 0.5})
        tracker.end_run(p)
        for loss, acc in zip(losses, accs):
            r = tracker.start_run(f"trial:{cand}", "trial", parent, {CANDIDATE_TAG: cand})
            tracker.log(r, metrics={"final_test_loss": loss, "final_test_acc": acc, "epochs_trained": 30})
            tracker.end_run(r)
    tracker.end_run(parent)
    out = tmp_path / "report"
    assert main(["report", "--experiment", "zoo", "--tracking-uri", uri, "--output", str(out)]) == 0
    rows = {r["score"]: r for r in json.loads((out / "report.json").read_text())[0]["zoo"]}
    loss = [float(np.mean(v[1])) for v in FIXTURE.values()]
    # entropy is predicted to help when higher: the sign flips before correlating with the loss
    expected = stats.spearmanr([-entropy[c] for c in FIXTURE], loss).statistic
    assert rows["entropy"]["spearman"] == pytest.approx(expected) and expected > 0.9
    low, high = rows["entropy"]["spearman_interval"]
    assert low <= high
    assert rows["t_stddev"]["spearman"] == pytest.approx(stats.spearmanr([v[0] for v in FIXTURE.values()],
                                                                         loss).statistic)
    assert "kl" not in rows  # a constant score predicts nothing and is left out
    assert "The proxy zoo" in (out / "report.md").read_text()
