"""The feedback-loop replay: who learns from which labels, when, and what the asset reports."""

import base64
import io

import polars as pl
import pytest
from dagster import DagsterInstance, Definitions, materialize
from PIL import Image

from compositional_ai.definitions import build_resources
from compositional_ai.feedback.loop_replay import (
    CONFIRMED,
    MODEL,
    REPLAY_SCHEMA,
    SELF_LABELLED,
    TECHNICIAN,
    InProcessGrader,
    ReplayConfig,
    outcomes_arriving,
    replay_feedback_loop,
)
from compositional_ai.feedback.replay_assets import (
    LOOP_REPLAY,
    PLOT_FILE,
    REPLAY_OP,
    feedback_loop_replay,
    loop_replay_job,
    replay_curves_png,
)
from compositional_ai.lib.tables import connect_warehouse
from compositional_ai.settings import DataPaths

ARCHIVE, B1, B2, B3 = "2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"
TINY = {"image_size": 16, "epochs": 1, "batch_size": 8, "width": 4, "val_fraction": 0.0}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def landed(replay_landing):
    """The shared small landing (see conftest): archive, 3 batches of 8, holdout of 8."""
    return replay_landing


@pytest.fixture(scope="module")
def replay(landed):
    return replay_feedback_loop(
        landed["labels"],
        landed["requests"],
        landed["holdout"],
        landed["photos"],
        config=ReplayConfig(**TINY),
    )


def test_the_table_has_one_row_per_step_and_variant(replay):
    table = replay.table
    assert table.schema == pl.Schema(REPLAY_SCHEMA)
    assert table.height == 8
    assert table.select("step", "variant").is_unique().all()
    assert table.filter(pl.col("variant") == CONFIRMED)["model_version"].to_list() == [
        "confirmed-v1",
        "confirmed-v2",
        "confirmed-v3",
        "confirmed-v4",
    ]
    assert table.filter(pl.col("variant") == SELF_LABELLED)["batch"].to_list() == [
        ARCHIVE,
        B1,
        B2,
        B3,
    ]


@pytest.mark.parametrize(
    ("step", "variant", "train_rows", "self_labels"),
    [
        # The seed model: the archive's 24 labels; its 25th shows a holdout photo.
        (0, CONFIRMED, 24, 0),
        (0, SELF_LABELLED, 24, 0),
        # Batch 1's labels arrive with batch 2: after batch 1, nothing new is confirmed.
        (1, CONFIRMED, 24, 0),
        # Own predictions of batch 1, less the request showing a holdout photo.
        (1, SELF_LABELLED, 31, 7),
        # Batch 1's labels, less the holdout photo.
        (2, CONFIRMED, 31, 0),
        (2, SELF_LABELLED, 39, 15),
        # Batch 3 stays unconfirmed, yet the self-labelled variant learns from it.
        (3, CONFIRMED, 39, 0),
        (3, SELF_LABELLED, 47, 23),
    ],
)
def test_training_rows_and_self_label_share(replay, step, variant, train_rows, self_labels):
    row = replay.table.filter((pl.col("step") == step) & (pl.col("variant") == variant))
    assert row["train_rows"].item() == train_rows
    assert row["self_label_share"].item() == pytest.approx(self_labels / train_rows)
    trained = replay.training_rows.filter((pl.col("step") == step) & (pl.col("variant") == variant))
    assert trained.height == train_rows
    assert trained.filter(pl.col("label_origin") == MODEL).height == self_labels


def test_only_the_self_labelled_variant_trains_on_model_labels(replay):
    origins = replay.training_rows.group_by("variant").agg(pl.col("label_origin").unique())
    by_variant = {variant: set(found) for variant, found in origins.iter_rows()}
    assert by_variant[CONFIRMED] == {TECHNICIAN}
    assert by_variant[SELF_LABELLED] == {TECHNICIAN, MODEL}


def test_self_labels_are_the_variants_own_earlier_predictions(replay):
    self_labels = replay.training_rows.filter(pl.col("label_origin") == MODEL)
    joined = self_labels.join(
        replay.predictions.filter(pl.col("variant") == SELF_LABELLED),
        on="request_id",
        suffix="_predicted",
    )
    assert joined.height == self_labels.height
    assert (joined["damage_level"] == joined["predicted_level"]).all()
    # A version learns only from predictions made up to its own step.
    assert (joined["step_predicted"] <= joined["step"]).all()


def test_no_holdout_photo_is_trained_on(replay, landed):
    shas = landed["holdout"]["sha256"].implode()
    assert replay.training_rows.filter(pl.col("photo_sha256").is_in(shas)).is_empty()


@pytest.mark.parametrize(
    ("step", "batches"),
    [
        # After batch 1: the archive only (batch 1 is confirmed in batch 2).
        (1, {ARCHIVE}),
        # After batch 2: batch 1's outcomes have arrived, batch 2's have not.
        (2, {ARCHIVE, B1}),
        (3, {ARCHIVE, B1, B2}),
    ],
)
def test_confirmed_labels_arrive_one_batch_late(replay, landed, step, batches):
    trained = replay.training_rows.filter(
        (pl.col("step") == step) & (pl.col("variant") == CONFIRMED)
    ).join(landed["labels"].select("request_id", "request_batch"), on="request_id")
    assert set(trained["request_batch"].unique().to_list()) == batches


@pytest.mark.parametrize(
    ("batch", "previous", "request_batches"),
    [
        # Batch 1 brings no outcome: the archive confirmed itself, batch 1 is not inspected yet.
        (B1, ARCHIVE, set()),
        # Batch 2 brings batch 1's outcomes, and only those.
        (B2, B1, {B1}),
        (B3, B2, {B2}),
        # Nothing arrives twice: what was usable with batch 2 is not brought again by batch 3.
        (B3, B1, {B1, B2}),
    ],
)
def test_outcomes_arrive_once_with_the_next_batch(landed, batch, previous, request_batches):
    arriving = outcomes_arriving(landed["labels"], batch, previous, ARCHIVE)
    assert set(arriving["request_batch"].unique().to_list()) == request_batches
    assert arriving.height == 8 * len(request_batches)


def test_the_in_process_grader_records_only_labels_of_graded_requests(landed):
    grader = InProcessGrader()
    model = object()
    assert grader.publish(CONFIRMED, "confirmed-v1", model, {}) == "confirmed-v1"
    labels = landed["labels"].filter(pl.col("request_batch") == B1)
    # Nothing graded yet: a technician has no assessment to confirm.
    grader.confirm(CONFIRMED, labels)
    assert grader.recorded_labels(CONFIRMED).is_empty()
    assert grader.summary()["requests_sent"] == 0


def test_every_version_predicts_the_next_batch(replay):
    counts = replay.predictions.group_by("step", "variant", "model_version").len().sort("step")
    # Each of the 3 online batches is graded by the previous version of each variant.
    assert counts.height == 6
    assert set(counts["len"].to_list()) == {8}
    first = counts.filter(pl.col("step") == 1)["model_version"].sort().to_list()
    assert first == ["confirmed-v1", "self_labelled-v1"]
    # In process, the version a grader reports is the replay's own name for it.
    assert (replay.table["served_version"] == replay.table["model_version"]).all()
    assert replay.grading["through"] == "in_process"
    assert replay.grading["requests_sent"] == 2 * 24


def test_both_variants_start_from_the_same_seed_model(replay):
    seed = replay.table.filter(pl.col("step") == 0)
    assert seed["four_class_accuracy"].n_unique() == 1
    assert seed["binary_accuracy"].n_unique() == 1
    assert replay.majority_four_class_accuracy == pytest.approx(0.25)
    assert replay.majority_binary_accuracy == pytest.approx(0.5)
    accuracies = pl.concat([replay.table["four_class_accuracy"], replay.table["binary_accuracy"]])
    # Scored on 8 holdout photos, so every accuracy is a multiple of 1/8.
    assert ((accuracies * 8 - (accuracies * 8).round()).abs() < 1e-9).all()


def test_the_replay_is_deterministic(replay, landed):
    again = replay_feedback_loop(
        landed["labels"],
        landed["requests"],
        landed["holdout"],
        landed["photos"],
        config=ReplayConfig(**TINY),
    )
    assert again.table.equals(replay.table)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # Without the archive there is no seed model to start from.
        ("no_archive", "should be the workshop archive"),
        # An archive whose every photo is a holdout photo leaves nothing to train the seed on.
        ("archive_in_holdout", "no usable confirmed labels"),
        # Without a holdout nothing can be scored.
        ("no_holdout", "holdout is empty"),
    ],
)
def test_a_replay_without_a_start_or_a_yardstick_fails(landed, change, message):
    labels, holdout = landed["labels"], landed["holdout"]
    if change == "no_archive":
        labels = labels.filter(pl.col("request_batch") != ARCHIVE)
    elif change == "archive_in_holdout":
        labels = labels.with_columns(
            pl.when(pl.col("request_batch") == ARCHIVE)
            .then(pl.lit(holdout["sha256"][0]))
            .otherwise(pl.col("photo_sha256"))
            .alias("photo_sha256")
        )
    else:
        holdout = holdout.clear()
    with pytest.raises(ValueError, match=message):
        replay_feedback_loop(
            labels, landed["requests"], holdout, landed["photos"], config=ReplayConfig(**TINY)
        )


def test_the_curves_render_as_a_png(replay):
    png = replay_curves_png(replay.table, majority_four_class=0.25, majority_binary=0.5)
    assert png.startswith(PNG_SIGNATURE)
    assert Image.open(io.BytesIO(png)).size == (1000, 440)


def test_the_asset_stores_the_table_and_attaches_the_plot(tmp_path, landed, write_replay_inputs):
    paths = DataPaths(tmp_path)
    write_replay_inputs(paths, landed)
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [feedback_loop_replay],
            resources=build_resources(paths),
            instance=instance,
            run_config={"ops": {REPLAY_OP: {"config": {**TINY, "through_service": False}}}},
        )
    assert result.success
    with connect_warehouse(paths.warehouse, purpose="test: read replay") as con:
        stored = con.execute(
            "select step, variant, train_rows from feedback.feedback_loop_replay "
            "order by step, variant"
        ).pl()
    assert stored.height == 8
    assert stored.filter(pl.col("step") == 3)["train_rows"].to_list() == [39, 47]

    png_path = paths.reports / PLOT_FILE
    assert png_path.read_bytes().startswith(PNG_SIGNATURE)
    metadata = result.asset_materializations_for_node(REPLAY_OP)[0].metadata
    assert metadata["curves_png"].value == str(png_path)
    inline = metadata["curves"].value
    encoded = inline.split("data:image/png;base64,", 1)[1].rstrip(")")
    assert base64.b64decode(encoded) == png_path.read_bytes()
    assert metadata["final_versions"].value[SELF_LABELLED]["model_version"] == "self_labelled-v4"
    assert metadata["predictions_through"].value == "in_process"
    assert metadata["served_requests"].value == 2 * 24
    assert metadata["trained_rows_by_origin"].value == {
        "confirmed/technician": 24 + 24 + 31 + 39,
        "self_labelled/model": 7 + 15 + 23,
        "self_labelled/technician": 4 * 24,
    }


def test_the_job_selects_only_the_replay(tmp_path):
    defs = Definitions(
        assets=[feedback_loop_replay],
        jobs=[loop_replay_job],
        resources=build_resources(DataPaths(tmp_path)),
    )
    job = defs.resolve_job_def("loop_replay_job")
    assert job.asset_layer.selected_asset_keys == {LOOP_REPLAY}
