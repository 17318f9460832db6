import hashlib
import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from compositional_ai.landing.elpv import apportion, load_elpv_labels, stratified_holdout
from compositional_ai.landing.formats import (
    CHAT_SLOTS,
    CUSTOMER_COLUMNS,
    HOLDOUT_COLUMNS,
    OUTCOME_COLUMNS,
    READY_MARKER,
    REQUEST_FIELDS,
    SYNTHETIC_COLUMNS,
)
from compositional_ai.landing.generate import (
    BAD_DAMAGE_LEVEL,
    CHAT_TRUTH_COLUMNS,
    FAULT_KINDS,
    SYNTHETIC_TRUTH_COLUMNS,
    UNKNOWN_PRODUCT_ID,
    build_demo_landing,
)
from compositional_ai.landing.synthetic import GENERATOR_VERSION

SMALL = {"n_batches": 3, "max_train_photos": 40, "max_holdout_photos": 12}
BATCH_IDS = ("2026-01-05", "2026-01-12", "2026-01-19")
LABEL_FIELDS = ("damage_level", "defect_probability", "cell_type")
DATA_FILES = ("requests.jsonl", "chats.jsonl", "customers.csv", "outcomes.csv")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("landing") / "landing"
    return build_demo_landing(root, **SMALL)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean") / "landing"
    return build_demo_landing(root, inject_faults=False, **SMALL)


def batch_dir(summary, batch_id: str) -> Path:
    return summary.root / "batches" / batch_id


def read_lines(summary, batch_id: str, name: str) -> list[str]:
    return (batch_dir(summary, batch_id) / name).read_text(encoding="utf-8").splitlines()


def parse_lines(lines: list[str]) -> list[dict]:
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def requests_of(summary, batch_id: str) -> list[dict]:
    """The distinct parseable requests of a batch, in file order."""
    seen, out = set(), []
    for record in parse_lines(read_lines(summary, batch_id, "requests.jsonl")):
        if record["request_id"] not in seen:
            seen.add(record["request_id"])
            out.append(record)
    return out


def read_csv(summary, batch_id: str, name: str) -> pl.DataFrame:
    return pl.read_csv(batch_dir(summary, batch_id) / name, infer_schema=False)


def manifest(summary, batch_id: str) -> dict:
    return json.loads((batch_dir(summary, batch_id) / READY_MARKER).read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def faults_of(summary, kind: str) -> list:
    return [f for f in summary.faults if f.kind == kind]


def test_layout_and_batch_ids(built):
    assert built.batches == BATCH_IDS
    assert sorted(p.name for p in (built.root / "batches").iterdir()) == list(BATCH_IDS)
    assert sorted(p.name for p in built.root.iterdir()) == ["batches", "reference"]
    for batch_id in BATCH_IDS:
        names = {p.name for p in batch_dir(built, batch_id).iterdir()}
        assert names == {*DATA_FILES, "photos", "synthetic", "synthetic.csv", READY_MARKER}


def test_holdout_is_stratified_and_matches_its_files(built):
    labels = pl.read_csv(built.root / "reference/holdout/labels.csv")
    assert labels.columns == list(HOLDOUT_COLUMNS)
    assert labels.height == 12
    elpv = load_elpv_labels()
    full = elpv.filter(stratified_holdout(elpv))
    sizes = full.group_by("damage_level", "cell_type").len().sort("damage_level", "cell_type")
    expected = dict(
        zip(
            zip(sizes["damage_level"], sizes["cell_type"], strict=True),
            apportion(sizes["len"].to_numpy(), 12).tolist(),
            strict=True,
        )
    )
    counts = labels.group_by("damage_level", "cell_type").len()
    assert {(r[0], r[1]): r[2] for r in counts.iter_rows()} == {
        k: v for k, v in expected.items() if v
    }
    # The subsample is drawn from the fixed 656-image holdout, labels unchanged.
    assert set(labels["photo_file"]) <= set(full["photo_file"])
    joined = labels.join(full, on="photo_file", suffix="_elpv")
    assert (joined["damage_level"] == joined["damage_level_elpv"]).all()
    photos = built.root / "reference/holdout/photos"
    assert sorted(p.name for p in photos.iterdir()) == sorted(labels["photo_file"])
    for name, digest in labels.select("photo_file", "sha256").iter_rows():
        assert sha256(photos / name) == digest


def test_holdout_is_disjoint_from_every_batch(built):
    holdout = pl.read_csv(built.root / "reference/holdout/labels.csv")
    holdout_digests, holdout_files = set(holdout["sha256"]), set(holdout["photo_file"])
    elpv = load_elpv_labels()
    full_holdout = set(elpv.filter(stratified_holdout(elpv))["photo_file"])
    batch_files: list[str] = []
    for batch_id in BATCH_IDS:
        files = manifest(built, batch_id)["files"]
        photos = {k: v for k, v in files.items() if k.startswith("photos/")}
        assert not holdout_digests & set(photos.values())
        batch_files += [k.removeprefix("photos/") for k in photos]
    # Not even the holdout images left out of the subsample reach a batch.
    assert not (holdout_files | full_holdout) & set(batch_files)
    assert len(batch_files) == len(set(batch_files)) == 40


def test_requests_photos_exist_and_match_the_manifest(built):
    for batch_id in BATCH_IDS:
        ready = manifest(built, batch_id)
        assert ready["batch_id"] == batch_id
        folder = batch_dir(built, batch_id)
        on_disk = {
            str(p.relative_to(folder))
            for p in folder.rglob("*")
            if p.is_file() and p.name != READY_MARKER
        }
        assert set(ready["files"]) == on_disk
        for name, digest in ready["files"].items():
            assert sha256(folder / name) == digest
        for request in requests_of(built, batch_id):
            assert request["photo"] in ready["files"]
        assert len(requests_of(built, batch_id)) == built.counts[f"batches/{batch_id}/photos"]


def test_manifest_row_counts(built):
    for batch_id in BATCH_IDS:
        rows = manifest(built, batch_id)["rows"]
        assert rows["requests.jsonl"] == len(read_lines(built, batch_id, "requests.jsonl"))
        assert rows["chats.jsonl"] == len(read_lines(built, batch_id, "chats.jsonl"))
        assert rows["customers.csv"] == read_csv(built, batch_id, "customers.csv").height
        assert rows["outcomes.csv"] == read_csv(built, batch_id, "outcomes.csv").height
        for name, n in rows.items():
            assert built.counts[f"batches/{batch_id}/{name}"] == n


def test_labels_appear_only_in_outcomes(built):
    for batch_id in BATCH_IDS:
        for request in parse_lines(read_lines(built, batch_id, "requests.jsonl")):
            assert tuple(request) == REQUEST_FIELDS
            assert tuple(request["customer"]) == ("name", "email", "phone")
        for chat in parse_lines(read_lines(built, batch_id, "chats.jsonl")):
            assert tuple(chat) == ("transcript_id", "request_id", "turns")
            for turn in chat["turns"]:
                assert set(turn) <= {"speaker", "text", "at", "asks"}
                assert "probability" not in turn["text"]
        assert read_csv(built, batch_id, "customers.csv").columns == list(CUSTOMER_COLUMNS)
        assert read_csv(built, batch_id, "outcomes.csv").columns == list(OUTCOME_COLUMNS)


def test_outcomes_lag_one_batch(built):
    ids = {b: [r["request_id"] for r in requests_of(built, b)] for b in BATCH_IDS}
    outcomes = {b: read_csv(built, b, "outcomes.csv") for b in BATCH_IDS}
    # The workshop archive confirms itself, every quote accepted.
    assert sorted(outcomes[BATCH_IDS[0]]["request_id"]) == sorted(ids[BATCH_IDS[0]])
    assert (outcomes[BATCH_IDS[0]]["quote_accepted"] == "true").all()
    # The first online week has nothing left to confirm; later weeks confirm the week before.
    assert outcomes[BATCH_IDS[1]].height == 0
    assert sorted(outcomes[BATCH_IDS[2]]["request_id"]) == sorted(ids[BATCH_IDS[1]])
    confirmed = set().union(*(set(o["request_id"]) for o in outcomes.values()))
    assert not confirmed & set(ids[BATCH_IDS[-1]])


def test_outcomes_carry_the_elpv_labels(built):
    elpv = load_elpv_labels().select("photo_file", *LABEL_FIELDS)
    photos = pl.DataFrame(
        [
            {"request_id": r["request_id"], "photo_file": r["photo"].removeprefix("photos/")}
            for b in BATCH_IDS
            for r in requests_of(built, b)
        ]
    ).join(elpv, on="photo_file")
    outcomes = pl.concat([read_csv(built, b, "outcomes.csv") for b in BATCH_IDS])
    accepted = outcomes.filter(pl.col("quote_accepted") == "true")
    declined = outcomes.filter(pl.col("quote_accepted") == "false")
    assert accepted.height + declined.height == outcomes.height
    assert declined.height > 0
    assert (
        declined.select(*LABEL_FIELDS, "technician_id", "inspected_at").null_count().row(0)
        == (declined.height,) * 5
    )
    joined = accepted.join(photos, on="request_id", suffix="_true")
    assert joined.height == accepted.height
    bad = {f.request_id for f in faults_of(built, "bad_damage_level")}
    agree = joined.filter(~pl.col("request_id").is_in(bad))
    assert (agree["damage_level"].cast(pl.Int64) == agree["damage_level_true"]).all()
    assert (agree["cell_type"] == agree["cell_type_true"]).all()
    assert np.allclose(
        agree["defect_probability"].cast(pl.Float64), agree["defect_probability_true"]
    )


def test_requests_are_timed_inside_their_week_with_offsets(built):
    offsets = set()
    for k, batch_id in enumerate(BATCH_IDS):
        week = datetime.combine(date(2026, 1, 5) + timedelta(weeks=k), datetime.min.time(), UTC)
        naive = {f.request_id for f in faults_of(built, "naive_timestamp")}
        for request in requests_of(built, batch_id):
            if request["request_id"] in naive:
                continue
            stamp = request["submitted_at"]
            offsets.add("Z" if stamp.endswith("Z") else stamp[-6:])
            moment = datetime.fromisoformat(stamp)
            assert week <= moment < week + timedelta(days=7)
            assert moment.date() - week.date() < timedelta(days=7)
    assert {"Z", "+01:00", "-05:00"} <= offsets


def test_channels_ids_and_workshop_share(built):
    channels = {b: {r["channel"] for r in requests_of(built, b)} for b in BATCH_IDS}
    assert channels == {
        BATCH_IDS[0]: {"workshop"},
        BATCH_IDS[1]: {"online"},
        BATCH_IDS[2]: {"online"},
    }
    ids = [r["request_id"] for b in BATCH_IDS for r in requests_of(built, b)]
    assert len(ids) == len(set(ids)) == 40
    assert ids[0] == "R-000001"
    # A quarter of the 40 training photos form the workshop archive; the rest split evenly.
    assert [len(requests_of(built, b)) for b in BATCH_IDS] == [10, 15, 15]


def test_customers_match_crm_and_contacts_are_generated(built):
    for batch_id in BATCH_IDS:
        crm = {r["customer_id"]: r for r in read_csv(built, batch_id, "customers.csv").to_dicts()}
        requests = requests_of(built, batch_id)
        assert set(crm) == {r["customer_id"] for r in requests}
        for request in requests:
            row = crm[request["customer_id"]]
            assert request["customer"] == {k: row[k] for k in ("name", "email", "phone")}
            assert row["email"].rsplit("@", 1)[1] in {"example.com", "example.net", "example.org"}


def test_chats_ask_every_slot_in_order(built):
    truth = built.chat_truth
    assert truth.columns == list(CHAT_TRUTH_COLUMNS)
    for batch_id in BATCH_IDS:
        chats = parse_lines(read_lines(built, batch_id, "chats.jsonl"))
        assert [c["request_id"] for c in chats] == [
            r["request_id"] for r in requests_of(built, batch_id)
        ]
        for chat in chats:
            turns = chat["turns"]
            assert [t["asks"] for t in turns if t["speaker"] == "bot"] == list(CHAT_SLOTS)
            assert all(t["speaker"] == "bot" for t in turns[::2][: len(CHAT_SLOTS) - 1])
            times = [datetime.fromisoformat(t["at"]) for t in turns]
            assert times == sorted(times) and all(t.tzinfo is not None for t in times)


def answers(chat: dict) -> dict[str, str]:
    """The customer's reply to each slot the bot asked about."""
    out, asked = {}, None
    for turn in chat["turns"]:
        if turn["speaker"] == "bot":
            asked = turn["asks"]
        else:
            out[asked] = turn["text"]
    return out


def test_chat_truth_matches_what_was_said(built):
    truth = {row["request_id"]: row for row in built.chat_truth.to_dicts()}
    assert len(truth) == 40
    for batch_id in BATCH_IDS:
        crm = {r["customer_id"]: r for r in read_csv(built, batch_id, "customers.csv").to_dicts()}
        for chat in parse_lines(read_lines(built, batch_id, "chats.jsonl")):
            said, replies = truth[chat["request_id"]], answers(chat)
            customer = crm[said["customer_id"]]
            assert said["batch_id"] == batch_id
            assert said["name"] in replies["name"] and said["name"] == customer["name"]
            for slot in ("email", "phone"):
                if said[slot] is None:
                    assert said["declined"] == slot and customer[slot] not in replies[slot]
                else:
                    assert said[slot] == customer[slot] and said[slot] in replies[slot]
            if said["age"] is None:
                assert said["declined"] == "age"
            else:
                assert str(said["age"]) in replies["age"]
                assert (said["age"] >= 65) == (customer["senior_citizen"] == "true")
            assert said["partner"] == (customer["partner"] == "true")
            assert said["dependents"] == (customer["dependents"] == "true")
            household = replies["household"].lower()
            if said["partner"]:
                assert any(w in household for w in ("wife", "husband", "partner"))
            if said["dependents"]:
                assert any(w in household for w in ("son", "daughter", "kids", "children"))
            if not (said["partner"] or said["dependents"]):
                assert "me" in household or "alone" in household
            assert abs(said["described_level"] - said["damage_level"]) <= 1
            if said["support_phrase"]:
                assert said["support_phrase"].rstrip(".").lower()[1:] in replies["damage"].lower()


def test_faults_are_exactly_the_listed_kinds(built):
    assert [f.kind for f in built.faults] == list(FAULT_KINDS)
    # Spread over the batches: each batch carries at least one.
    assert {f.batch_id for f in built.faults} == set(BATCH_IDS)


def test_request_line_faults(built):
    catalog = set(pl.read_csv(built.root / "reference/catalog.csv")["product_id"])
    assert UNKNOWN_PRODUCT_ID not in catalog
    listed = {(f.batch_id, f.line): f for f in built.faults if f.file == "requests.jsonl"}
    for batch_id in BATCH_IDS:
        lines = read_lines(built, batch_id, "requests.jsonl")
        for number, line in enumerate(lines, start=1):
            fault = listed.pop((batch_id, number), None)
            kind = fault.kind if fault else None
            if kind == "invalid_json":
                with pytest.raises(json.JSONDecodeError):
                    json.loads(line)
                assert lines[number].startswith(line)
                assert json.loads(lines[number])["request_id"] == fault.request_id
                continue
            request = json.loads(line)
            if kind:
                assert request["request_id"] == fault.request_id
            is_copy = number > 1 and lines[number - 2] == line
            assert is_copy == (kind == "duplicate_request")
            assert (request["product_id"] not in catalog) == (kind == "unknown_product")
            has_offset = datetime.fromisoformat(request["submitted_at"]).tzinfo is not None
            assert has_offset == (kind != "naive_timestamp")
    assert not listed


def test_photo_fault_is_the_only_unreadable_photo(built):
    truncated = {(f.batch_id, f.file) for f in faults_of(built, "truncated_photo")}
    assert len(truncated) == 1
    elpv = dict(load_elpv_labels().select("photo_file", "source_path").iter_rows())
    for batch_id in BATCH_IDS:
        for name in manifest(built, batch_id)["files"]:
            if not name.startswith("photos/"):
                continue
            data = (batch_dir(built, batch_id) / name).read_bytes()
            source = Path(elpv[name.removeprefix("photos/")]).read_bytes()
            if (batch_id, name) in truncated:
                assert source.startswith(data) and len(data) < len(source)
                with pytest.raises(OSError):
                    Image.open(io.BytesIO(data)).load()
            else:
                assert data == source


def test_csv_faults(built):
    (bad_level,) = faults_of(built, "bad_damage_level")
    (bad_tenure,) = faults_of(built, "bad_tenure")
    for batch_id in BATCH_IDS:
        outcomes = read_csv(built, batch_id, "outcomes.csv").with_row_index("line", offset=2)
        levels = outcomes.filter(pl.col("damage_level").is_not_null())
        odd = levels.filter(~pl.col("damage_level").is_in(["0", "1", "2", "3"]))
        expected = (
            [(bad_level.line, bad_level.request_id, str(BAD_DAMAGE_LEVEL))]
            if batch_id == bad_level.batch_id
            else []
        )
        assert odd.select("line", "request_id", "damage_level").rows() == expected
        customers = read_csv(built, batch_id, "customers.csv").with_row_index("line", offset=2)
        odd = customers.filter(~pl.col("tenure_months").str.contains(r"^[0-9]+$"))
        expected_lines = [bad_tenure.line] if batch_id == bad_tenure.batch_id else []
        assert odd["line"].to_list() == expected_lines
        if expected_lines:
            assert odd["tenure_months"][0].endswith(" months")
            assert bad_tenure.detail.startswith(f"customer_id={odd['customer_id'][0]}")


def test_clean_build_has_no_faults(clean):
    assert clean.faults == ()
    catalog = set(pl.read_csv(clean.root / "reference/catalog.csv")["product_id"])
    for batch_id in BATCH_IDS:
        lines = read_lines(clean, batch_id, "requests.jsonl")
        requests = [json.loads(line) for line in lines]
        assert len({r["request_id"] for r in requests}) == len(lines)
        assert all(r["product_id"] in catalog for r in requests)
        assert all(datetime.fromisoformat(r["submitted_at"]).tzinfo for r in requests)
        customers = read_csv(clean, batch_id, "customers.csv")
        assert customers["tenure_months"].str.contains(r"^[0-9]+$").all()
        outcomes = read_csv(clean, batch_id, "outcomes.csv")
        assert outcomes["damage_level"].drop_nulls().is_in(["0", "1", "2", "3"]).all()


def test_builds_are_deterministic_for_a_seed(built, clean, tmp_path):
    again = build_demo_landing(tmp_path / "again", **SMALL)
    for batch_id in BATCH_IDS:
        assert (batch_dir(again, batch_id) / READY_MARKER).read_bytes() == (
            batch_dir(built, batch_id) / READY_MARKER
        ).read_bytes()
    for name in ("reference/catalog.csv", "reference/holdout/labels.csv"):
        assert (again.root / name).read_bytes() == (built.root / name).read_bytes()
    assert again.faults == built.faults
    assert again.chat_truth.equals(built.chat_truth)
    # Fault injection leaves the clean parts of a batch as they were.
    assert again.chat_truth.equals(clean.chat_truth)
    other = build_demo_landing(tmp_path / "other", seed=8, **SMALL)
    assert manifest(other, BATCH_IDS[1]) != manifest(built, BATCH_IDS[1])


def test_refuses_a_non_empty_root_unless_overwrite(tmp_path):
    root = tmp_path / "landing"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        build_demo_landing(root, **SMALL)
    assert [p.name for p in root.iterdir()] == ["keep.txt"]
    summary = build_demo_landing(root, overwrite=True, **SMALL)
    assert summary.root == root
    assert sorted(p.name for p in root.iterdir()) == ["batches", "reference"]
    # Nothing is left beside the root: no staging tree, no replaced tree.
    assert [p.name for p in tmp_path.iterdir()] == ["landing"]


def test_an_empty_existing_root_is_accepted(tmp_path):
    (tmp_path / "landing").mkdir()
    summary = build_demo_landing(tmp_path / "landing", **SMALL)
    assert summary.batches == BATCH_IDS


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # The workshop archive alone has no online week.
        ({"n_batches": 1}, "at least 2"),
        # 8 photos: 2 for the workshop leave 6 for 9 online weeks.
        ({"n_batches": 10, "max_train_photos": 8}, "cannot fill"),
    ],
)
def test_rejects_impossible_builds(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        build_demo_landing(tmp_path / "landing", **{"max_holdout_photos": 4, **options})


def test_summary_counts_and_licenses(built):
    assert built.counts["reference/catalog.csv"] == 628
    assert built.catalog_dropped == 15
    assert built.counts["reference/holdout/photos"] == 12
    assert sum(built.counts[f"batches/{b}/photos"] for b in BATCH_IDS) == 40
    assert "CC-BY-NC-SA-4.0" in built.licenses["elpv-dataset"]


# --- synthetic photos --------------------------------------------------------------------------


def outcome_labels(summary) -> pl.DataFrame:
    """Every accepted outcome: the request, the batch its label arrived in, the level."""
    return pl.concat(
        read_csv(summary, batch_id, "outcomes.csv")
        .filter(pl.col("quote_accepted") == "true")
        .select("request_id", pl.lit(batch_id).alias("label_batch"), "damage_level")
        for batch_id in BATCH_IDS
    )


def request_photos(summary) -> pl.DataFrame:
    rows = [
        (batch_id, request["request_id"], sha256(batch_dir(summary, batch_id) / request["photo"]))
        for batch_id in BATCH_IDS
        for request in requests_of(summary, batch_id)
    ]
    return pl.DataFrame(rows, schema=["request_batch", "request_id", "sha256"], orient="row")


def test_synthetic_manifests_describe_their_files(built):
    for batch_id in BATCH_IDS:
        listed = read_csv(built, batch_id, "synthetic.csv")
        assert tuple(listed.columns) == SYNTHETIC_COLUMNS
        folder = batch_dir(built, batch_id)
        files = sorted(f"synthetic/{p.name}" for p in (folder / "synthetic").iterdir())
        assert sorted(listed["photo"].to_list()) == files
        assert listed["synthetic"].unique().to_list() in ([], ["true"])
        assert listed["generator_version"].unique().to_list() in ([], [GENERATOR_VERSION])
        for photo, digest in listed.select("photo", "sha256").iter_rows():
            assert sha256(folder / photo) == digest
            assert manifest(built, batch_id)["files"][photo] == digest
            with Image.open(folder / photo) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "L", (300, 300))
        # The manifest carries no label: a synthetic photo inherits its parent's.
        assert not set(LABEL_FIELDS) & set(listed.columns)
        assert built.counts[f"batches/{batch_id}/synthetic"] == len(files)


def test_synthetic_parents_are_training_photos_labelled_in_the_same_batch(built):
    truth = built.synthetic
    assert tuple(truth.columns) == SYNTHETIC_TRUTH_COLUMNS
    # 10 % of 10 and of 15 photos, rounded half to even; the second batch confirms nothing.
    assert truth.group_by("batch_id").len().sort("batch_id").rows() == [
        ("2026-01-05", 1),
        ("2026-01-19", 2),
    ]
    labels = outcome_labels(built)
    photos = request_photos(built)
    joined = truth.join(
        photos, left_on="parent_request_id", right_on="request_id", how="left"
    ).join(labels, left_on="parent_request_id", right_on="request_id", how="left")
    assert (joined["sha256_right"] == joined["parent_sha256"]).all()
    assert (joined["label_batch"] == joined["batch_id"]).all()
    assert (joined["request_batch"] == joined["parent_batch_id"]).all()
    assert (joined["damage_level_right"].cast(pl.Int64) == joined["damage_level"]).all()
    holdout = set(pl.read_csv(built.root / "reference/holdout/labels.csv")["sha256"])
    assert not holdout & set(truth["parent_sha256"])
    assert not set(truth["sha256"]) & set(truth["parent_sha256"])


def test_no_faulty_photo_is_a_synthetic_parent(built):
    touched = {f.request_id for f in built.faults if f.request_id}
    assert not touched & set(built.synthetic["parent_request_id"])


def test_the_synthetic_share_sizes_each_batch(tmp_path):
    none = build_demo_landing(tmp_path / "none", synthetic_share=0.0, **SMALL)
    assert none.synthetic.height == 0
    for batch_id in BATCH_IDS:
        assert read_csv(none, batch_id, "synthetic.csv").height == 0
        assert list((batch_dir(none, batch_id) / "synthetic").iterdir()) == []
    many = build_demo_landing(tmp_path / "many", synthetic_share=0.9, **SMALL)
    by_batch = dict(many.synthetic.group_by("batch_id").len().iter_rows())
    touched = {f.request_id for f in many.faults if f.request_id}
    labels = outcome_labels(many).filter(~pl.col("request_id").is_in(list(touched)))
    for batch_id in BATCH_IDS:
        photos = many.counts[f"batches/{batch_id}/photos"]
        parents = labels.filter(pl.col("label_batch") == batch_id).height
        # 90 % of the batch's photos, but never more than the labels that arrive in it.
        assert by_batch.get(batch_id, 0) == min(round(0.9 * photos), parents), batch_id
    assert sum(by_batch.values()) > 10
    with pytest.raises(ValueError, match="synthetic_share"):
        build_demo_landing(tmp_path / "bad", synthetic_share=1.5, **SMALL)


def test_the_synthetic_photos_do_not_change_the_rest_of_a_build(built, tmp_path):
    none = build_demo_landing(tmp_path / "none", synthetic_share=0.0, **SMALL)
    for batch_id in BATCH_IDS:
        for name in (*DATA_FILES, "photos"):
            a, b = manifest(none, batch_id), manifest(built, batch_id)
            assert {k: v for k, v in a["files"].items() if not k.startswith("synthetic")} == {
                k: v for k, v in b["files"].items() if not k.startswith("synthetic")
            }, name
    assert none.chat_truth.equals(built.chat_truth)
