"""The feedback-loop replay as a report asset, its own job, and the plot of its two curves.

`feedback/feedback_loop_replay` retrains the repair model batch by batch on technician-confirmed
labels and, beside it, on its own unconfirmed predictions, and scores every version on the
holdout (see compositional_ai.feedback.loop_replay). By default each variant's predictions come
from a real repair service over HTTP, serving that variant's current version from a registry of
its own under `<data>/replay/<variant>/` (see compositional_ai.feedback.service_replay). It
trains 2 models per landing batch, so it belongs to no sensor-driven job: `loop_replay_job` runs
it alone, on demand.
"""

import base64
import io
from pathlib import Path

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    Config,
    MetadataValue,
    asset,
    define_asset_job,
)
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from compositional_ai.feedback.loop_replay import (
    CONFIRMED,
    SELF_LABELLED,
    VARIANTS,
    ReplayConfig,
    replay_feedback_loop,
)
from compositional_ai.feedback.service_replay import ServiceGrader, ServiceOptions
from compositional_ai.landing.formats import CATALOG_FILE
from compositional_ai.repair_service.vision_models import photo_contents
from compositional_ai.resources.warehouse import Warehouse
from compositional_ai.settings import DataPaths

LOOP_REPLAY = AssetKey(["feedback", "feedback_loop_replay"])
# The asset's op name, under which run config gives it a LoopReplayConfig.
REPLAY_OP = "feedback__feedback_loop_replay"
PLOT_FILE = "feedback_loop_replay.png"
# The replay services' data directories, one per variant, under the data directory.
REPLAY_DIR = "replay"

CONFIRMED_LABELS = AssetKey(["gold", "confirmed_labels"])
INFERENCE_LOG = AssetKey(["repair", "repair_inference_log"])
HOLDOUT_PHOTOS = AssetKey(["silver", "holdout_photos"])
REPAIR_PHOTOS = AssetKey(["silver", "repair_photos"])

LABELS_SQL = (
    "select request_id, request_batch, confirmed_in_batch, photo_sha256, damage_level, "
    "technician_id, cell_type, inspected_at from gold.confirmed_labels"
)
# The landing batches' assessments: the requests the service graded, batch by batch, with the
# fields its form asks for. The contacts are silver's pseudonyms: the replay posts what the
# warehouse holds and never reads the raw contacts back out of bronze.
REQUESTS_SQL = (
    "select i.request_id, i.batch, i.input_sha256 as photo_sha256, i.product_id, "
    "r.name_pseudonym as name, r.email_pseudonym as email, r.phone_pseudonym as phone "
    "from repair.repair_inference_log i "
    "left join silver.repair_requests r on r.request_id = i.request_id and r.batch = i.batch "
    "where i.status = 'ok' and i.source = 'batch'"
)
HOLDOUT_SQL = "select sha256, damage_level, content from silver.holdout_photos"

VARIANT_STYLE = {
    CONFIRMED: ("tab:blue", "o", "retrained on confirmed labels"),
    SELF_LABELLED: ("tab:red", "s", "retrained on its own predictions"),
}


class LoopReplayConfig(Config):
    """Training settings of the replayed versions; small and short so the replay stays cheap."""

    image_size: int = 48
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    width: int = 16
    patience: int = 4
    # No validation carve-out: a fixed number of epochs on every row. Selecting the best epoch
    # on 15 % of the 491-photo archive picks a constant first-epoch model for some seeds.
    val_fraction: float = 0.0
    class_weighting: str = "sqrt"
    seed: int = 0
    num_threads: int = 1
    # True: every prediction comes from a repair service over HTTP; False: in this process.
    through_service: bool = True
    # Concurrent connections to each service while a batch is posted.
    connections: int = 8

    def to_replay_config(self) -> ReplayConfig:
        return ReplayConfig(**self.model_dump(exclude={"through_service", "connections"}))


def replay_curves_png(
    table: pl.DataFrame,
    *,
    majority_four_class: float | None = None,
    majority_binary: float | None = None,
) -> bytes:
    """Holdout accuracy per version of both variants (four-class and binary panels) as a PNG."""
    figure = Figure(figsize=(10, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    panels = (
        ("four_class_accuracy", "four-class accuracy (damage level 0-3)", majority_four_class),
        ("binary_accuracy", "binary accuracy (defective or not)", majority_binary),
    )
    steps = table.select("step", "batch").unique().sort("step")
    for index, (column, title, majority) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 2, index)
        for variant in VARIANTS:
            colour, marker, label = VARIANT_STYLE[variant]
            curve = table.filter(pl.col("variant") == variant).sort("step")
            axes.plot(
                curve["step"].to_list(),
                curve[column].to_list(),
                color=colour,
                marker=marker,
                markersize=4,
                label=label,
            )
        if majority is not None:
            axes.axhline(majority, color="grey", linestyle=":", label="majority class")
        axes.set_xticks(
            steps["step"].to_list(),
            [f"v{step + 1} {batch}" for step, batch in steps.iter_rows()],
            fontsize=7,
            rotation=40,
            ha="right",
        )
        axes.set_xlabel("version, and the batch after which it was trained", fontsize=8)
        axes.set_ylabel("holdout accuracy", fontsize=8)
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="lower left")
    figure.suptitle("Feedback loop replay: confirmed labels vs self-labels", fontsize=11)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def table_markdown(table: pl.DataFrame) -> str:
    """The replay table as a Markdown table, accuracies to three decimals."""
    columns = list(table.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in table.iter_rows():
        cells = [f"{value:.3f}" if isinstance(value, float) else str(value) for value in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def data_paths(warehouse: Warehouse) -> DataPaths:
    """The layout of the data directory the warehouse belongs to."""
    # The resources carry no DataPaths; the warehouse file sits at the root of its layout.
    return DataPaths(Path(warehouse.path).resolve().parent)


def grading_metadata(grading: dict) -> dict:
    """The asset metadata saying how the replay's predictions were made."""
    through = grading.get("through", "in_process")
    metadata = {
        "predictions_through": MetadataValue.text(through),
        "grading": MetadataValue.json(grading),
        "served_requests": MetadataValue.int(int(grading.get("requests_sent", 0))),
        "served_failures": MetadataValue.int(int(grading.get("failures", 0))),
    }
    if grading.get("p50_latency_ms") is not None:
        metadata["served_p50_latency_ms"] = MetadataValue.float(grading["p50_latency_ms"])
    return metadata


@asset(
    key_prefix="feedback",
    group_name="feedback",
    tags={"role": "report"},
    deps=[CONFIRMED_LABELS, INFERENCE_LOG, HOLDOUT_PHOTOS, REPAIR_PHOTOS],
)
def feedback_loop_replay(
    context: AssetExecutionContext, config: LoopReplayConfig, warehouse: Warehouse
) -> pl.DataFrame:
    """Holdout accuracy per repair-model version, retrained on confirmed labels or self-labels."""
    labels = warehouse.query(LABELS_SQL, purpose="replay: confirmed labels")
    requests = warehouse.query(REQUESTS_SQL, purpose="replay: assessed requests")
    holdout = warehouse.query(HOLDOUT_SQL, purpose="replay: holdout photos")
    shas = pl.concat([labels["photo_sha256"], requests["photo_sha256"]]).unique().sort()
    photos = pl.DataFrame(
        {"sha256": shas, "content": photo_contents(warehouse, shas)},
        schema={"sha256": pl.String, "content": pl.Binary},
    )
    replay_config = config.to_replay_config()
    context.log.info(
        f"replaying {requests['batch'].n_unique()} batches after the archive: "
        f"{labels.height} confirmed labels, {requests.height} assessed requests, "
        f"{holdout.height} holdout photos; {replay_config}"
    )

    def on_step(row: dict) -> None:
        context.log.info(
            f"step {row['step']} ({row['batch']}) {row['model_version']} "
            f"(served as {row['served_version']}): "
            f"{row['train_rows']} rows, {row['self_label_share']:.0%} self-labelled, "
            f"four-class {row['four_class_accuracy']:.3f}, binary {row['binary_accuracy']:.3f}"
        )

    paths = data_paths(warehouse)
    if config.through_service:
        grader = ServiceGrader(
            paths.root / REPLAY_DIR,
            paths.reference / CATALOG_FILE,
            photos,
            options=ServiceOptions(connections=config.connections),
            run_tag=context.run.run_id,
        )
        with grader:
            context.log.info(
                "each variant's predictions come from its own repair service: "
                + ", ".join(f"{variant} at {grader.url(variant)}" for variant in VARIANTS)
            )
            result = replay_feedback_loop(
                labels,
                requests,
                holdout,
                photos,
                config=replay_config,
                grader=grader,
                on_step=on_step,
            )
    else:
        result = replay_feedback_loop(
            labels, requests, holdout, photos, config=replay_config, on_step=on_step
        )
    context.log.info(f"predictions: {result.grading}")
    png = replay_curves_png(
        result.table,
        majority_four_class=result.majority_four_class_accuracy,
        majority_binary=result.majority_binary_accuracy,
    )
    folder = paths.reports
    folder.mkdir(parents=True, exist_ok=True)
    png_path = folder / PLOT_FILE
    png_path.write_bytes(png)
    last = result.table.filter(pl.col("step") == pl.col("step").max())
    final = {
        row["variant"]: {
            "model_version": row["model_version"],
            "served_version": row["served_version"],
            "four_class_accuracy": row["four_class_accuracy"],
            "binary_accuracy": row["binary_accuracy"],
            "self_label_share": row["self_label_share"],
        }
        for row in last.iter_rows(named=True)
    }
    encoded = base64.b64encode(png).decode("ascii")
    context.add_output_metadata(
        {
            "curves": MetadataValue.md(
                f"![feedback loop replay: holdout accuracy per version](data:image/png;base64,"
                f"{encoded})"
            ),
            "curves_png": MetadataValue.path(str(png_path)),
            "versions": MetadataValue.md(table_markdown(result.table)),
            "final_versions": MetadataValue.json(final),
            "majority_four_class_accuracy": MetadataValue.float(
                result.majority_four_class_accuracy
            ),
            "majority_binary_accuracy": MetadataValue.float(result.majority_binary_accuracy),
            "replay_seconds": MetadataValue.float(result.seconds),
            **grading_metadata(result.grading),
            "replay_config": MetadataValue.json(config.model_dump()),
            "trained_rows_by_origin": MetadataValue.json(
                {
                    f"{variant}/{origin}": n
                    for variant, origin, n in result.training_rows.group_by(
                        "variant", "label_origin"
                    )
                    .len()
                    .sort("variant", "label_origin")
                    .iter_rows()
                }
            ),
        }
    )
    return result.table


loop_replay_job = define_asset_job(
    "loop_replay_job",
    selection=AssetSelection.assets(LOOP_REPLAY),
    description="Replay the landing batches: the repair model retrained on confirmed labels "
    "beside one retrained on its own predictions.",
)
