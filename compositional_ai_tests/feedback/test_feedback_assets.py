"""The label gates of the training sets: every origin under its recorded policy, no holdout photo
nor a synthetic child of one, and evaluation on technician labels only.

First the checks as functions, on small frames; then the real assets on a tmp warehouse and a
tmp MLflow store, where each failing check carries its figures and stops the training after it.
"""

import dagster as dg
import polars as pl
import pytest

from compositional_ai import jobs
from compositional_ai.defect_detection import assets as defect_assets
from compositional_ai.feedback import assets as feedback_assets
from compositional_ai.feedback.assets import (
    EVALUATION_LABELS,
    LABEL_SHARES,
    NO_HOLDOUT_DESCENDANTS,
    NO_HOLDOUT_LEAKAGE,
    ORIGIN_CEILINGS,
    FeedbackPolicyConfig,
    descendants_check,
    evaluation_check,
    label_share_check,
    leakage_check,
)
from compositional_ai.feedback.policy import LabelPolicy, OriginPolicy
from compositional_ai.landing.generate import build_demo_landing
from compositional_ai.repair_service import vision_models
from compositional_ai.repair_service.assets import REPAIR_MODEL
from compositional_ai.settings import PSEUDONYM_KEY_ENV
from compositional_ai.warehouse.partitions import landing_batches
from compositional_ai_tests.graph import Graph

KEY = dg.AssetKey(["feedback", "repair_feedback_training_set"])


def figures(result) -> dict:
    return {
        key: value.value if hasattr(value, "value") else value
        for key, value in result.metadata.items()
    }


# --- the checks as functions ------------------------------------------------------------------


def training(origins: list[str], parents: list[str | None] | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "photo_sha256": [f"p{i}" for i in range(len(origins))],
            "parent_sha256": parents or [None] * len(origins),
            "label_origin": origins,
        },
        schema={"photo_sha256": pl.String, "parent_sha256": pl.String, "label_origin": pl.String},
    )


HOLDOUT = pl.DataFrame({"sha256": ["h1", "h2"]})


@pytest.mark.parametrize(
    ("parents", "leaked"),
    [
        ([None, None, "p0"], 0),  # a synthetic child of a training photo
        ([None, "h1", None], 1),  # a synthetic child of a holdout photo
        (["h2", "h1", "h1"], 3),  # every child counts
    ],
)
def test_a_synthetic_child_of_a_holdout_photo_fails_the_descendants_check(parents, leaked):
    frame = training(["technician", "synthetic", "synthetic"], parents)
    result = descendants_check(frame, HOLDOUT["sha256"], KEY)
    assert result.passed is (leaked == 0)
    assert result.check_name == NO_HOLDOUT_DESCENDANTS
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert figures(result) == {"leaked_rows": leaked, "training_rows": 3}


def test_a_holdout_photo_fails_the_leakage_check_of_any_training_set():
    frame = training(["technician", "technician"]).with_columns(
        pl.Series("photo_sha256", ["p0", "h2"])
    )
    result = leakage_check(frame, HOLDOUT, dg.AssetKey(["defect_detection", "x"]))
    assert (result.passed, result.check_name) == (False, NO_HOLDOUT_LEAKAGE)
    assert figures(result) == {"leaked_rows": 1, "training_rows": 2}


@pytest.mark.parametrize(
    ("origins", "policy", "passed", "expected"),
    [
        # technicians only, under the default policy
        (["technician"] * 4, LabelPolicy(), True, {"chatbot_rows": 0, "chatbot_cap": 0.0}),
        # a chatbot label while chatbot labels are off
        (
            ["technician"] * 3 + ["chatbot"],
            LabelPolicy(),
            False,
            {"chatbot_rows": 1, "chatbot_share": 0.25, "chatbot_cap": 0.0},
        ),
        # synthetic labels within their recorded 25 % but over no ceiling
        (
            ["technician"] * 3 + ["synthetic"],
            LabelPolicy(synthetic=OriginPolicy(enabled=True, max_share=0.25)),
            True,
            {"synthetic_share": 0.25, "synthetic_cap": 0.25, "synthetic_ceiling": 0.25},
        ),
        # chatbot labels allowed half the set, over the 25 % ceiling
        (
            ["technician"] * 2 + ["chatbot"] * 2,
            LabelPolicy(chatbot=OriginPolicy(enabled=True, max_share=0.5)),
            False,
            {"chatbot_share": 0.5, "chatbot_cap": 0.5, "chatbot_ceiling": 0.25},
        ),
    ],
)
def test_label_shares_are_checked_against_the_policy_and_the_ceilings(
    origins, policy, passed, expected
):
    result = label_share_check(training(origins), policy, KEY, ORIGIN_CEILINGS)
    assert (result.passed, result.check_name) == (passed, LABEL_SHARES)
    found = figures(result)
    assert expected.items() <= found.items()
    assert found["training_rows"] == len(origins)
    assert found["policy"] == policy.record()
    # The model's ceiling is its own check's (self_label_share_within_ceiling).
    assert "model_ceiling" not in found


@pytest.mark.parametrize(
    ("holdout", "passed", "others"),
    [
        # a holdout from before the column existed: the contract's expert labels
        (pl.DataFrame({"sha256": ["h1"]}), True, 0),
        # technician labels only
        (pl.DataFrame({"sha256": ["h1", "h2"], "label_origin": ["technician"] * 2}), True, 0),
        # one model label would score models against the model's own belief
        (pl.DataFrame({"sha256": ["h1", "h2"], "label_origin": ["technician", "model"]}), False, 1),
    ],
)
def test_evaluation_takes_technician_labels_only(holdout, passed, others):
    result = evaluation_check(holdout, KEY)
    assert (result.passed, result.check_name) == (passed, EVALUATION_LABELS)
    assert figures(result)["non_technician_rows"] == others
    assert figures(result)["holdout_rows"] == holdout.height


@pytest.mark.parametrize(
    ("config", "enabled"),
    [
        # the defaults: technicians only
        ({}, {"model": False, "chatbot": False, "synthetic": False}),
        # a self-label share alone turns self-labels on, as it did before the flag
        ({"self_label_max_share": 0.1}, {"model": True, "chatbot": False, "synthetic": False}),
        # the flag can keep them off whatever the share
        (
            {"self_label_max_share": 0.1, "self_label_enabled": False},
            {"model": False, "chatbot": False, "synthetic": False},
        ),
        # chatbot and synthetic labels need their own flags
        (
            {"chatbot_labels_enabled": True, "synthetic_labels_enabled": True},
            {"model": False, "chatbot": True, "synthetic": True},
        ),
    ],
)
def test_the_feedback_config_is_the_recorded_policy(config, enabled):
    policy = FeedbackPolicyConfig(**config).label_policy()
    assert {origin: policy.of(origin).admits for origin in enabled} == enabled
    assert policy.synthetic.min_confidence is None


# --- the real assets ----------------------------------------------------------------------------

TINY_TRAINING = {"image_size": 32, "epochs": 2, "batch_size": 16, "patience": 2, "width": 8}
FEEDBACK_SET = dg.AssetKey(["feedback", "repair_feedback_training_set"])
NEXT_MODEL = dg.AssetKey(["feedback", "repair_damage_model_next"])
DEFECT_SET = dg.AssetKey(["defect_detection", "defect_training_set"])
DETECTOR = dg.AssetKey(["defect_detection", "defect_detector"])
SEED_SET = dg.AssetKey(["repair", "repair_seed_training_set"])
SEED_MODEL = dg.AssetKey(["repair", "repair_damage_model"])
DAMAGE_LABELS = dg.AssetKey(["gold", "damage_labels"])


def evaluation(result: dg.ExecuteInProcessResult, asset: dg.AssetKey, name: str):
    (found,) = [
        check
        for check in result.get_asset_check_evaluations()
        if check.check_name == name and check.asset_key == asset
    ]
    return found


def materialized(result: dg.ExecuteInProcessResult) -> set[dg.AssetKey]:
    return {event.asset_key for event in result.all_events if event.is_step_materialization}


def failed_steps(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        event.step_key: event.event_specific_data.error.message
        for event in result.all_events
        if event.is_step_failure
    }


def config_of(op: str, policy: dict, model_op: str | None) -> dict:
    ops = {op: {"config": policy}}
    if model_op is not None:
        ops[model_op] = {"config": TINY_TRAINING}
    return {"ops": ops}


def feedback_config(*, train: bool = True, **policy) -> dict:
    """Run config for the feedback set (and the next model, when `train`)."""
    model = "feedback__repair_damage_model_next" if train else None
    return config_of("feedback__repair_feedback_training_set", policy, model)


def defect_config(*, train: bool = True, **policy) -> dict:
    """Run config for the defect set (and the detector, when `train`)."""
    model = "defect_detection__defect_detector" if train else None
    return config_of("defect_detection__defect_training_set", policy, model)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """Three batches through bronze, silver, the chatbot and inference logs, with the seed model
    after the first; synthetic photos land in the first and the third."""
    root = tmp_path_factory.mktemp("labels")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PSEUDONYM_KEY_ENV, "labels-test-key")
        landing = build_demo_landing(
            root / "landing", n_batches=3, max_train_photos=48, max_holdout_photos=16
        )
        graph = Graph(root)
        assert graph.run(jobs.REFERENCE_ASSETS).success
        graph.instance.add_dynamic_partitions(landing_batches.name, list(landing.batches))
        for index, batch in enumerate(landing.batches):
            assert graph.run(jobs.BATCH_ASSETS, partition=batch).success, batch
            if index == 0:
                seed = graph.run(
                    jobs.SEED_MODEL_ASSETS,
                    run_config={"ops": {"repair__repair_damage_model": {"config": TINY_TRAINING}}},
                )
                assert seed.success
        assert graph.run(dg.AssetSelection.assets(["gold", "confirmed_labels"])).success
        yield graph


@pytest.mark.slow
def test_the_seed_set_passed_its_checks(graph):
    checks = graph.sql(
        "select count(*) as n from repair.repair_seed_training_set where photo_sha256 in "
        "(select sha256 from silver.holdout_photos)"
    )
    assert checks["n"][0] == 0
    assert graph.versions(REPAIR_MODEL) == ["1"]


@pytest.mark.slow
def test_gold_damage_labels_hold_every_origin(graph):
    result = graph.run(dg.AssetSelection.assets(DAMAGE_LABELS))
    assert result.success
    labels = graph.sql("select * from gold.damage_labels")
    by_origin = dict(labels.group_by("label_origin").len().iter_rows())
    confirmed = graph.sql("select count(*) as n from gold.confirmed_labels")["n"][0]
    predictions = graph.sql(
        "select count(*) as n from repair.repair_inference_log where status = 'ok'"
    )["n"][0]
    reported = graph.sql(
        "select count(*) as n from chatbot.chatbot_capture_log c join silver.repair_requests r "
        "using (request_id) where reported_damage_level is not null"
    )["n"][0]
    synthetic = graph.sql(
        "select count(*) as n from silver.synthetic_photos s where parent_sha256 in "
        "(select photo_sha256 from gold.confirmed_labels)"
    )["n"][0]
    assert by_origin == {
        "technician": confirmed,
        "model": predictions,
        "chatbot": reported,
        "synthetic": synthetic,
    }
    assert synthetic > 0 and reported > 0
    assert labels.filter(pl.col("confirmed"))["label_origin"].unique().to_list() == ["technician"]
    # Every synthetic label is its parent's technician label.
    pairs = labels.filter(pl.col("label_origin") == "synthetic").join(
        labels.filter(pl.col("label_origin") == "technician"),
        left_on="parent_sha256",
        right_on="photo_sha256",
    )
    assert pairs.height == synthetic
    assert (pairs["damage_level"] == pairs["damage_level_right"]).all()


@pytest.mark.slow
def test_synthetic_labels_enter_the_feedback_set_only_when_enabled(graph):
    default = graph.run(
        dg.AssetSelection.assets(FEEDBACK_SET), run_config=feedback_config(train=False)
    )
    assert default.success
    rows = graph.sql(
        "select label_origin, count(*) as n from feedback.repair_feedback_training_set group by 1"
    )
    assert dict(rows.iter_rows()) == {
        "technician": graph.sql("select count(*) as n from gold.confirmed_labels")["n"][0]
    }
    shares = evaluation(default, FEEDBACK_SET, LABEL_SHARES)
    assert shares.passed
    assert {k: v.value for k, v in shares.metadata.items() if k.endswith("_cap")} == {
        "model_cap": 0.0,
        "chatbot_cap": 0.0,
        "synthetic_cap": 0.0,
    }
    enabled = graph.run(
        dg.AssetSelection.assets(FEEDBACK_SET),
        run_config=feedback_config(
            train=False, synthetic_labels_enabled=True, synthetic_max_share=0.2
        ),
    )
    assert enabled.success
    rows = graph.sql("select * from feedback.repair_feedback_training_set")
    synthetic = rows.filter(pl.col("label_origin") == "synthetic")
    technician = rows.filter(pl.col("label_origin") == "technician").height
    assert 0 < synthetic.height <= int(0.2 * technician / 0.8)
    assert synthetic["parent_sha256"].is_in(rows["photo_sha256"].implode()).all()
    for name in (NO_HOLDOUT_DESCENDANTS, LABEL_SHARES, EVALUATION_LABELS):
        assert evaluation(enabled, FEEDBACK_SET, name).passed, name


def holdout_sha(graph) -> str:
    return graph.sql("select min(sha256) as sha from silver.holdout_photos")["sha"][0]


@pytest.mark.slow
def test_a_synthetic_child_of_a_holdout_photo_stops_the_next_model(graph, monkeypatch):
    before = graph.versions(REPAIR_MODEL)
    leaked_parent = holdout_sha(graph)
    real = feedback_assets.feedback_training_rows

    def adds_a_child_of_a_holdout_photo(*args, **kwargs) -> pl.DataFrame:
        # The bug the check exists for: a synthetic photo made from a holdout photo slips in.
        rows = real(*args, **kwargs)
        child = rows.head(1).with_columns(
            pl.lit("f" * 64).alias("photo_sha256"),
            pl.lit(leaked_parent).alias("parent_sha256"),
            pl.lit("synthetic").alias("label_origin"),
        )
        return pl.concat([rows, child])

    monkeypatch.setattr(feedback_assets, "feedback_training_rows", adds_a_child_of_a_holdout_photo)
    result = graph.run(
        dg.AssetSelection.assets(FEEDBACK_SET, NEXT_MODEL),
        run_config=feedback_config(synthetic_labels_enabled=True, synthetic_max_share=0.2),
    )
    check = evaluation(result, FEEDBACK_SET, NO_HOLDOUT_DESCENDANTS)
    rows = graph.sql("select count(*) as n from feedback.repair_feedback_training_set")["n"][0]
    assert not result.success and not check.passed
    assert {k: v.value for k, v in check.metadata.items()} == {
        "leaked_rows": 1,
        "training_rows": rows,
    }
    assert evaluation(result, FEEDBACK_SET, LABEL_SHARES).passed
    # The step that failed is the training set's own; the checks in steps after it never ran.
    assert not [
        check
        for check in result.get_asset_check_evaluations()
        if check.check_name == NO_HOLDOUT_LEAKAGE
    ]
    message = failed_steps(result)["feedback__repair_feedback_training_set"]
    assert f"feedback/repair_feedback_training_set: {NO_HOLDOUT_DESCENDANTS}" in message
    assert materialized(result) == {FEEDBACK_SET}
    assert graph.versions(REPAIR_MODEL) == before


@pytest.mark.slow
def test_chatbot_labels_over_their_ceiling_stop_the_next_model(graph):
    before = graph.versions(REPAIR_MODEL)
    policy = {
        "chatbot_labels_enabled": True,
        "chatbot_min_confidence": 0.0,
        "chatbot_max_share": 0.5,
    }
    result = graph.run(
        dg.AssetSelection.assets(FEEDBACK_SET, NEXT_MODEL), run_config=feedback_config(**policy)
    )
    check = evaluation(result, FEEDBACK_SET, LABEL_SHARES)
    found = {k: v.value for k, v in check.metadata.items()}
    rows = graph.sql(
        "select label_origin, count(*) as n from feedback.repair_feedback_training_set group by 1"
    )
    counts = dict(rows.iter_rows())
    assert not result.success and not check.passed
    assert found["chatbot_rows"] == counts["chatbot"] > 0
    assert found["chatbot_share"] == pytest.approx(counts["chatbot"] / sum(counts.values()))
    assert found["chatbot_share"] > found["chatbot_ceiling"] == 0.25
    assert found["chatbot_cap"] == 0.5
    assert found["policy"]["chatbot"] == {"enabled": True, "min_confidence": 0.0, "max_share": 0.5}
    assert materialized(result) == {FEEDBACK_SET}
    assert graph.versions(REPAIR_MODEL) == before


@pytest.mark.slow
def test_a_holdout_photo_in_the_defect_set_stops_the_detector(graph, monkeypatch):
    leaked = holdout_sha(graph)
    real = defect_assets.defect_rows

    def leaks_one_holdout_photo(*args, **kwargs) -> pl.DataFrame:
        rows = real(*args, **kwargs)
        return pl.concat([rows, rows.head(1).with_columns(pl.lit(leaked).alias("photo_sha256"))])

    monkeypatch.setattr(defect_assets, "defect_rows", leaks_one_holdout_photo)
    result = graph.run(dg.AssetSelection.assets(DEFECT_SET, DETECTOR), run_config=defect_config())
    check = evaluation(result, DEFECT_SET, NO_HOLDOUT_LEAKAGE)
    rows = graph.sql("select count(*) as n from defect_detection.defect_training_set")["n"][0]
    assert not result.success and not check.passed
    assert {k: v.value for k, v in check.metadata.items()} == {
        "leaked_rows": 1,
        "training_rows": rows,
    }
    assert materialized(result) == {DEFECT_SET}
    assert graph.versions("defect_detector") == []


@pytest.mark.slow
def test_model_labels_enter_the_defect_set_only_when_enabled(graph):
    default = graph.run(dg.AssetSelection.assets(DEFECT_SET), run_config=defect_config(train=False))
    assert default.success
    origins = graph.sql("select distinct label_origin from defect_detection.defect_training_set")
    assert origins["label_origin"].to_list() == ["technician"]
    enabled = graph.run(
        dg.AssetSelection.assets(DEFECT_SET),
        run_config=defect_config(
            train=False, model_labels_enabled=True, model_label_min_confidence=0.0
        ),
    )
    assert enabled.success
    counts = dict(
        graph.sql(
            "select label_origin, count(*) from defect_detection.defect_training_set group by 1"
        ).iter_rows()
    )
    assert 0 < counts["model"] <= int(0.2 * counts["technician"] / 0.8)
    assert evaluation(enabled, DEFECT_SET, LABEL_SHARES).passed


@pytest.mark.slow
def test_a_non_technician_holdout_label_stops_every_training(graph):
    sha = holdout_sha(graph)
    graph.execute(
        f"update silver.holdout_photos set label_origin = 'chatbot' where sha256 = '{sha}'"
    )
    try:
        seed = graph.run(
            jobs.SEED_MODEL_ASSETS,
            run_config={"ops": {"repair__repair_damage_model": {"config": TINY_TRAINING}}},
        )
        feedback = graph.run(
            dg.AssetSelection.assets(FEEDBACK_SET, NEXT_MODEL), run_config=feedback_config()
        )
        defect = graph.run(
            dg.AssetSelection.assets(DEFECT_SET, DETECTOR), run_config=defect_config()
        )
    finally:
        graph.execute("update silver.holdout_photos set label_origin = 'technician'")
    for result, asset, model in (
        (seed, SEED_SET, SEED_MODEL),
        (feedback, FEEDBACK_SET, NEXT_MODEL),
        (defect, DEFECT_SET, DETECTOR),
    ):
        check = evaluation(result, asset, EVALUATION_LABELS)
        assert not result.success and not check.passed, asset
        found = {k: v.value for k, v in check.metadata.items()}
        assert (found["non_technician_rows"], found["holdout_rows"]) == (1, 16)
        assert found["rows_by_origin"] == {"chatbot": 1, "technician": 15}
        assert model not in materialized(result)
    assert graph.versions(REPAIR_MODEL) == ["1"]
    assert graph.versions("defect_detector") == []


@pytest.mark.slow
@pytest.mark.skipif(
    not hasattr(vision_models, "SYNTHETIC_PHOTOS_BY_SHA_SQL"),
    reason="training photos are read from silver.repair_photos only; synthetic photos need "
    "vision_models.photo_contents to read silver.synthetic_photos too",
)
def test_the_next_model_learns_from_admitted_synthetic_photos(graph):
    before = graph.versions(REPAIR_MODEL)
    result = graph.run(
        dg.AssetSelection.assets(FEEDBACK_SET, NEXT_MODEL),
        run_config=feedback_config(synthetic_labels_enabled=True, synthetic_max_share=0.2),
    )
    assert result.success
    assert len(graph.versions(REPAIR_MODEL)) == len(before) + 1
    version = graph.versions(REPAIR_MODEL)[-1]
    recorded = graph.sql(
        "select label_origin, count(*) as n from feedback.model_training_rows "
        f"where model_key = 'repair_damage_model@{version}' group by 1"
    )
    synthetic = graph.sql(
        "select count(*) as n from feedback.repair_feedback_training_set "
        "where label_origin = 'synthetic'"
    )["n"][0]
    assert dict(recorded.iter_rows())["synthetic"] == synthetic > 0
