"""Silver's blocking checks on the holdout's label origins, and synthetic photos through a batch."""

import dagster as dg
import duckdb
import polars as pl
import pytest

from compositional_ai import jobs
from compositional_ai.definitions import ASSET_MODULES, build_resources
from compositional_ai.landing.generate import build_demo_landing
from compositional_ai.settings import PSEUDONYM_KEY_ENV, DataPaths
from compositional_ai.warehouse.partitions import landing_batches
from compositional_ai.warehouse.silver import (
    CONSERVATION_CHECK,
    HOLDOUT_ORIGIN_CHECK,
    holdout_origin_check,
)


@pytest.mark.parametrize(
    ("origins", "passed", "others"),
    [
        (["technician"] * 3, True, 0),  # the experts' labels
        (["technician", "synthetic", "model"], False, 2),  # two labels no expert gave
        ([], True, 0),  # an empty holdout has nothing to refuse
    ],
)
def test_the_holdout_check_refuses_non_technician_labels(origins, passed, others):
    holdout = pl.DataFrame({"label_origin": origins}, schema={"label_origin": pl.String})
    result = holdout_origin_check(holdout)
    assert (result.passed, result.check_name) == (passed, HOLDOUT_ORIGIN_CHECK)
    assert result.severity == dg.AssetCheckSeverity.ERROR
    metadata = {key: value.value for key, value in result.metadata.items()}
    assert metadata["non_technician_rows"] == others
    assert metadata["holdout_rows"] == len(origins)
    assert sum(metadata["rows_by_origin"].values()) == len(origins)


@pytest.mark.slow
def test_a_bad_synthetic_photo_is_quarantined_and_the_batch_still_accounts_for_it(tmp_path):
    mp = pytest.MonkeyPatch()
    mp.setenv(PSEUDONYM_KEY_ENV, "silver-test-key")
    try:
        landing = build_demo_landing(
            tmp_path / "landing",
            n_batches=2,
            max_train_photos=40,
            max_holdout_photos=8,
            synthetic_share=0.3,
        )
        batch = landing.batches[0]
        manifest = tmp_path / "landing" / "batches" / batch / "synthetic.csv"
        rows = pl.read_csv(manifest, infer_schema=False)
        assert rows.height >= 2
        holdout = pl.read_csv(tmp_path / "landing" / "reference/holdout/labels.csv")["sha256"][0]
        # The first row now names a holdout photo as its parent, the second is not marked.
        rows = rows.with_columns(
            pl.when(pl.int_range(pl.len()) == 0)
            .then(pl.lit(holdout))
            .otherwise(pl.col("parent_sha256"))
            .alias("parent_sha256"),
            pl.when(pl.int_range(pl.len()) == 1)
            .then(pl.lit("false"))
            .otherwise(pl.col("synthetic"))
            .alias("synthetic"),
        )
        manifest.write_text(rows.write_csv())
        paths = DataPaths(tmp_path)
        resources = build_resources(paths)
        assets = [
            *dg.load_assets_from_modules(ASSET_MODULES),
            *dg.load_asset_checks_from_modules(ASSET_MODULES),
        ]
        instance = dg.DagsterInstance.ephemeral()
        run = dict(assets=assets, instance=instance, resources=resources, raise_on_error=False)
        assert dg.materialize(selection=jobs.REFERENCE_ASSETS, **run).success
        instance.add_dynamic_partitions(landing_batches.name, [batch])
        result = dg.materialize(selection=jobs.BATCH_ASSETS, partition_key=batch, **run)
    finally:
        mp.undo()
    assert result.success
    (check,) = [
        c for c in result.get_asset_check_evaluations() if c.check_name == CONSERVATION_CHECK
    ]
    figures = {key: value.value for key, value in check.metadata.items()}
    assert check.passed
    assert figures["synthetic_photos_bronze"] == rows.height
    assert figures["synthetic_photos_silver"] == rows.height - 2
    assert figures["synthetic_photos_quarantine"] == 2
    assert figures["synthetic_manifest_quarantine"] == 2
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        held = con.execute(
            "select source, reason from silver.quarantine where source like 'synthetic%' "
            "order by source, reason"
        ).fetchall()
        marked = con.execute(
            "select count(*), bool_and(synthetic) from silver.synthetic_photos"
        ).fetchone()
    assert held == [
        ("synthetic_manifest", "holdout_parent"),
        ("synthetic_manifest", "not_marked_synthetic"),
        ("synthetic_photos", "unlisted_synthetic"),
        ("synthetic_photos", "unlisted_synthetic"),
    ]
    assert marked == (rows.height - 2, True)
