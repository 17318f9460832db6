"""The `compositional-ai` command: build demo data, run the demo, print the summary."""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from compositional_ai.lib.pseudonym import MissingPseudonymKeyError
from compositional_ai.settings import PSEUDONYM_KEY_ENV, DataPaths


def _landing(args: argparse.Namespace, paths: DataPaths) -> None:
    from compositional_ai.landing.generate import build_demo_landing

    started = time.perf_counter()
    summary = build_demo_landing(
        paths.landing,
        n_batches=args.batches,
        seed=args.seed,
        max_train_photos=args.train_photos,
        max_holdout_photos=args.holdout_photos,
        overwrite=args.overwrite,
    )
    print(
        f"landing data: {len(summary.batches)} batches, {len(summary.faults)} injected faults, "
        f"in {paths.landing} ({time.perf_counter() - started:.1f} s)"
    )


def _fail_orphaned_runs(paths: DataPaths) -> Path:
    """Create DAGSTER_HOME if needed; mark failed, and name, the runs of killed processes."""
    from dagster import DagsterInstance

    from compositional_ai.demo import fail_orphaned_runs, init_dagster_home

    home = init_dagster_home(paths)
    os.environ.setdefault("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as instance:
        for run_id in fail_orphaned_runs(instance):
            print(f"run {run_id} was left unfinished by a killed process: marked failed")
    return home


def _init_home(_args: argparse.Namespace, paths: DataPaths) -> None:
    print(f"DAGSTER_HOME ready at {_fail_orphaned_runs(paths)}")


def _summary(_args: argparse.Namespace, paths: DataPaths) -> None:
    from compositional_ai.definitions import build_resources
    from compositional_ai.summary import build_summary, render, write_summary

    resources = build_resources(paths)
    summary = build_summary(resources["warehouse"], resources["model_registry"])
    write_summary(summary, paths.reports / "demo_summary.json")
    print(render(summary))
    print(f"\nMachine-readable: {paths.reports / 'demo_summary.json'}")


def _demo(args: argparse.Namespace, paths: DataPaths) -> None:
    from compositional_ai.demo import REFERENCE_STEP, run_demo
    from compositional_ai.landing.formats import READY_MARKER

    started = time.perf_counter()
    _fail_orphaned_runs(paths)
    if not any(paths.batches.glob(f"*/{READY_MARKER}")):
        _landing(args, paths)
    else:
        print(f"landing data already in {paths.landing}; `make clean` to rebuild it")
    steps = run_demo(
        paths, on_step=lambda step: print(f"[{time.perf_counter() - started:6.0f} s] {step}")
    )
    elapsed = time.perf_counter() - started
    if steps == [REFERENCE_STEP]:
        print(
            f"\nNothing new since the last run: no landing batch to ingest, nothing to retrain "
            f"(reference data refreshed in {elapsed:.0f} s). New batches under {paths.batches} "
            "are taken in by the next `make demo`, or by the sensors under `make dev`.\n"
        )
    else:
        batches = sum(step.startswith("landing batch") for step in steps)
        print(f"\n{_ran(steps, batches)} in {elapsed:.0f} s.\n")
    _summary(args, paths)
    print(
        "\nOpen the Dagster UI on this instance with `make dev`, then http://127.0.0.1:3000 "
        "(lineage: Assets > View global asset lineage)."
    )


def _ran(steps: list[str], batches: int) -> str:
    """What a demo run materialized, in words."""
    parts = [f"{batches} landing batch{'es' if batches != 1 else ''}"] if batches else []
    if any(step.startswith("seed") for step in steps):
        parts.append("the seed repair model")
    if any(step.startswith("retraining") for step in steps):
        parts.append("a retraining of the models")
    if not parts:
        return "Reference data materialized"
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"Materialized the reference data, {listed}"


def _serve(args: argparse.Namespace, paths: DataPaths) -> None:
    from compositional_ai.repair_service.server import serve

    print(f"repair service on http://{args.host}:{args.port} (OpenAPI: /openapi.json)")
    serve(args.host, args.port, paths)


def _lineage(args: argparse.Namespace, paths: DataPaths) -> None:
    from compositional_ai.definitions import build_resources
    from compositional_ai.feedback.lineage import lineage_of

    model, _, version = args.model.partition("@")
    if not version:
        raise SystemExit("name a version: compositional-ai lineage repair_damage_model@1")
    resources = build_resources(paths)
    registry = resources["model_registry"]
    registered = [v.version for v in registry.versions(model)]
    if not registered:
        names = ", ".join(registry.model_names()) or "none yet"
        raise SystemExit(f"no model named {model!r} is registered (registered models: {names})")
    if version not in registered:
        known = ", ".join(f"{model}@{v}" for v in registered)
        raise SystemExit(
            f"{model}@{version} is not a registered model version (registered: {known})"
        )
    chain = lineage_of(resources["warehouse"], model, version)
    made = sum(row["n"] for row in chain["predictions"])
    print(f"{model}@{version} made {made} predictions" + (":" if made else " yet"))
    for row in chain["predictions"]:
        print(f"  {row['n']:>6} in the {row['source']} inference log, batch {row['batch']}")
    labels = chain["labels"]
    print(
        f"of which {labels['confirmed']} were confirmed by a technician "
        f"({labels['confirmed_correct']} as predicted) and {labels['self_labelled']} entered "
        "training as the model's own label"
    )
    if not chain["consumers"]:
        print("no model version has learned from them yet")
    for row in chain["consumers"]:
        print(
            f"  learned from by {row['consumed_by']}@{row['consumed_by_version']}: {row['n']} "
            f"rows labelled by {row['label_origin']}; that version made "
            f"{row['later_predictions']} predictions since"
        )


def _evaluate(_args: argparse.Namespace, paths: DataPaths) -> None:
    from compositional_ai.evaluation import run_evaluation

    report = paths.reports / "evaluation.json"
    print("training on the 75 % elpv pool and scoring on the fixed 25 % holdout ...")
    results = run_evaluation(report)
    repair, detector = results["repair_damage_model"], results["defect_detector"]
    recommender = results["service_recommender"]
    rows = [
        ("repair model, binary accuracy (defective = p >= 0.5)", repair["binary_accuracy"]),
        ("repair model, 4-class accuracy", repair["four_class_accuracy"]),
        ("repair model, 4-class macro-F1", repair["macro_f1"]),
        ("defect detector, binary accuracy", detector["binary_accuracy"]),
        ("recommender, hit-rate@3", recommender["hit_rate_at_3"]),
        ("popularity baseline, hit-rate@3", recommender["popularity_hit_rate_at_3"]),
    ]
    for name, value in rows:
        print(f"  {name:<58} {100 * value:5.1f} %")
    for cell_type, value in repair["four_class_accuracy_by_cell_type"].items():
        print(f"  repair model, 4-class accuracy, {cell_type:<27} {100 * value:5.1f} %")
    for cell_type, value in repair["binary_accuracy_by_cell_type"].items():
        print(f"  repair model, binary accuracy, {cell_type:<28} {100 * value:5.1f} %")
    config = results["config"]
    print(
        f"  repair model: {config['members']} member(s) at {config['image_size']} px, "
        f"{repair['train_seconds']:.0f} s of training on this machine "
        f"({repair['stopped_reason']}); defect detector {detector['train_seconds']:.0f} s"
    )
    print("published on the same protocol:")
    for name, value in results["published"].items():
        print(f"  {name:<58} {100 * value:5.1f} %")
    print(f"written to {report}")


def _replay_loop(args: argparse.Namespace, paths: DataPaths) -> None:
    from dagster import DagsterInstance

    from compositional_ai.definitions import build_definitions
    from compositional_ai.demo import execute_job, init_dagster_home
    from compositional_ai.feedback.replay_assets import LOOP_REPLAY, PLOT_FILE, REPLAY_OP

    os.environ.setdefault("DAGSTER_HOME", str(init_dagster_home(paths)))
    defs = build_definitions(paths)
    config = {
        "image_size": args.image_size,
        "epochs": args.epochs,
        "seed": args.seed,
        "through_service": not args.in_process,
        "connections": args.connections,
    }
    if not args.in_process:
        print(
            "starting one repair service per variant on 127.0.0.1 (data under "
            f"{paths.root / 'replay'}); every batch is posted to them over HTTP ..."
        )
    started = time.perf_counter()
    instance = DagsterInstance.get()
    execute_job(
        defs, instance, "loop_replay_job", run_config={"ops": {REPLAY_OP: {"config": config}}}
    )
    table = defs.resources["warehouse"].query(
        "select * from feedback.feedback_loop_replay order by step, variant",
        purpose="print the feedback loop replay",
    )
    print(
        f"feedback loop replay in {time.perf_counter() - started:.0f} s: the holdout accuracy "
        "of each version, retrained on confirmed labels or on its own predictions\n"
    )
    print(
        f"{'step':>4}  {'batch':<10}  {'version':<17}  {'served':>6}  {'rows':>5}  "
        f"{'self-labels':>11}  {'4-class':>7}  {'binary':>7}"
    )
    for row in table.iter_rows(named=True):
        # In process there is no registry: the version's only name is the replay's own.
        served = row["served_version"] if row["served_version"] != row["model_version"] else "-"
        print(
            f"{row['step']:>4}  {row['batch']:<10}  {row['model_version']:<17}  "
            f"{served:>6}  {row['train_rows']:>5}  "
            f"{row['self_label_share']:>11.0%}  {row['four_class_accuracy']:>7.3f}  "
            f"{row['binary_accuracy']:>7.3f}"
        )
    event = instance.get_latest_materialization_event(LOOP_REPLAY)
    grading = event.asset_materialization.metadata["grading"].value if event else {}
    if grading.get("through") == "http_service":
        print(
            f"\npredictions through HTTP: {grading['requests_sent']} assessments posted, "
            f"{grading['failures']} failed, p50 latency {grading['p50_latency_ms']:.1f} ms "
            f"over {grading['connections']} connections per service"
        )
        for variant, figures in grading["variants"].items():
            print(
                f"  {variant}: served versions {', '.join(figures['served_versions'])}; "
                f"{figures['outcomes_posted']} technician outcomes posted; "
                f"served log {figures['served_log']}"
            )
    else:
        print("\npredictions made in process (--in-process)")
    print(f"\nPlot: {paths.reports / PLOT_FILE}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="compositional-ai", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    landing_options = argparse.ArgumentParser(add_help=False)
    landing_options.add_argument("--batches", type=int, default=9, help="landing batches")
    landing_options.add_argument("--seed", type=int, default=7)
    landing_options.add_argument(
        "--train-photos",
        type=int,
        default=None,
        help="subsample the training pool (default: all 1,968 cells)",
    )
    landing_options.add_argument(
        "--holdout-photos",
        type=int,
        default=None,
        help="subsample the holdout (default: all 656 cells)",
    )
    landing_options.add_argument("--overwrite", action="store_true")
    commands.add_parser(
        "landing", parents=[landing_options], help="write the demo landing data"
    ).set_defaults(run=_landing)
    commands.add_parser(
        "demo",
        parents=[landing_options],
        help="build demo data if absent, materialize everything, summarise",
    ).set_defaults(run=_demo)
    commands.add_parser("summary", help="print and write the summary").set_defaults(run=_summary)
    commands.add_parser("init-home", help="create DAGSTER_HOME").set_defaults(run=_init_home)
    commands.add_parser(
        "evaluate", help="reproduce the models' holdout figures and write evaluation.json"
    ).set_defaults(run=_evaluate)
    replay = commands.add_parser(
        "replay-loop",
        help="replay the batches through the HTTP repair service: the repair model retrained on "
        "confirmed labels beside one retrained on its own predictions",
    )
    replay.add_argument("--image-size", type=int, default=48)
    replay.add_argument("--epochs", type=int, default=8)
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument(
        "--connections", type=int, default=8, help="concurrent connections to each service"
    )
    replay.add_argument(
        "--in-process",
        action="store_true",
        help="predict in this process instead of through the HTTP repair services",
    )
    replay.set_defaults(run=_replay_loop)
    lineage = commands.add_parser(
        "lineage", help="follow one model version's predictions through the feedback loop"
    )
    lineage.add_argument("model", help="model@version, e.g. repair_damage_model@1")
    lineage.set_defaults(run=_lineage)
    serve = commands.add_parser("serve", help="run the repair service over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("COMPOSITIONAL_AI_LOG_LEVEL", "WARNING"))
    paths = DataPaths.from_env()
    from compositional_ai.demo import DemoInterrupted, DemoRunFailed

    try:
        args.run(args, paths)
    except (KeyboardInterrupt, DemoInterrupted) as error:
        # What was materialized stays; a batch whose run stopped is ingested by the next run.
        stopped = f": {error}" if str(error) else ""
        again = "; `make demo` again takes up what is left" if args.command == "demo" else ""
        print(f"\ninterrupted{stopped}{again}", file=sys.stderr)
        sys.exit(130)
    except DemoRunFailed as error:
        raise SystemExit(f"error: {error}") from None
    except MissingPseudonymKeyError as error:
        # The Makefile sets the demo's key; run directly, the command says what to set.
        raise SystemExit(
            f"{error}. The Makefile sets the demo key (`make {args.command}` where it has a "
            f"target), or export {PSEUDONYM_KEY_ENV}=... yourself; data: {paths.root}"
        ) from None
