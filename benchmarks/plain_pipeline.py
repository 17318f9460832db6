"""P1's baseline: the whole graph's computation as one plain script, without Dagster running it.

It does what `run_demo` makes Dagster do, in the same order (reference data; each landing batch,
its real and synthetic photos, through bronze, silver, the chatbot log and the inference log; the
seed model once the workshop archive is in; then gold, gold.damage_labels included, the training
sets under their recorded label policies, and the models), by calling the same functions the
asset bodies call, and it writes the same tables (same schema.table names, same rows) into its
own DuckDB file. Models are trained, evaluated, logged to MLflow, registered and promoted by the
same `train_and_register` and promotion gates, so the MLflow work is the same too. The blocking
checks are the graph's own check functions; a failed one raises CheckFailed where the graph's
run would fail.

What it leaves out is Dagster's part: no instance, run or event storage, no step machinery, no
IO manager (one DuckDB connection stays open instead of one per read and write under the lock),
no output metadata, no warning checks, no sensors. Some of the functions it calls live in asset
modules, so `dagster` is imported and the checks build their result records, but nothing of
Dagster runs. P1 compares the two and checks that every table has the same row count in both
warehouses, which is how drift between this script and the asset bodies shows up.
"""

import importlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import duckdb
import polars as pl

logger = logging.getLogger("benchmarks.plain_pipeline")


class PlainWarehouse:
    """One DuckDB connection for the whole run, with the `query` the pure lookups call."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(path))
        self.con.execute("SET TimeZone = 'UTC'")
        self._tables: set[tuple[str, str]] = set()

    def query(self, sql: str, params=None, *, purpose: str = "") -> pl.DataFrame:
        """Run one statement with bound parameters; the result as a polars frame."""
        return self.con.execute(sql, params).pl()

    @contextmanager
    def connect(self, purpose: str = "") -> Iterator[duckdb.DuckDBPyConnection]:
        """The open connection, for code that writes through lib.tables itself."""
        yield self.con

    def write(self, schema: str, table: str, frame: pl.DataFrame) -> None:
        """Create the table from the frame, or append the frame (a new partition) to it."""
        # A column that is NULL in every row has no type; the IO manager stores it as VARCHAR.
        frame = frame.with_columns(
            pl.col(name).cast(pl.String) for name, dtype in frame.schema.items() if dtype == pl.Null
        )
        target = f'"{schema}"."{table}"'
        self.con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        self.con.register("incoming", frame)
        try:
            if (schema, table) in self._tables:
                self.con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM incoming")
            else:
                self.con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM incoming")
                self._tables.add((schema, table))
        finally:
            self.con.unregister("incoming")

    def replace(self, schema: str, table: str, frame: pl.DataFrame) -> None:
        """Replace the whole table (an unpartitioned asset materialized again)."""
        self._tables.discard((schema, table))
        self.write(schema, table, frame)

    def read(self, schema: str, table: str, *, batch: str | None = None) -> pl.DataFrame:
        """Every row of the table, or one batch's rows."""
        sql = f'SELECT * FROM "{schema}"."{table}"'
        if batch is None:
            return self.con.execute(sql).pl()
        return self.con.execute(sql + " WHERE batch = $batch", {"batch": batch}).pl()

    def close(self) -> None:
        """Close the connection (DuckDB checkpoints the file)."""
        self.con.close()


class _Log:
    def __init__(self, name: str) -> None:
        self._name = name

    def info(self, message: str) -> None:
        logger.info("%s: %s", self._name, message)

    debug = warning = info


@dataclass
class PlainContext:
    """What `train_and_register` and `promote_if_not_worse` read from an asset's context."""

    asset: str
    run_id: str

    def __post_init__(self) -> None:
        self.log = _Log(self.asset)
        self.run = SimpleNamespace(run_id=self.run_id)
        self.asset_key = SimpleNamespace(to_user_string=lambda: self.asset)


class CheckFailed(RuntimeError):
    """A check that blocks the graph failed here too."""


def require(result) -> None:
    """Raise CheckFailed unless the blocking check's result (an AssetCheckResult) passed."""
    if not result.passed:
        figures = {key: getattr(value, "value", value) for key, value in result.metadata.items()}
        raise CheckFailed(f"{result.check_name} failed: {figures}")


@dataclass
class PlainRun:
    """The plain script's state: where things are, the open warehouse, the step timings."""

    root: Path
    training: dict
    steps: list[tuple[str, float]] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: f"plain-{int(time.time())}")

    def __post_init__(self) -> None:
        from compositional_ai.definitions import build_resources
        from compositional_ai.lib.pseudonym import pseudonym_key_from_env
        from compositional_ai.settings import DataPaths

        self.paths = DataPaths(self.root)
        resources = build_resources(self.paths)
        # The same MLflow store layout and resource the graph uses, called as a plain object.
        self.registry = resources["model_registry"]
        self.landing = resources["landing"]
        self.warehouse = PlainWarehouse(self.paths.warehouse)
        self.key = pseudonym_key_from_env()

    def step(self, label: str, work: Callable[[], None]) -> None:
        """Run one phase and record its seconds under `label`."""
        started = time.perf_counter()
        work()
        self.steps.append((label, time.perf_counter() - started))

    def context(self, asset: str) -> PlainContext:
        """The stand-in context for one asset's model code."""
        return PlainContext(asset=asset, run_id=self.run_id)


def reference(run: PlainRun) -> None:
    """Catalog and holdout: bronze as landed, then silver."""
    from compositional_ai.landing import formats
    from compositional_ai.warehouse import validation
    from compositional_ai.warehouse.landing_files import read_files, read_lines
    from compositional_ai.warehouse.silver import holdout_origin_check

    wh, ref = run.warehouse, run.paths.reference
    catalog = read_lines(
        ref / formats.CATALOG_FILE, batch="reference", source_file=formats.CATALOG_FILE, csv=True
    )
    labels = read_lines(
        ref / formats.HOLDOUT_DIR / formats.HOLDOUT_LABELS_FILE,
        batch="reference",
        source_file="holdout/labels.csv",
        csv=True,
    )
    photos = read_files(
        ref / formats.HOLDOUT_DIR / formats.PHOTOS_DIR,
        batch="reference",
        relative_to=ref / formats.HOLDOUT_DIR,
    )
    wh.replace("bronze", "product_catalog", catalog)
    wh.replace("bronze", "holdout_labels", labels)
    wh.replace("bronze", "holdout_photos", photos)
    wh.replace("silver", "product_catalog", validation.validate_catalog(catalog).clean)
    holdout = validation.validate_holdout(labels, photos).clean
    wh.replace("silver", "holdout_photos", holdout)
    require(holdout_origin_check(holdout))


def bronze_batch(run: PlainRun, batch: str) -> dict[str, pl.DataFrame]:
    """One batch's landed files as bronze rows, compared with the batch's manifest; the
    synthetic manifest and photos are optional, as in bronze.py."""
    from compositional_ai.landing import formats
    from compositional_ai.warehouse.bronze import manifest_mismatches
    from compositional_ai.warehouse.landing_files import (
        batch_folder,
        read_files,
        read_lines,
        read_unexpected,
        ready_manifest,
    )

    folder = batch_folder(run.landing.batches, batch)
    manifest = ready_manifest(folder)
    frames = {}
    for name, file_name, csv in (
        ("repair_requests", formats.REQUESTS_FILE, False),
        ("chat_transcripts", formats.CHATS_FILE, False),
        ("customers", formats.CUSTOMERS_FILE, True),
        ("technician_outcomes", formats.OUTCOMES_FILE, True),
        ("synthetic_manifest", formats.SYNTHETIC_FILE, True),
    ):
        frame = read_lines(folder / file_name, batch=batch, source_file=file_name, csv=csv)
        manifest_mismatches(frame, manifest, [file_name])
        frames[name] = frame
    photos = read_files(folder / formats.PHOTOS_DIR, batch=batch, relative_to=folder)
    manifest_mismatches(photos, manifest, photos["source_file"].to_list())
    frames["repair_photos"] = photos
    synthetic = read_files(folder / formats.SYNTHETIC_DIR, batch=batch, relative_to=folder)
    manifest_mismatches(synthetic, manifest, synthetic["source_file"].to_list())
    frames["synthetic_photos"] = synthetic
    frames["unread_files"] = read_unexpected(folder, batch=batch)
    for name, frame in frames.items():
        run.warehouse.write("bronze", name, frame)
    return frames


def silver_batch(run: PlainRun, batch: str, bronze: dict[str, pl.DataFrame]) -> None:
    """Validate the batch, its synthetic photos too, into silver and the quarantine; every
    bronze row is accounted for."""
    from compositional_ai.warehouse import validation
    from compositional_ai.warehouse.lookups import (
        column_values,
        holdout_shas,
        quarantined_record_ids,
    )
    from compositional_ai.warehouse.privacy import withhold_personal_records
    from compositional_ai.warehouse.silver import conservation, decoded_pixels

    wh = run.warehouse
    catalog = wh.read("silver", "product_catalog")
    earlier = validation.EarlierBatches(
        customer_ids=column_values(wh, "silver", "customers", "customer_id", batches_before=batch),
        request_ids=column_values(
            wh, "silver", "repair_requests", "request_id", batches_before=batch
        ),
        outcome_ids=column_values(
            wh, "silver", "technician_outcomes", "request_id", batches_before=batch
        ),
        quarantined_request_ids=quarantined_record_ids(wh, "repair_requests", batches_before=batch),
    )
    validated = validation.validate_batch(
        photos=bronze["repair_photos"],
        requests=bronze["repair_requests"],
        customers=bronze["customers"],
        outcomes=bronze["technician_outcomes"],
        product_ids=catalog["product_id"],
        earlier=earlier,
        pseudonym_key=run.key,
        now=datetime.now(UTC),
    )
    # A synthetic photo's parent is a photo that landed clean, here or in an earlier batch.
    synthetic = validation.validate_synthetic(
        bronze["synthetic_photos"],
        bronze["synthetic_manifest"],
        known_photo_shas=pl.concat(
            [
                column_values(wh, "silver", "repair_photos", "sha256", batches_before=batch),
                validated["repair_photos"].clean["sha256"],
            ]
        ),
        holdout_shas=holdout_shas(wh),
        earlier_synthetic_shas=column_values(
            wh, "silver", "synthetic_photos", "sha256", batches_before=batch
        ),
    )
    quarantine = withhold_personal_records(
        pl.concat([result.quarantine for result in (*validated.values(), *synthetic.values())])
    )
    for source, result in validated.items():
        wh.write("silver", source, result.clean)
    wh.write("silver", "synthetic_photos", synthetic["synthetic_photos"].clean)
    wh.write("silver", "photo_pixels", decoded_pixels(validated["repair_photos"].clean))
    wh.write("silver", "quarantine", quarantine)
    sources = {**validated, **synthetic}
    require(conservation({source: bronze[source].height for source in sources}, sources))


def chatbot_batch(run: PlainRun, batch: str, transcripts: pl.DataFrame) -> None:
    """The chatbot's capture log and quarantine for one batch."""
    from compositional_ai.chatbot.assets import capture_transcripts
    from compositional_ai.warehouse import validation
    from compositional_ai.warehouse.privacy import withhold_personal_records

    wh = run.warehouse
    result = capture_transcripts(
        transcripts,
        known_request_ids=wh.read("silver", "repair_requests", batch=batch)["request_id"],
        quarantined_request_ids=validation.quarantined_request_ids(
            wh.read("silver", "quarantine", batch=batch)
        ),
        pseudonym_key=run.key,
    )
    wh.write("chatbot", "chatbot_capture_log", result.clean)
    wh.write("chatbot", "chat_quarantine", withhold_personal_records(result.quarantine))


def inference_batch(run: PlainRun, batch: str) -> None:
    """Grade the batch's online requests with the champion, as the inference-log asset does."""
    from compositional_ai.repair_service.assets import (
        INFERENCE_LOG_SCHEMA,
        REPAIR_MODEL,
        assess,
        predictions_valid,
    )
    from compositional_ai.repair_service.vision_models import photo_pixels
    from compositional_ai.resources.model_registry import CHAMPION

    wh = run.warehouse
    requests = wh.read("silver", "repair_requests", batch=batch)
    online = requests.filter(pl.col("channel") == "online")
    if online.is_empty():
        empty = pl.DataFrame(schema=INFERENCE_LOG_SCHEMA)
        wh.write("repair", "repair_inference_log", empty)
        require(predictions_valid(empty))
        return
    champion = run.registry.version_by_alias(REPAIR_MODEL, CHAMPION)
    model = run.registry.load_torch(REPAIR_MODEL, champion.version)
    images = photo_pixels(wh, online["photo_sha256"], model.image_size)
    log = assess(
        online,
        images,
        model,
        model_version=champion.version,
        catalog=wh.read("silver", "product_catalog"),
    )
    wh.write("repair", "repair_inference_log", log)
    require(predictions_valid(log))


def _vision_config(run: PlainRun):
    from compositional_ai.repair_service.vision_models import VisionTrainingConfig

    return VisionTrainingConfig(**run.training)


def photo_model(
    run: PlainRun,
    asset: str,
    *,
    training_key: str,
    model_name: str,
    label_column: str,
    num_classes: int,
    training_set: pl.DataFrame,
    holdout: pl.DataFrame,
    after_register: Callable,
) -> str:
    """What a `photo_model_asset` does: train, evaluate, log and register, then promote."""
    from compositional_ai.repair_service.served_log import PHOTOS_DIR
    from compositional_ai.repair_service.vision_models import train_and_register, training_lineage

    context = run.context(asset)
    version, metrics, metadata = train_and_register(
        context,
        served_photos=run.landing.served / PHOTOS_DIR,
        model_name=model_name,
        training_set=training_set,
        label_column=label_column,
        num_classes=num_classes,
        holdout=holdout,
        config=_vision_config(run),
        warehouse=run.warehouse,
        registry=run.registry,
        lineage=training_lineage(training_set, training_key),
    )
    # A reused version keeps the promotion decision made when it was trained.
    if not metadata["decided_before"]:
        after_register(context, run.registry, version, metrics)
    return version


def confirmed_labels(run: PlainRun) -> pl.DataFrame:
    """gold.confirmed_labels from every silver request and outcome."""
    from compositional_ai.warehouse import reporting

    wh = run.warehouse
    labels = reporting.confirmed_labels(
        wh.read("silver", "repair_requests"), wh.read("silver", "technician_outcomes")
    )
    wh.replace("gold", "confirmed_labels", labels)
    return labels


def seed_model(run: PlainRun) -> None:
    """The seed training set, its blocking checks, and the first repair model, promoted as the
    graph promotes it."""
    from compositional_ai.feedback.assets import (
        SEED_TRAINING_SET,
        evaluation_check,
        leakage_check,
    )
    from compositional_ai.repair_service.assets import REPAIR_MODEL, promote_if_not_worse

    wh = run.warehouse
    labels = confirmed_labels(run)
    holdout = wh.read("silver", "holdout_photos")
    seed = labels.filter(
        (pl.col("channel") == "workshop")
        & ~pl.col("photo_sha256").is_in(holdout["sha256"].implode())
    ).select(
        "request_id", "request_batch", "photo_sha256", "damage_level", "cell_type", "label_origin"
    )
    wh.replace("repair", "repair_seed_training_set", seed)
    require(leakage_check(seed, holdout, SEED_TRAINING_SET))
    require(evaluation_check(holdout, SEED_TRAINING_SET))
    photo_model(
        run,
        "repair/repair_damage_model",
        training_key="repair/repair_seed_training_set",
        model_name=REPAIR_MODEL,
        label_column="damage_level",
        num_classes=4,
        training_set=seed,
        holdout=holdout,
        after_register=promote_if_not_worse,
    )


def gold(run: PlainRun) -> None:
    """Every gold table, from silver, the chatbot log and the inference logs."""
    from compositional_ai.repair_service.served_assets import all_damage_labels, all_inferences
    from compositional_ai.warehouse import reporting

    wh = run.warehouse
    labels = confirmed_labels(run)
    requests = wh.read("silver", "repair_requests")
    catalog = wh.read("silver", "product_catalog")
    outcomes = wh.read("silver", "technician_outcomes")
    inference_log = wh.read("repair", "repair_inference_log")
    wh.replace(
        "gold", "damage_labels", all_damage_labels(wh, labels, all_inferences(wh, inference_log))
    )
    wh.replace(
        "gold", "customer_holdings", reporting.latest_customers(wh.read("silver", "customers"))
    )
    wh.replace(
        "gold",
        "repair_volume_weekly",
        reporting.repair_volume_weekly(requests, catalog, outcomes, inference_log),
    )
    wh.replace(
        "gold",
        "damage_level_distribution",
        reporting.damage_level_distribution(inference_log, labels),
    )
    wh.replace("gold", "defect_rate_by_cell_type", reporting.defect_rate_by_cell_type(labels))
    wh.replace(
        "gold",
        "quarantine_summary",
        reporting.quarantine_summary(
            wh.read("silver", "quarantine"), wh.read("chatbot", "chat_quarantine")
        ),
    )


def feedback(run: PlainRun) -> None:
    """The feedback training set under its label policy, its blocking checks, and the next
    repair model."""
    from compositional_ai.feedback.assets import (
        ORIGIN_CEILINGS,
        SELF_LABEL_CEILING,
        TRAINING_SET,
        FeedbackPolicyConfig,
        descendants_check,
        evaluation_check,
        label_share_check,
        leakage_check,
    )
    from compositional_ai.feedback.policy import feedback_training_rows, self_label_share
    from compositional_ai.repair_service.assets import REPAIR_MODEL, promote_if_not_worse
    from compositional_ai.repair_service.served_assets import all_damage_labels, all_inferences

    wh = run.warehouse
    policy = FeedbackPolicyConfig().label_policy()
    holdout = wh.read("silver", "holdout_photos")
    inferences = all_inferences(wh, wh.read("repair", "repair_inference_log"))
    training = feedback_training_rows(
        all_damage_labels(wh, wh.read("gold", "confirmed_labels"), inferences),
        inferences,
        policy=policy,
        holdout_shas=holdout["sha256"],
    )
    wh.replace("feedback", "repair_feedback_training_set", training)
    require(descendants_check(training, holdout["sha256"], TRAINING_SET))
    require(label_share_check(training, policy, TRAINING_SET, ORIGIN_CEILINGS))
    require(evaluation_check(holdout, TRAINING_SET))
    require(leakage_check(training, holdout, TRAINING_SET))
    if self_label_share(training) > SELF_LABEL_CEILING:
        raise CheckFailed("the feedback training set has too many model-proposed labels")
    photo_model(
        run,
        "feedback/repair_damage_model_next",
        training_key="feedback/repair_feedback_training_set",
        model_name=REPAIR_MODEL,
        label_column="damage_level",
        num_classes=4,
        training_set=training,
        holdout=holdout,
        after_register=promote_if_not_worse,
    )


def defect_detection(run: PlainRun) -> None:
    """The defect training set under its label policy, its blocking checks, and the defect
    detector, promoted by its own gate."""
    from compositional_ai.defect_detection.assets import (
        DEFECT_CEILINGS,
        DEFECT_MODEL,
        DEFECT_TRAINING_SET,
        DefectLabelConfig,
        defect_rows,
    )
    from compositional_ai.feedback.assets import (
        descendants_check,
        evaluation_check,
        label_share_check,
        leakage_check,
    )
    from compositional_ai.repair_service.assets import promotion_gate
    from compositional_ai.repair_service.served_assets import all_damage_labels, all_inferences

    wh = run.warehouse
    policy = DefectLabelConfig().label_policy()
    holdout = wh.read("silver", "holdout_photos")
    inferences = all_inferences(wh, wh.read("repair", "repair_inference_log"))
    rows = defect_rows(
        all_damage_labels(wh, wh.read("gold", "confirmed_labels"), inferences),
        inferences,
        holdout["sha256"],
        policy=policy,
    )
    wh.replace("defect_detection", "defect_training_set", rows)
    require(leakage_check(rows, holdout, DEFECT_TRAINING_SET))
    require(descendants_check(rows, holdout["sha256"], DEFECT_TRAINING_SET))
    require(label_share_check(rows, policy, DEFECT_TRAINING_SET, DEFECT_CEILINGS))
    require(evaluation_check(holdout, DEFECT_TRAINING_SET))
    photo_model(
        run,
        "defect_detection/defect_detector",
        training_key="defect_detection/defect_training_set",
        model_name=DEFECT_MODEL,
        label_column="defective",
        num_classes=2,
        training_set=rows,
        holdout=holdout,
        after_register=promotion_gate(DEFECT_MODEL, "binary_accuracy"),
    )


def recommendation(run: PlainRun) -> None:
    """The recommender's training set and model, evaluated, logged and registered."""
    import mlflow

    from compositional_ai.feedback.lineage import record_training
    from compositional_ai.recommendation.assets import RECOMMENDER, SEED, TEST_SHARE, training_rows
    from compositional_ai.recommendation.model import evaluate, fit_recommender
    from compositional_ai.resources.model_registry import CHAMPION

    wh = run.warehouse
    rows = training_rows(
        wh.read("gold", "customer_holdings"),
        wh.read("chatbot", "chatbot_capture_log"),
        wh.read("repair", "repair_inference_log"),
        wh.read("silver", "repair_requests"),
        wh.read("silver", "product_catalog"),
    )
    wh.replace("recommendation", "recommendation_training_set", rows)
    train = rows.filter(pl.col("split") == "train")
    test = rows.filter(pl.col("split") == "test")
    figures = evaluate(train, test, seed=SEED, k=3)
    model = fit_recommender(train, seed=SEED)
    with run.registry.training_run(
        RECOMMENDER,
        dagster_run_id=run.run_id,
        asset_key="recommendation/service_recommender",
        params={"seed": SEED, "test_share": TEST_SHARE, "train_rows": train.height},
    ) as active:
        mlflow.log_metrics({k: float(v) for k, v in figures.items()})
        version = run.registry.log_sklearn_model(model, RECOMMENDER)
        run.registry.run_url(active.info.run_id)
    record_training(wh, train, RECOMMENDER, version, default_origin="customer_holdings")
    run.registry.set_alias(RECOMMENDER, version, CHAMPION)


def prediction_lineage(run: PlainRun) -> None:
    """The view from each prediction to its label and the versions that learned from it."""
    from compositional_ai.feedback.lineage import create_lineage_view

    create_lineage_view(run.warehouse)
    run.warehouse.query(
        "select count(*) as rows, count(distinct request_id) as predictions, "
        "count(distinct consumed_by || '@' || consumed_by_version) as consuming_versions "
        "from gold.prediction_lineage"
    )


# Every module run_plain calls into (definitions brings the resources and asset modules).
MODULES = (
    "compositional_ai.definitions",
    "compositional_ai.feedback.lineage",
    "compositional_ai.feedback.policy",
    "compositional_ai.recommendation.model",
    "compositional_ai.repair_service.served_assets",
    "compositional_ai.repair_service.vision_models",
    "compositional_ai.warehouse.labels",
    "compositional_ai.warehouse.landing_files",
    "compositional_ai.warehouse.lookups",
    "compositional_ai.warehouse.privacy",
    "compositional_ai.warehouse.reporting",
    "compositional_ai.warehouse.validation",
)


def preload() -> None:
    """Import everything run_plain calls, so that timing it, like timing run_demo after its
    import, measures the work and not the imports."""
    for module in MODULES:
        importlib.import_module(module)


def run_plain(root: Path, training: dict) -> list[tuple[str, float]]:
    """Materialize everything under `root` as the demo does, without Dagster; the step times."""
    from compositional_ai.repair_service.assets import REPAIR_MODEL
    from compositional_ai.resources.model_registry import CHAMPION

    run = PlainRun(root, training)
    try:
        run.step("reference data", lambda: reference(run))
        for batch in run.landing.ready_batches():

            def ingest(batch: str = batch) -> None:
                bronze = bronze_batch(run, batch)
                silver_batch(run, batch, bronze)
                chatbot_batch(run, batch, bronze["chat_transcripts"])
                inference_batch(run, batch)

            run.step(f"landing batch {batch}", ingest)
            if not run.registry.has_alias(REPAIR_MODEL, CHAMPION):
                run.step("seed repair model", lambda: seed_model(run))

        def retrain() -> None:
            gold(run)
            feedback(run)
            defect_detection(run)
            recommendation(run)
            prediction_lineage(run)

        run.step("retraining", retrain)
    finally:
        run.warehouse.close()
    return run.steps
