"""Bronze keeps files outside the landing contract instead of dropping them."""

import dagster as dg
import duckdb

from compositional_ai.definitions import ASSET_MODULES, build_resources
from compositional_ai.landing import formats
from compositional_ai.settings import DataPaths
from compositional_ai.warehouse.bronze import UNREAD_FILES_CHECK
from compositional_ai.warehouse.partitions import landing_batches


def _batch(root, name: str, extra: dict[str, bytes]) -> None:
    folder = root / "landing" / "batches" / name
    (folder / formats.PHOTOS_DIR).mkdir(parents=True)
    (folder / formats.REQUESTS_FILE).write_bytes(b"")
    for relative, content in extra.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    (folder / formats.READY_MARKER).write_text("{}")


def _materialize(tmp_path, batch: str) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(landing_batches.name, [batch])
    return dg.materialize(
        [*dg.load_assets_from_modules(ASSET_MODULES)],
        # One step reads the batch folder's files: the photos and the unread files.
        selection=[
            dg.AssetKey(["bronze", "repair_photos"]),
            dg.AssetKey(["bronze", "unread_files"]),
        ],
        partition_key=batch,
        instance=instance,
        resources=build_resources(DataPaths(tmp_path)),
    )


def test_files_outside_the_contract_are_kept_with_their_bytes_and_warned_about(tmp_path):
    stray = {
        "request.jsonl": b'{"request_id": "r1"}\n',
        "notes/readme.txt": b"ask Sam about batch 7",
        "cell.png": b"\x89PNG not really",
    }
    _batch(tmp_path, "b1", stray)
    _batch(tmp_path, "b2", {})
    first = _materialize(tmp_path, "b1")
    (check,) = first.get_asset_check_evaluations()
    assert check.check_name == UNREAD_FILES_CHECK
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["count"].value == 3
    second = _materialize(tmp_path, "b2")
    (clean,) = second.get_asset_check_evaluations()
    assert clean.passed and clean.metadata["count"].value == 0
    with duckdb.connect(str(DataPaths(tmp_path).warehouse), read_only=True) as con:
        rows = con.execute(
            "select batch, source_file, content, file_type from bronze.unread_files "
            "order by source_file"
        ).fetchall()
    # The contract's own files (requests, photos/, _READY) are not repeated here.
    assert [(batch, name, bytes(content), kind) for batch, name, content, kind in rows] == [
        ("b1", name, stray[name], "file") for name in sorted(stray)
    ]
