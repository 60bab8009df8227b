"""`augtune` command line. Bad input exits with code 2 before Ray starts or anything is written."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

EXIT_BAD_INPUT = 2
# Each command imports what it runs, inside its function: this module alone imports in 0.02 s,
# the sweep driver with torch, Ray Tune and MLflow in 4.7 s (measured on 2 cores), so `--help`
# and a usage error answer at once.


def _train_teacher(args) -> int:
    from augtune.search.sweep_config import load_config
    from augtune.search.standalone.proxy_job import load_checked_data
    from augtune.search.standalone.teacher import default_teacher_path, train_teacher
    from augtune.trainables.engine import evaluate_split, load_checkpoint, resolve_device

    cfg = load_config(args.config, _overrides(args))
    data = load_checked_data(cfg, proxy=False)
    out = Path(args.output) if args.output else default_teacher_path(cfg)
    print(f"training teacher {cfg.teacher.model} on {cfg.data.name} "
          f"({len(data.train)} train / {len(data.test)} test images, {data.num_classes} classes)")
    path, final = train_teacher(cfg, data, progress=not args.no_progress, path=out)
    device = resolve_device(cfg.device)
    model, _ = load_checkpoint(path, data, device)
    reloaded = evaluate_split(model, data, device)
    summary = {"checkpoint": str(path), "test_acc": final["test_acc"], "test_loss": final["test_loss"],
               "reloaded_test_acc": reloaded["acc"]}
    print(json.dumps(summary, indent=2))
    return 0


def _train_method(args) -> int:
    from augtune.search.sweep_config import load_config
    from augtune.search.standalone.single_run import run_folder, train_single

    cfg = load_config(args.config, _overrides(args))
    if args.threads is not None:
        if args.threads < 1:
            from augtune.search.sweep_config import ConfigError
            raise ConfigError(f"--threads: give a positive number, got {args.threads}")
        import torch
        torch.set_num_threads(args.threads)  # a trial's thread count reproduces its numbers exactly on CPU
    summary = train_single(cfg, args.what, args.augmentation, args.seed, resume=args.resume, track=args.track,
                           progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    print(f"outputs in {run_folder(cfg, args.what)}")
    return 0


def _proxy(args) -> int:
    from augtune.search.sweep_config import load_config
    from augtune.search.standalone.proxy_job import proxy_command

    cfg = load_config(args.config, _overrides(args))
    proxy_command(cfg, progress=not args.no_progress)
    return 0


def _sweep(args) -> int:
    from augtune.search.sweep_config import load_config
    from augtune.search.sweep.driver import run_sweep

    overrides = _overrides(args)
    if args.validate_proxy:
        overrides["search.validate_proxy"] = True
    cfg = load_config(args.config, overrides)
    outcome = run_sweep(cfg, resume=args.resume, progress=not args.no_progress)
    if outcome.interrupted:
        return 130  # the shell's code for Ctrl-C
    return 0 if outcome.best is not None else 1


def _best(args) -> int:
    from augtune.search.results.best import baseline_lines, format_left_out, format_summary, left_out, summarise_trials
    from augtune.search.sweep.printing import TEST_SELECTION_WARNING

    if args.metric.startswith("test_") and not args.select_on_test:
        print(f"augtune: error: --metric {args.metric} picks the best augmentation on the test set, which biases "
              "its reported score; use --metric val_loss (the default) or add --select-on-test to accept that",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    from augtune.search.standalone.proxy_job import check_tracking_uri

    check_tracking_uri(args.tracking_uri, must_exist=True)
    try:
        summaries = summarise_trials(args.tracking_uri, args.experiment, args.metric)
    except LookupError as exc:
        print(f"augtune: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not summaries:
        hint = (" (sweeps before validation splits logged only test metrics: --metric test_loss --select-on-test)"
                if args.metric.startswith("val_") else "")
        print(f"augtune: error: experiment {args.experiment!r} has no finished trial runs with final_{args.metric}"
              f"{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(format_summary(summaries, args.metric))
    best = summaries[0]
    print(f"\nbest augmentation: {best.candidate}  (best {args.metric} = {best.best:.4f})")
    for run in best.runs:
        test = "" if args.metric.startswith("test_") or run.test_loss is None else \
            f"  test_loss={run.test_loss:.4f}  test_acc={run.test_acc:.4f}"
        print(f"  run {run.run_id}  {run.run_name}  {args.metric}={run.metric(args.metric):.4f}{test}  "
              f"epochs={run.epochs:.0f}")
    for line in baseline_lines(args.tracking_uri, args.experiment)[:3]:
        print(line)
    if args.export:
        from augtune.search.results.best import export_best

        written = export_best(args.tracking_uri, args.experiment, Path(args.export), args.metric)
        print(f"\nexported the best trial's config to {written['config']}"
              + (f" and its student weights to {written['student']}" if "student" in written else
                 " (no student weights were logged for that run)")
              + f"; reproduce with: augtune train {written['method']} {written['config']} --threads 1")
    note = format_left_out(left_out(args.tracking_uri, args.experiment))
    if note:
        print(note)
    if args.metric.startswith("test_"):
        print(TEST_SELECTION_WARNING)
    return 0


def _report(args) -> int:
    from augtune.search.results.report import ReportError, write_report

    from augtune.search.standalone.proxy_job import check_tracking_uri

    check_tracking_uri(args.tracking_uri, must_exist=True)
    output = Path(args.output) if args.output else Path("reports") / args.experiment
    try:
        files = write_report(args.tracking_uri, args.experiment, output, args.sweep_run)
    except ReportError as exc:
        print(f"augtune: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for report in files["reports"]:
        print(f"{report.pair}  (sweep run {report.sweep_run_id}, {len(report.points)} candidates)")
        print(f"  {'target':<10} {'Pearson':>8} {'p':>9} {'Spearman':>9} {'p':>9} {'Kendall':>8} {'p':>9}")
        for c in report.correlations:
            print(f"  {c.target:<10} {c.pearson:>8.3f} {c.pearson_p:>9.3g} {c.spearman:>9.3f} {c.spearman_p:>9.3g} "
                  f"{c.kendall:>8.3f} {c.kendall_p:>9.3g}")
        trust = report.trust.get("test_loss")
        if trust:
            low, high = trust["intervals"]["spearman"]
            print(f"  seed-bootstrap 95% Spearman (test loss) [{low:.2f}, {high:.2f}]; noise ceiling "
                  f"{trust['noise_ceiling']:.2f}; ANOVA p {trust['anova_p']:.2g}")
            print(f"  verdict: {trust['verdict']}")
    print(f"\nwrote {files['markdown']}, {files['html']}, {files['png']} (also logged to the sweep run)")
    return 0


def _table(args) -> int:
    from augtune.search.sweep_config import load_config
    from augtune.search.sweep.table_job import check_table_config, default_table_path, run_table, table_overrides

    cfg = load_config(args.config, {**_overrides(args), **table_overrides(args.seeds, args.proxy_seeds)})
    output = Path(args.output) if args.output else default_table_path(cfg)
    check_table_config(cfg, output, resume=args.resume)
    outcome = run_table(cfg, args.proxy_seeds, output, resume=args.resume, progress=not args.no_progress)
    if outcome.path is None:
        print("the table was interrupted; continue with `augtune table CONFIG --resume` (same options)")
        return 130
    print(f"\nwrote {outcome.path}: {outcome.runs} of {outcome.expected} (candidate, seed) runs, "
          f"{args.proxy_seeds} proxy seed(s); logged to sweep run {outcome.parent_run_id}\n"
          f"replay it: augtune replay {outcome.path}")
    return 0 if outcome.runs == outcome.expected else 1


def _replay(args) -> int:
    from augtune.search.tables.replay_protocol import (DEFAULT_RECIPES, Budget, TableError, load_for_study, markdown, study,
                                                write_outputs)

    table = Path(args.table)
    output = Path(args.output) if args.output else Path("reports") / f"replay-{table.name.split('.')[0]}"
    budget = Budget(args.replays, args.outer, args.inner)
    if min(budget.replays, budget.outer, budget.inner) < 1:
        print("augtune: error: --replays, --outer and --inner take positive numbers", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        results = study(load_for_study(table), args.recipes or DEFAULT_RECIPES, budget, source=str(table),
                        progress=not args.no_progress)
    except TableError as exc:
        print(f"augtune: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    files = write_outputs(results, output)
    print(markdown(results))
    print(f"wrote {files['markdown']} and {files['json']}")
    return 0


def _overrides(args) -> dict:
    """--set key.path=value pairs; values are read as YAML (numbers, lists, booleans)."""
    out = {}
    for item in getattr(args, "set", None) or []:
        from augtune.search.sweep_config import ConfigError, read_yaml

        key, sep, value = item.partition("=")
        if not sep or not key or not all(key.split(".")):
            raise ConfigError(f"--set takes key.path=value (e.g. student.train.lr=0.05), got {item!r}")
        out[key] = read_yaml(value, f"--set {key}")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="augtune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        p.add_argument("config", help="experiment YAML (see configs/)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config field, e.g. --set teacher.train.epochs=5")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        return p

    train = sub.add_parser("train", help="single training runs without Ray")
    train_sub = train.add_subparsers(dest="what", required=True)
    teacher = with_config(train_sub.add_parser("teacher", help="train and save a teacher"))
    teacher.add_argument("--output", help="checkpoint path (default OUTPUT_DIR/NAME/teacher.pt)")
    teacher.set_defaults(handler=_train_teacher)
    from augtune.trainables.builtin_methods import REGISTRY

    for method in sorted(REGISTRY):
        single = with_config(train_sub.add_parser(method, help=f"one {method} run without Ray (resumable)"))
        single.add_argument("--augmentation", help="candidate id, e.g. 'cutmix_pick(keep=0.5)' (default: the "
                                                  f"config's {method}.augmentation)")
        single.add_argument("--seed", type=int, help="default: the config's seed")
        single.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/NAME/train-METHOD")
        single.add_argument("--track", action="store_true", help="log the run to tracking.uri (MLflow)")
        single.add_argument("--threads", type=int, help="torch CPU threads (trials use 1; `best --export` says so)")
        single.set_defaults(handler=_train_method)

    proxy = with_config(sub.add_parser("proxy", help="rank every candidate by T.stddev (teacher forwards only)"))
    proxy.set_defaults(handler=_proxy)

    sweep = with_config(sub.add_parser("sweep", help="proxy, prune, student trials on Ray, MLflow, best augmentation"))
    sweep.add_argument("--resume", action="store_true", help="continue the last interrupted sweep of this config")
    sweep.add_argument("--validate-proxy", action="store_true",
                       help="train students for every candidate (and search.seeds seeds), no pruning")
    sweep.set_defaults(handler=_sweep)

    best = sub.add_parser("best", help="the best augmentation of an experiment, from MLflow")
    best.add_argument("--experiment", required=True, help="MLflow experiment name")
    best.add_argument("--metric", default="val_loss", choices=["val_loss", "val_acc", "test_loss", "test_acc"],
                      help="selection metric (default val_loss; test_* needs --select-on-test)")
    best.add_argument("--export", metavar="CONFIG.yaml",
                      help="write the best trial's full config (and fetch its student weights) for `augtune train`")
    best.add_argument("--select-on-test", action="store_true",
                      help="allow a test_* metric, accepting that the reported score is biased")
    best.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    best.set_defaults(handler=_best)

    report = sub.add_parser("report", help="T.stddev vs student correlations from MLflow: Markdown, HTML, plot")
    report.add_argument("--experiment", required=True, help="MLflow experiment name")
    report.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    report.add_argument("--sweep-run", help="one sweep's parent run id (default: the latest sweep of each pair)")
    report.add_argument("--output", help="folder for the files (default reports/EXPERIMENT)")
    report.set_defaults(handler=_report)

    table = with_config(sub.add_parser("table", help="learning-curve table of the config's candidates (every one x "
                                                     "N seeds, full length, the proxy zoo) for `augtune replay`"))
    table.add_argument("--seeds", type=int, default=3, help="student seeds per candidate (>= 3; default 3)")
    table.add_argument("--proxy-seeds", type=int, default=3, help="proxy seeds per candidate (default 3)")
    table.add_argument("--output", help="the table file (default OUTPUT_DIR/NAME/table.json.gz)")
    table.add_argument("--resume", action="store_true", help="continue the last interrupted table of this config")
    table.set_defaults(handler=_table)

    replay = sub.add_parser("replay", help="which search strategy pays on a learning-curve table (protocol v2)")
    replay.add_argument("table", help="a learning-curve table (format augtune-learning-curves, >= 3 seeds)")
    replay.add_argument("--recipes", nargs="+", metavar="ID",
                        help="the fixed recipes to beat (default: CutMixPick keep 0.5 and TrivialAugment)")
    replay.add_argument("--replays", type=int, default=200, help="replays per strategy and regime")
    replay.add_argument("--outer", type=int, default=40, help="seed resamples of the two-level bootstrap")
    replay.add_argument("--inner", type=int, default=25, help="replays per seed resample")
    replay.add_argument("--output", help="folder for replay.md/json and the plots (default reports/replay-TABLE)")
    replay.add_argument("--no-progress", action="store_true", help="no per-strategy lines")
    replay.set_defaults(handler=_replay)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from augtune.search.sweep_config import ConfigError
    from augtune.trainables.engine import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, CheckpointError, FileNotFoundError) as exc:
        print(f"augtune: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if argv is None:  # the command line's process, which exits next
            spare_the_exit_a_collection()


def spare_the_exit_a_collection() -> None:
    """Python's exit collects every object left: after a sweep (torch, Ray, MLflow loaded) that
    took 2.2 s of a 22 s run on 2 cores, measured. Frozen objects are skipped; atexit handlers
    (MLflow's, Ray's shutdown) still run, and memory goes back to the system with the process."""
    import gc

    gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
