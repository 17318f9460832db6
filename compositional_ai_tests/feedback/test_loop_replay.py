"""The feedback-loop replay: who learns from which labels, when, and what the asset reports."""

import base64
import io

import numpy as np
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
    ReplayConfig,
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
from compositional_ai.lib.tables import connect_warehouse, write_frame
from compositional_ai.settings import DataPaths

ARCHIVE, B1, B2, B3 = "2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"
TINY = {"image_size": 16, "epochs": 1, "batch_size": 8, "width": 4, "val_fraction": 0.0}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png(seed: int, level: int) -> bytes:
    # Brighter photos for higher levels, so the labels are learnable; the seed makes each unique.
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(40 + 60 * level, 20, (20, 20)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _sha(seed: int) -> str:
    return f"photo{seed:04d}"


@pytest.fixture(scope="module")
def landed():
    """An archive of 24 labels, 3 online batches of 8, a holdout of 8, and two leaks.

    Batch j's labels are confirmed in batch j + 1; the last batch stays unconfirmed. The archive
    carries a 25th label and batch 1 one request whose photo is a holdout photo.
    """
    holdout = pl.DataFrame(
        {
            "sha256": [_sha(900 + i) for i in range(8)],
            "damage_level": [i % 4 for i in range(8)],
            "content": [_png(900 + i, i % 4) for i in range(8)],
        }
    )
    leaked = holdout["sha256"][0]
    requests, labels, photos = [], [], {}
    for batch_index, (batch, count, confirmed_in) in enumerate(
        [(ARCHIVE, 24, ARCHIVE), (B1, 8, B2), (B2, 8, B3), (B3, 8, None)]
    ):
        for i in range(count):
            seed = 100 * batch_index + i
            level = i % 4
            sha = _sha(seed)
            photos[sha] = _png(seed, level)
            if batch_index == 1 and i == 0:
                sha = leaked
            request_id = f"r{seed:04d}"
            if batch != ARCHIVE:
                requests.append({"request_id": request_id, "batch": batch, "photo_sha256": sha})
            if confirmed_in is not None:
                labels.append(
                    {
                        "request_id": request_id,
                        "request_batch": batch,
                        "confirmed_in_batch": confirmed_in,
                        "photo_sha256": sha,
                        "damage_level": level,
                    }
                )
    labels.append(
        {
            "request_id": "r0999",
            "request_batch": ARCHIVE,
            "confirmed_in_batch": ARCHIVE,
            "photo_sha256": leaked,
            "damage_level": 0,
        }
    )
    photos[leaked] = holdout["content"][0]
    return {
        "labels": pl.DataFrame(labels),
        "requests": pl.DataFrame(requests),
        "holdout": holdout,
        "photos": pl.DataFrame({"sha256": list(photos), "content": list(photos.values())}),
    }


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


def test_every_version_predicts_the_next_batch(replay):
    counts = replay.predictions.group_by("step", "variant", "model_version").len().sort("step")
    # Each of the 3 online batches is graded by the previous version of each variant.
    assert counts.height == 6
    assert set(counts["len"].to_list()) == {8}
    first = counts.filter(pl.col("step") == 1)["model_version"].sort().to_list()
    assert first == ["confirmed-v1", "self_labelled-v1"]


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


def _write(paths: DataPaths, landed) -> None:
    labels = landed["labels"]
    requests = landed["requests"]
    tables = {
        ("gold", "confirmed_labels"): labels.with_columns(
            pl.lit("technician").alias("label_origin")
        ),
        ("repair", "repair_inference_log"): requests.select(
            "request_id",
            "batch",
            pl.col("photo_sha256").alias("input_sha256"),
            pl.lit("ok").alias("status"),
            pl.lit("batch").alias("source"),
        ),
        ("silver", "holdout_photos"): landed["holdout"],
        ("silver", "repair_photos"): landed["photos"],
    }
    with connect_warehouse(paths.warehouse, purpose="test: replay inputs") as con:
        for (schema, table), frame in tables.items():
            write_frame(con, schema, table, frame)


def test_the_asset_stores_the_table_and_attaches_the_plot(tmp_path, landed):
    paths = DataPaths(tmp_path)
    _write(paths, landed)
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [feedback_loop_replay],
            resources=build_resources(paths),
            instance=instance,
            run_config={"ops": {REPLAY_OP: {"config": TINY}}},
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
