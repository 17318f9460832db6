"""P3: bronze -> silver -> gold on generated inference-log rows, polars against pandas.

The data: a seeded generator writes inference-log rows (INFERENCE_LOG_SCHEMA's columns, every
value as landed text) as one Parquet file per weekly landing batch of BATCH_ROWS rows, with
retried deliveries (the same request id again, seconds later) and a few faults of each kind.
Request ids carry their batch, so a retry is always in the same batch as its original.

The transforms, the same in both implementations:

- silver: type every column (timestamps must name their UTC offset), join the product catalog,
  validate (reasons in REASONS, first failing check wins), keep the latest delivery of each
  request; every other bronze row goes to the quarantine with its reason, so
  bronze rows = silver rows + quarantined rows;
- gold: weekly aggregates by product line (assessments, failures, predicted levels, mean
  confidence, quoted value, latency) and the quarantine by reason.

The polars pipeline builds silver one batch (partition) at a time, as the asset graph does, and
folds every silver partition into gold with a streaming aggregate, so its memory depends on the
size of a batch, not on how many batches the history holds. (A DuckDB aggregate over the same
Parquet files was as fast, but its own allocator added about 90 MiB to the peak RSS.) The pandas
implementation is the idiomatic one: read the whole history into one frame, transform it, group
it; it runs twice, with pandas 2's default object strings and with pyarrow strings.

    python -m benchmarks.p3_transforms                      # 1 M and 10 M rows
    python -m benchmarks.p3_transforms --rows 1000000       # one size only
"""

import argparse
import json
import math
import shutil
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.common import (
    Figure,
    Goal,
    MemoryCapExceeded,
    Result,
    available_memory_bytes,
    bench_env,
    emit,
    mib,
    positive_int,
    report_standalone,
    run_cli,
    run_measured,
    self_rss_bytes,
    work_folder,
    write_json,
)
from compositional_ai.repair_service.quotes import INSPECTION_FEE_USD, PARTS_SHARE_BY_LEVEL

MODULE = "benchmarks.p3_transforms"
# The columns of repair_service.assets.INFERENCE_LOG_SCHEMA (a test keeps them equal). Importing
# that module would load Dagster, MLflow and torch into the measured processes.
INFERENCE_LOG_COLUMNS = (
    "request_id",
    "batch",
    "source",
    "client_request_id",
    "status",
    "error",
    "model_name",
    "model_version",
    "input_sha256",
    "product_id",
    "predicted_level",
    "probabilities",
    "confidence",
    "quote_usd",
    "latency_ms",
    "inferred_at",
)
BATCH_ROWS = 250_000
SIZES = (1_000_000, 10_000_000)
SEED = 20260105
FIRST_WEEK = date(2026, 1, 5)
N_PRODUCTS = 600
PRODUCT_LINES = (
    "Solar panels",
    "Inverters",
    "Batteries",
    "Chargers",
    "Monitors",
    "Laptops",
    "Phones",
    "Tablets",
)
UNKNOWN_PRODUCT = "P9999"
MODEL_VERSIONS = ("1", "2", "3")
STATUSES = ("ok", "422", "503")
STATUS_WEIGHTS = (0.97, 0.02, 0.01)
ERRORS = {"422": "422 truncated_image: PNG data ends early", "503": "503 log_unavailable"}
OFFSET_HOURS = (0, 1, -5, 2, -8)
OFFSET_WEIGHTS = (0.35, 0.30, 0.20, 0.10, 0.05)
# Share of a batch's rows that are a second delivery of one of its requests.
RETRY_SHARE = 0.02
# Share of rows carrying each fault; a row carries at most one.
FAULTS = {
    "missing_request_id": 0.001,
    "naive_timestamp": 0.002,
    "garbled_timestamp": 0.001,
    "unknown_product": 0.002,
    "level_out_of_range": 0.002,
    "level_not_a_number": 0.001,
    "confidence_out_of_range": 0.001,
}
# Silver's rejection reasons, in the order the checks run.
REASONS = (
    "missing_request_id",
    "invalid_timestamp",
    "unknown_product",
    "invalid_level",
    "invalid_confidence",
    "invalid_probabilities",
    "duplicate_delivery",
)
# ISO 8601 with the UTC offset spelled out; a timestamp without one names no instant.
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?[+-]\d{2}:\d{2}$"
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%:z"
# Minutes east of UTC for every offset a timestamp can spell: hours up to 23, minutes up to 59.
OFFSET_MINUTES = {
    f"{sign}{hours:02d}:{minutes:02d}": (60 * hours + minutes) * (1 if sign == "+" else -1)
    for sign in "+-"
    for hours in range(24)
    for minutes in range(60)
}
LEVELS = len(PARTS_SHARE_BY_LEVEL)
GOLD_KEYS = ["week", "product_line"]
FLOAT_TOLERANCE = 1e-9


# The data.


def catalog_frame(seed: int = SEED) -> pl.DataFrame:
    """The product catalog the log joins to: id, product line and list price."""
    rng = np.random.default_rng([seed, 0])
    return pl.DataFrame(
        {
            "product_id": [f"P{number:04d}" for number in range(1, N_PRODUCTS + 1)],
            "product_line": rng.choice(PRODUCT_LINES, N_PRODUCTS),
            "list_price_usd": np.round(rng.lognormal(5.5, 0.8, N_PRODUCTS), 2),
        }
    )


def batch_key(index: int) -> str:
    """The landing-batch key (the ISO date of its week's Monday) of batch `index`."""
    return (FIRST_WEEK + timedelta(weeks=index)).isoformat()


def _offset_text(hours: np.ndarray) -> pl.Series:
    spelled = {h: f"{'-' if h < 0 else '+'}{abs(h):02d}:00" for h in OFFSET_HOURS}
    return pl.Series(hours).replace_strict(spelled, return_dtype=pl.String)


def _render_timestamps(utc: np.ndarray, hours: np.ndarray) -> pl.Series:
    local = pl.Series(utc + hours.astype("timedelta64[h]")).dt.strftime("%Y-%m-%dT%H:%M:%S%.6f")
    return local + _offset_text(hours)


def bronze_batch(index: int, rows: int, catalog: pl.DataFrame, *, seed: int = SEED) -> pl.DataFrame:
    """One landing batch of inference-log rows, every value as landed text, in landing order."""
    rng = np.random.default_rng([seed, index + 1])
    retries = int(rows * RETRY_SHARE)
    n = rows - retries
    week_start = np.datetime64(datetime.combine(FIRST_WEEK, datetime.min.time()), "us")
    week_start += np.timedelta64(7 * index, "D")
    # Two minutes short of the week's end, so a retry stays in the same week.
    micros = rng.integers(0, (7 * 86_400 - 120) * 1_000_000, n)
    utc = week_start + micros.astype("timedelta64[us]")
    hours = rng.choice(OFFSET_HOURS, n, p=OFFSET_WEIGHTS)
    status = rng.choice(STATUSES, n, p=STATUS_WEIGHTS)
    ok = status == "ok"
    proba = rng.gamma(0.6, size=(n, LEVELS))
    proba = np.round(proba / proba.sum(axis=1, keepdims=True), 4)
    level = proba.argmax(axis=1)
    product = rng.integers(0, N_PRODUCTS, n)
    price = catalog["list_price_usd"].to_numpy()[product]
    quote = np.round(INSPECTION_FEE_USD + np.asarray(PARTS_SHARE_BY_LEVEL)[level] * price, 2)
    blob = rng.bytes(32 * n)
    digests = pl.Series([blob[i * 32 : (i + 1) * 32] for i in range(n)]).bin.encode("hex")
    probabilities = pl.select(
        pl.format("[{},{},{},{}]", *[pl.lit(pl.Series(proba[:, j])) for j in range(LEVELS)])
    ).to_series()
    as_text = {
        "predicted_level": pl.Series(level).cast(pl.String),
        "probabilities": probabilities,
        "confidence": pl.Series(proba.max(axis=1)).cast(pl.String),
        "quote_usd": pl.Series(quote).cast(pl.String),
    }
    frame = pl.DataFrame(
        {
            "request_id": pl.Series([f"b{index:04d}-{k:07d}" for k in range(n)]),
            "batch": batch_key(index),
            "source": np.where(rng.random(n) < 0.3, "served", "batch"),
            "client_request_id": None,
            "status": status,
            "error": pl.Series(status).replace_strict(ERRORS, default=None),
            "model_name": "repair_damage_model",
            "model_version": rng.choice(MODEL_VERSIONS, n),
            "input_sha256": digests,
            "product_id": catalog["product_id"].gather(product),
            **{name: values.set(pl.Series(~ok), None) for name, values in as_text.items()},
            "latency_ms": pl.Series(np.round(rng.lognormal(1.5, 0.5, n), 3)).cast(pl.String),
            "inferred_at": _render_timestamps(utc, hours),
        },
        schema_overrides={"client_request_id": pl.String},
    )
    frame = _inject_faults(frame, rng)
    # Retried deliveries: the same request again, 1-60 s later, with its own latency.
    again = rng.choice(n, retries, replace=False)
    later = utc[again] + rng.integers(1_000_000, 60_000_000, retries).astype("timedelta64[us]")
    retried = frame[again].with_columns(
        inferred_at=_render_timestamps(later, hours[again]),
        latency_ms=pl.Series(np.round(rng.lognormal(1.5, 0.5, retries), 3)).cast(pl.String),
    )
    combined = pl.concat([frame, retried])
    return combined[rng.permutation(combined.height)].select(INFERENCE_LOG_COLUMNS)


def _inject_faults(frame: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    kinds = list(FAULTS)
    shares = np.array([FAULTS[kind] for kind in kinds])
    draw = rng.choice(len(kinds) + 1, frame.height, p=[*shares, 1 - shares.sum()])
    fault = pl.Series("fault", np.array([*kinds, ""])[draw])
    ok = pl.col("status") == "ok"
    return (
        frame.with_columns(fault)
        .with_columns(
            request_id=pl.when(pl.col("fault") == "missing_request_id")
            .then(pl.lit(""))
            .otherwise("request_id"),
            inferred_at=pl.when(pl.col("fault") == "naive_timestamp")
            .then(pl.col("inferred_at").str.slice(0, 26))
            .when(pl.col("fault") == "garbled_timestamp")
            .then(pl.lit("last tuesday"))
            .otherwise("inferred_at"),
            product_id=pl.when(pl.col("fault") == "unknown_product")
            .then(pl.lit(UNKNOWN_PRODUCT))
            .otherwise("product_id"),
            predicted_level=pl.when(ok & (pl.col("fault") == "level_out_of_range"))
            .then(pl.lit("7"))
            .when(ok & (pl.col("fault") == "level_not_a_number"))
            .then(pl.lit("two"))
            .otherwise("predicted_level"),
            confidence=pl.when(ok & (pl.col("fault") == "confidence_out_of_range"))
            .then(pl.lit("1.7"))
            .otherwise("confidence"),
        )
        .drop("fault")
    )


def write_bronze(root: Path, rows: int, *, seed: int = SEED, batch_rows: int = BATCH_ROWS) -> dict:
    """Write `rows` rows as bronze Parquet files of `batch_rows`; return what was written."""
    bronze = root / "bronze"
    bronze.mkdir(parents=True, exist_ok=True)
    catalog = catalog_frame(seed)
    catalog.write_parquet(root / "catalog.parquet")
    batches = []
    for index in range(math.ceil(rows / batch_rows)):
        size = min(batch_rows, rows - index * batch_rows)
        frame = bronze_batch(index, size, catalog, seed=seed)
        path = bronze / f"{batch_key(index)}.parquet"
        frame.write_parquet(path)
        batches.append(
            {
                "file": path.name,
                "rows": frame.height,
                "bytes_on_disk": path.stat().st_size,
                "bytes_in_memory": frame.estimated_size(),
            }
        )
    info = {"rows": rows, "seed": seed, "batch_rows": batch_rows, "batches": batches}
    write_json(root / "info.json", info)
    return info


def data_size(info: dict, batches: int) -> dict:
    """Rows and bytes (in memory as Arrow, and on disk) of the first `batches` batches."""
    chosen = info["batches"][:batches]
    return {
        "rows": sum(b["rows"] for b in chosen),
        "bytes_in_memory": sum(b["bytes_in_memory"] for b in chosen),
        "bytes_on_disk": sum(b["bytes_on_disk"] for b in chosen),
    }


# polars.


def silver_partition(bronze: pl.LazyFrame, catalog: pl.LazyFrame) -> pl.DataFrame:
    """Type, join, validate and deduplicate one batch; rows keep a `reason` (null = clean).

    Columns are typed in place (the landed text of `inferred_at` stays as `inferred_at_text`
    for the quarantine), so the batch is held once, not as text and values side by side.
    """
    ok = pl.col("status") == "ok"
    stamp = pl.col("inferred_at")
    probabilities = pl.col("probabilities")
    products = catalog.collect()
    typed = (
        bronze.with_row_index("line")
        .with_columns(
            stamp.alias("inferred_at_text"),
            pl.when(stamp.str.contains(TIMESTAMP_PATTERN))
            .then(utc_instant(stamp))
            .otherwise(None)
            .alias("inferred_at"),
            pl.col("predicted_level").cast(pl.Int64, strict=False),
            pl.col("confidence", "quote_usd", "latency_ms").cast(pl.Float64, strict=False),
            # One cast of the whole list column: half the time of casting element by element.
            probabilities.str.strip_chars("[]")
            .str.split(",")
            .cast(pl.List(pl.Float64), strict=False),
        )
        # A lookup, not a join: a join would gather every column of the batch into a copy.
        .with_columns(
            pl.col("product_id")
            .replace_strict(products["product_id"], products[column], default=None)
            .alias(column)
            for column in ("product_line", "list_price_usd")
        )
    )
    complete = (probabilities.list.len() == LEVELS) & ~probabilities.list.eval(
        pl.element().is_null()
    ).list.any()
    checked = typed.with_columns(
        reason=pl.when(pl.col("request_id").is_null() | (pl.col("request_id") == ""))
        .then(pl.lit("missing_request_id"))
        .when(pl.col("inferred_at").is_null())
        .then(pl.lit("invalid_timestamp"))
        .when(pl.col("product_line").is_null())
        .then(pl.lit("unknown_product"))
        .when(ok & ~pl.col("predicted_level").is_between(0, LEVELS - 1).fill_null(False))
        .then(pl.lit("invalid_level"))
        .when(ok & ~pl.col("confidence").is_between(0.0, 1.0).fill_null(False))
        .then(pl.lit("invalid_confidence"))
        .when(ok & ~complete.fill_null(False))
        .then(pl.lit("invalid_probabilities"))
        # One batch is held whole anyway, and the in-memory engine types it in about 80 % of
        # the streaming engine's CPU time.
    ).collect(engine="in-memory")
    return _superseded_deliveries(checked)


def utc_instant(stamp: pl.Expr) -> pl.Expr:
    """The UTC instant of a timestamp that matches TIMESTAMP_PATTERN; null where none exists.

    The same instants as `str.to_datetime(TIMESTAMP_FORMAT)` in two thirds of its time: the
    fixed-width date and time parse with the plain format, the fraction is read as an integer
    and the offset looked up, where `%.f%:z` costs a third of the batch's typing.
    """
    local = stamp.str.slice(0, 19).str.strptime(
        pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False
    )
    # The fraction's digits lie between the "." at 19 and the six characters of the offset.
    digits = stamp.str.slice(20, (stamp.str.len_bytes() - 26).clip(lower_bound=0))
    microseconds = digits.str.pad_end(6, "0").cast(pl.Int64, strict=False).fill_null(0)
    offset = stamp.str.slice(-6).replace_strict(OFFSET_MINUTES, default=None, return_dtype=pl.Int64)
    instant = local + pl.duration(microseconds=microseconds) - pl.duration(minutes=offset)
    return instant.dt.replace_time_zone("UTC")


def _superseded_deliveries(checked: pl.DataFrame) -> pl.DataFrame:
    """Mark every clean delivery but the latest of its request as a duplicate_delivery.

    A retry that fails a check does not displace its original. Only requests delivered more
    than once need the window, and a 64-bit hash of the ids finds them in a sixth of the
    window's time; a collision only adds rows to the exact window, it never drops one.
    """
    clean = pl.col("reason").is_null()
    repeated = checked.filter(pl.col("request_id").hash().is_duplicated())
    superseded = repeated.filter(
        clean
        & (pl.col("inferred_at") != pl.col("inferred_at").filter(clean).max().over("request_id"))
    )["line"]
    return checked.with_columns(
        reason=pl.when(pl.col("line").is_in(superseded.implode()))
        .then(pl.lit("duplicate_delivery"))
        .otherwise("reason")
    )


SILVER_COLUMNS = [
    "request_id",
    "batch",
    "source",
    "status",
    "error",
    "model_name",
    "model_version",
    "input_sha256",
    "product_id",
    "product_line",
    "list_price_usd",
    "predicted_level",
    "probabilities",
    "confidence",
    "quote_usd",
    "latency_ms",
    "inferred_at",
    pl.col("inferred_at").dt.truncate("1w").dt.date().alias("week"),
]
QUARANTINE_COLUMNS = [
    "batch",
    "line",
    "reason",
    "request_id",
    "product_id",
    pl.col("inferred_at_text").alias("inferred_at"),
]
# The pandas writer's default; polars' default (zstd) takes twice as long to write.
PARQUET_COMPRESSION = "snappy"


def gold_weekly(silver: pl.LazyFrame) -> pl.LazyFrame:
    """Weekly aggregates by product line over silver partitions."""
    return (
        silver.group_by(GOLD_KEYS)
        .agg(
            pl.len().alias("assessments"),
            (pl.col("status") == "ok").sum().alias("assessed"),
            (pl.col("status") != "ok").sum().alias("failed"),
            *[(pl.col("predicted_level") == v).sum().alias(f"level_{v}") for v in range(LEVELS)],
            pl.col("confidence").mean().alias("mean_confidence"),
            pl.col("quote_usd").sum().alias("quoted_usd"),
            pl.col("latency_ms").mean().alias("mean_latency_ms"),
            pl.col("latency_ms").max().alias("max_latency_ms"),
        )
        .sort(GOLD_KEYS)
    )


def gold_quarantine(quarantine: pl.LazyFrame) -> pl.LazyFrame:
    """Quarantined rows by reason, over every partition."""
    return (
        quarantine.group_by("reason")
        .agg(pl.len().alias("rows"), pl.col("batch").n_unique().alias("batches"))
        .sort("reason")
    )


def _silver_batch(path: Path, catalog: pl.LazyFrame, out: Path) -> tuple[int, int]:
    """Validate one bronze batch into its silver and quarantine files; (silver, quarantined)."""
    checked = silver_partition(pl.scan_parquet(path), catalog)
    rejected = pl.col("reason").is_not_null()
    # Streamed from the validated frame to the file, so the clean rows are never copied whole.
    checked.lazy().filter(~rejected).select(SILVER_COLUMNS).sink_parquet(
        out / "silver" / path.name, compression=PARQUET_COMPRESSION
    )
    checked.lazy().filter(rejected).select(QUARANTINE_COLUMNS).sink_parquet(
        out / "quarantine" / path.name, compression=PARQUET_COMPRESSION
    )
    quarantined = checked["reason"].is_not_null().sum()
    return checked.height - quarantined, quarantined


def run_polars(data: Path, out: Path, batches: int) -> dict:
    """Silver one batch (partition) at a time, gold as a streaming fold over the partitions."""
    # Read once: every batch looks its products up in the same few hundred rows.
    catalog = pl.read_parquet(data / "catalog.parquet").lazy()
    files = sorted((data / "bronze").glob("*.parquet"))[:batches]
    for folder in ("silver", "quarantine", "gold"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # One batch at a time: a second batch on a thread of its own gained 5-7 % on 2 cores for
    # 130 MiB more at the peak, since reading and writing Parquet already use both.
    counts = [_silver_batch(path, catalog, out) for path in files]
    steps = {"silver and write": time.perf_counter() - started}
    started = time.perf_counter()
    # Streaming aggregates over every partition: the state is one row per group, so memory
    # does not grow with the number of partitions.
    for name, build, folder in (
        ("weekly", gold_weekly, "silver"),
        ("quarantine", gold_quarantine, "quarantine"),
    ):
        sources = sorted((out / folder).glob("*.parquet"))
        build(pl.scan_parquet(sources)).sink_parquet(out / "gold" / f"{name}.parquet")
    steps["gold"] = time.perf_counter() - started
    return {
        "silver_rows": sum(kept for kept, _ in counts),
        "quarantined": sum(rejected for _, rejected in counts),
        "steps": steps,
    }


def profile_batch(data: Path, repeats: int = 3) -> dict[str, float]:
    """Seconds (best of `repeats`) of each polars step on one bronze batch, run one by one."""
    path = sorted((data / "bronze").glob("*.parquet"))[0]
    catalog = pl.read_parquet(data / "catalog.parquet")
    bronze = pl.read_parquet(path)
    stamp = pl.col("inferred_at")
    typed = bronze.with_columns(utc_instant(stamp))
    steps = {
        "read bronze Parquet": lambda: pl.read_parquet(path),
        "timestamp pattern check": lambda: bronze.select(stamp.str.contains(TIMESTAMP_PATTERN)),
        "timestamp parse": lambda: bronze.select(utc_instant(stamp)),
        "numeric casts": lambda: bronze.select(
            pl.col("predicted_level").cast(pl.Int64, strict=False),
            pl.col("confidence", "quote_usd", "latency_ms").cast(pl.Float64, strict=False),
        ),
        "probabilities parse": lambda: bronze.select(
            pl.col("probabilities")
            .str.strip_chars("[]")
            .str.split(",")
            .cast(pl.List(pl.Float64), strict=False)
        ),
        "catalog lookup": lambda: bronze.select(
            pl.col("product_id").replace_strict(
                catalog["product_id"], catalog["product_line"], default=None
            )
        ),
        "dedupe window": lambda: typed.select(pl.col("inferred_at").max().over("request_id")),
        "repeated requests by hash": lambda: bronze.select(
            pl.col("request_id").hash().is_duplicated()
        ),
        "whole silver partition": lambda: silver_partition(bronze.lazy(), catalog.lazy()),
    }
    silver = silver_partition(bronze.lazy(), catalog.lazy())
    target = data.parent / "profile-silver.parquet"
    steps["write silver Parquet"] = lambda: (
        silver.lazy()
        .filter(pl.col("reason").is_null())
        .select(SILVER_COLUMNS)
        .sink_parquet(target, compression=PARQUET_COMPRESSION)
    )
    timings = {}
    for name, step in steps.items():
        best = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - started)
        timings[name] = best
    target.unlink(missing_ok=True)
    return {"rows": bronze.height, "steps": timings}


# pandas.


def run_pandas(data: Path, out: Path, batches: int, *, arrow_strings: bool = False) -> dict:
    """The same transforms, the idiomatic pandas way: the whole history in one frame.

    `arrow_strings` reads text as pyarrow-backed strings (pandas 3's default) instead of
    Python objects (pandas 2's default).
    """
    import pandas as pd

    files = sorted((data / "bronze").glob("*.parquet"))[:batches]
    for folder in ("silver", "quarantine", "gold"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    backend = {"dtype_backend": "pyarrow"} if arrow_strings else {}
    catalog = pd.read_parquet(data / "catalog.parquet", **backend)
    df = pd.concat([pd.read_parquet(path, **backend) for path in files], ignore_index=True)
    df["line"] = df.groupby("batch").cumcount()

    df["inferred_at_text"] = df["inferred_at"]
    offset_named = df["inferred_at"].str.match(TIMESTAMP_PATTERN).fillna(False).astype(bool)
    df["inferred_at"] = pd.to_datetime(
        df["inferred_at"].where(offset_named), utc=True, errors="coerce", format="ISO8601"
    )
    for column in ("predicted_level", "confidence", "quote_usd", "latency_ms"):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    probabilities = df["probabilities"].str.strip("[]").str.split(",", expand=True)
    # As numpy floats: with pyarrow strings, to_numeric turns "x" into NaN, which an Arrow
    # array counts as a value (notna), unlike NA.
    probabilities = probabilities.apply(pd.to_numeric, errors="coerce").astype("float64")
    df = df.merge(catalog, on="product_id", how="left")

    def flag(condition) -> np.ndarray:
        return condition.fillna(False).to_numpy(dtype=bool)

    ok = flag(df["status"] == "ok")
    conditions = [
        flag(df["request_id"].isna() | (df["request_id"] == "")),
        flag(df["inferred_at"].isna()),
        flag(df["product_line"].isna()),
        ok & ~flag(df["predicted_level"].between(0, LEVELS - 1)),
        ok & ~flag(df["confidence"].between(0.0, 1.0)),
        ok & ~flag(probabilities.notna().sum(axis=1) == LEVELS),
    ]
    df["reason"] = np.select(conditions, REASONS[:-1], default=None)
    clean = df["reason"].isna()
    latest = df.loc[clean].groupby("request_id")["inferred_at"].transform("max")
    df.loc[clean & (df["inferred_at"] != latest.reindex(df.index)), "reason"] = "duplicate_delivery"

    kept = df["reason"].isna()
    silver = df.loc[kept, SILVER_COLUMNS[:-1]].copy()
    silver["probabilities"] = probabilities.loc[kept].to_numpy(dtype=float).tolist()
    day = silver["inferred_at"].dt.floor("D")
    silver["week"] = (day - pd.to_timedelta(day.dt.weekday, unit="D")).dt.date
    quarantine = df.loc[~kept, ["batch", "line", "reason", "request_id", "product_id"]].copy()
    quarantine["inferred_at"] = df.loc[~kept, "inferred_at_text"]
    silver.to_parquet(out / "silver" / "silver.parquet", index=False)
    quarantine.to_parquet(out / "quarantine" / "quarantine.parquet", index=False)

    silver["assessed"] = silver["status"] == "ok"
    silver["failed"] = silver["status"] != "ok"
    for value in range(LEVELS):
        silver[f"level_{value}"] = silver["predicted_level"] == value
    weekly = (
        silver.groupby(GOLD_KEYS)
        .agg(
            assessments=("request_id", "size"),
            assessed=("assessed", "sum"),
            failed=("failed", "sum"),
            **{f"level_{value}": (f"level_{value}", "sum") for value in range(LEVELS)},
            mean_confidence=("confidence", "mean"),
            quoted_usd=("quote_usd", "sum"),
            mean_latency_ms=("latency_ms", "mean"),
            max_latency_ms=("latency_ms", "max"),
        )
        .reset_index()
        .sort_values(GOLD_KEYS)
    )
    weekly.to_parquet(out / "gold" / "weekly.parquet", index=False)
    reasons = (
        quarantine.groupby("reason")
        .agg(rows=("reason", "size"), batches=("batch", "nunique"))
        .reset_index()
        .sort_values("reason")
    )
    reasons.to_parquet(out / "gold" / "quarantine.parquet", index=False)
    return {"silver_rows": int(len(silver)), "quarantined": int(len(quarantine))}


def run_pandas_arrow(data: Path, out: Path, batches: int) -> dict:
    """run_pandas with pyarrow-backed strings."""
    return run_pandas(data, out, batches, arrow_strings=True)


IMPLEMENTATIONS = {"polars": run_polars, "pandas": run_pandas, "pandas-arrow": run_pandas_arrow}


def gold_frames(out: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """An output's gold tables, typed alike whichever implementation wrote them."""
    weekly = (
        pl.read_parquet(out / "gold" / "weekly.parquet")
        .with_columns(
            pl.col("week").cast(pl.Date),
            pl.col(
                "assessments", "assessed", "failed", *[f"level_{v}" for v in range(LEVELS)]
            ).cast(pl.Int64),
        )
        .sort(GOLD_KEYS)
    )
    reasons = (
        pl.read_parquet(out / "gold" / "quarantine.parquet")
        .with_columns(pl.col("rows", "batches").cast(pl.Int64))
        .sort("reason")
    )
    return weekly, reasons


def gold_differences(left: Path, right: Path) -> list[str]:
    """Where two outputs' gold tables differ (empty when they agree)."""
    problems = []
    for name, a, b in zip(
        ("weekly", "quarantine"), gold_frames(left), gold_frames(right), strict=True
    ):
        if a.columns != b.columns or a.height != b.height:
            problems.append(
                f"{name}: shapes {a.shape} vs {b.shape}, columns {a.columns} vs {b.columns}"
            )
            continue
        for column in a.columns:
            x, y = a[column], b[column]
            if x.dtype.is_float():
                close = np.isclose(x.to_numpy(), y.to_numpy(), rtol=FLOAT_TOLERANCE, atol=0)
                if not close.all():
                    problems.append(f"{name}.{column}: {int((~close).sum())} values differ")
            elif not x.equals(y):
                problems.append(f"{name}.{column} differs")
    return problems


# Worker and driver.

PANDAS_VARIANTS = {"pandas-arrow": "pandas, pyarrow strings", "pandas": "pandas, object strings"}
# The machine is shared: a pandas run is not started when its peak RSS, projected from a
# smaller size, would pass the cap, and is stopped if it passes it or if the machine runs low.
MAX_CAP_BYTES = 16 * 1024**3
KEEP_FREE_BYTES = 4 * 1024**3
# polars' jemalloc: one arena instead of one per thread (a freed batch's pages are reused by the
# next batch whichever thread asks) and freed pages returned after a second instead of ten, so
# one batch's memory does not stay behind beside the next one's: 399 -> 350 MiB peak at 1 M
# rows. Returning them at once (dirty_decay_ms:0) kept 300 MiB but made every batch fault its
# ~250 MiB in anew: 13 s of system time at 10 M rows, 16.7 s in all instead of 9.4 s.
POLARS_ALLOCATOR = "narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0"
# What a process holds before its data: interpreter, pandas, pyarrow, numpy.
PANDAS_BASE_RSS_BYTES = 180 * 1024**2


def _worker(args: argparse.Namespace) -> None:
    if args.worker == "profile":
        emit(profile_batch(Path(args.data)))
        return
    started = time.perf_counter()
    counts = IMPLEMENTATIONS[args.worker](Path(args.data), Path(args.out), args.batches)
    emit({"work_s": time.perf_counter() - started, "rss_bytes": self_rss_bytes(), **counts})


def _generate(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    info = write_bronze(Path(args.generate), args.rows, seed=args.seed)
    emit({"generate_s": time.perf_counter() - started, "batches": len(info["batches"])})


def measure(
    implementation: str,
    data: Path,
    out: Path,
    batches: int,
    *,
    threads: int | None = None,
    rss_cap_bytes: int | None = None,
):
    """Run one implementation on the first `batches` batches in its own process."""
    shutil.rmtree(out, ignore_errors=True)
    settings = {"POLARS_MAX_THREADS": str(threads)} if threads else {}
    if implementation == "polars":
        settings["_RJEM_MALLOC_CONF"] = POLARS_ALLOCATOR
    env = bench_env(**settings)
    args = ["--worker", implementation, "--data", str(data), "--out", str(out)]
    return run_measured(
        MODULE,
        [*args, "--batches", str(batches)],
        env=env,
        timeout_s=3600,
        rss_cap_bytes=rss_cap_bytes,
    )


def run(sizes: tuple[int, ...] = SIZES, *, work: Path | None = None, keep: bool = False) -> Result:
    """Generate the log once, then time and measure every implementation at every size."""
    root = Path(tempfile.mkdtemp(prefix="cai-bench-p3-", dir=work))
    try:
        return _run(sizes, root)
    finally:
        if keep:
            print(f"P3 kept its generated data and outputs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _projected_rss(variant: str, rows: int, per_size: dict) -> int | None:
    """A pandas variant's peak RSS at `rows`, from its largest smaller run (it holds it all)."""
    smaller = [r for r in sorted(per_size) if variant in per_size[r]["runs"]]
    if not smaller:
        return None
    known = smaller[-1]
    peak = per_size[known]["runs"][variant].max_rss_bytes
    return int(PANDAS_BASE_RSS_BYTES + (peak - PANDAS_BASE_RSS_BYTES) * rows / known)


def _run(sizes: tuple[int, ...], root: Path) -> Result:
    data = root / "data"
    generated = run_measured(
        MODULE, ["--generate", str(data), "--rows", str(max(sizes)), "--seed", str(SEED)]
    )
    info = json.loads((data / "info.json").read_text())
    per_size: dict[int, dict] = {}
    for rows in sorted(sizes):
        batches = math.ceil(rows / BATCH_ROWS)
        out = {name: root / f"out-{name}-{rows}" for name in IMPLEMENTATIONS}
        runs = {"polars": measure("polars", data, out["polars"], batches)}
        if rows == min(sizes):
            runs["polars-1-thread"] = measure(
                "polars", data, root / f"out-polars-1-{rows}", batches, threads=1
            )
        skipped = {}
        first = per_size[min(per_size)] if per_size else None
        for variant in PANDAS_VARIANTS:
            leanest = _leanest_pandas(first) if first is not None else variant
            if variant != leanest:
                skipped[variant] = (
                    f"not run: it held more memory than {leanest} at {_label(min(per_size))}, "
                    "and each holds the whole history"
                )
                continue
            cap = min(MAX_CAP_BYTES, available_memory_bytes() - KEEP_FREE_BYTES)
            projected = _projected_rss(variant, rows, per_size)
            if projected is not None and projected > cap:
                skipped[variant] = (
                    f"not run: projected peak RSS {mib(projected):,.0f} MiB is over the "
                    f"{mib(cap):,.0f} MiB this shared machine can spare"
                )
                continue
            try:
                runs[variant] = measure(variant, data, out[variant], batches, rss_cap_bytes=cap)
            except MemoryCapExceeded as error:
                skipped[variant] = f"stopped: {error}"
        profile = None
        if rows == min(sizes):
            profile = run_measured(MODULE, ["--worker", "profile", "--data", str(data)]).report
        per_size[rows] = {
            "profile": profile,
            "size": data_size(info, batches),
            "runs": runs,
            "skipped": skipped,
            "differences": {
                variant: gold_differences(out["polars"], out[variant])
                for variant in PANDAS_VARIANTS
                if variant in runs
            },
        }
    return _result(sizes, per_size, generated)


def _label(rows: int) -> str:
    return f"{rows / 1e6:g}M rows"


def _leanest_pandas(entry: dict) -> str | None:
    """The pandas variant with the lowest peak RSS in a measured size."""
    measured = [v for v in PANDAS_VARIANTS if v in entry["runs"]]
    return min(measured, key=lambda v: entry["runs"][v].max_rss_bytes, default=None)


def _fastest_pandas(entry: dict) -> str | None:
    measured = [v for v in PANDAS_VARIANTS if v in entry["runs"]]
    return min(measured, key=lambda v: entry["runs"][v].report["work_s"], default=None)


def _size_figures(rows: int, entry: dict) -> list[Figure]:
    label, runs, size = _label(rows), entry["runs"], entry["size"]
    polars = runs["polars"]
    figures = [
        Figure(
            f"{label}: polars vs {PANDAS_VARIANTS[variant]}",
            polars.report["work_s"],
            "s",
            runs[variant].report["work_s"],
            variant,
        )
        for variant in PANDAS_VARIANTS
        if variant in runs
    ]
    figures += [
        Figure(f"{label}: {PANDAS_VARIANTS[variant]}", None, "s", note=reason)
        for variant, reason in entry["skipped"].items()
    ]
    if "polars-1-thread" in runs and _fastest_pandas(entry):
        figures.append(
            Figure(
                f"{label}: polars on 1 thread",
                runs["polars-1-thread"].report["work_s"],
                "s",
                runs[_fastest_pandas(entry)].report["work_s"],
                _fastest_pandas(entry),
            )
        )
    steps = polars.report.get("steps", {})
    figures += [
        Figure(f"{label}: polars step {step}", seconds, "s", note="inside the polars run")
        for step, seconds in steps.items()
    ]
    if entry.get("profile"):
        batch = f"{entry['profile']['rows']:,}-row batch"
        figures += [
            Figure(f"profile: {step}", seconds, "s", note=f"one {batch}, best of 3")
            for step, seconds in entry["profile"]["steps"].items()
        ]
    for name in ["polars", *[v for v in PANDAS_VARIANTS if v in runs]]:
        figures.append(
            Figure(
                f"{label}: {name} peak RSS",
                mib(runs[name].max_rss_bytes),
                "MiB",
                mib(size["bytes_in_memory"]),
                "bronze in memory",
            )
        )
    return figures


def _result(sizes: tuple[int, ...], per_size: dict, generated) -> Result:
    largest, smallest = max(sizes), min(sizes)
    figures, goals = [], []
    for rows in sorted(sizes):
        entry = per_size[rows]
        figures += _size_figures(rows, entry)
        polars = entry["runs"]["polars"]
        fastest = _fastest_pandas(entry)
        if fastest is not None:
            speedup = entry["runs"][fastest].report["work_s"] / polars.report["work_s"]
            goals.append(
                Goal(
                    f"{_label(rows)}: >= 10x faster than pandas",
                    speedup >= 10,
                    f"{speedup:.1f}x faster than {PANDAS_VARIANTS[fastest]}",
                )
            )
        share = polars.max_rss_bytes / entry["size"]["bytes_in_memory"]
        goals.append(
            Goal(
                f"{_label(rows)}: peak RSS <= 2x the data's size",
                share <= 2,
                f"{mib(polars.max_rss_bytes):,.0f} MiB = {share:.2f}x of "
                f"{mib(entry['size']['bytes_in_memory']):,.0f} MiB",
            )
        )
        for variant, problems in entry["differences"].items():
            goals.append(
                Goal(
                    f"{_label(rows)}: gold identical to {PANDAS_VARIANTS[variant]}",
                    not problems,
                    "; ".join(problems) or "identical",
                )
            )
    if len(sizes) > 1:
        growth = (
            per_size[largest]["runs"]["polars"].max_rss_bytes
            / per_size[smallest]["runs"]["polars"].max_rss_bytes
        )
        history = largest / smallest
        figures.append(
            Figure(
                f"polars peak RSS, {_label(largest)} / {_label(smallest)}",
                growth,
                "x",
                note=f"history x{history:g}",
            )
        )
        goals.append(
            Goal(
                "memory does not grow with history",
                growth <= 1.25,
                f"peak RSS x{growth:.2f} for x{history:g} the rows",
            )
        )
    big = per_size[largest]
    fastest = _fastest_pandas(big)
    headline = Figure(
        f"{_label(largest)} bronze->gold, polars",
        big["runs"]["polars"].report["work_s"],
        "s",
        big["runs"][fastest].report["work_s"] if fastest else None,
        PANDAS_VARIANTS[fastest] if fastest else "pandas not run",
    )
    return Result(
        key="P3",
        title="bronze -> silver -> gold on generated inference-log rows vs pandas",
        headline=headline,
        figures=figures,
        goals=goals,
        settings={
            "sizes": list(sizes),
            "batch_rows": BATCH_ROWS,
            "seed": SEED,
            "generate_s": generated.report.get("generate_s"),
            "data_size": "bronze rows' in-memory Arrow size (polars estimated_size)",
            "data": {str(rows): per_size[rows]["size"] for rows in sizes},
            "runs": {
                str(rows): {
                    name: {
                        "work_s": run.report["work_s"],
                        "wall_s": run.wall_s,
                        "max_rss_bytes": run.max_rss_bytes,
                        **{k: v for k, v in run.report.items() if k not in ("work_s", "rss_bytes")},
                    }
                    for name, run in per_size[rows]["runs"].items()
                }
                for rows in sizes
            },
            "skipped": {str(rows): per_size[rows]["skipped"] for rows in sizes},
            "work_s": "inside the worker, from the first read to the last gold file written",
            "polars_allocator": f"_RJEM_MALLOC_CONF={POLARS_ALLOCATOR}",
        },
    )


def row_counts(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated sizes, each a whole number of batches' rows."""
    sizes = tuple(positive_int(value.strip()) for value in text.split(",") if value.strip())
    if not sizes:
        raise argparse.ArgumentTypeError("name at least one size")
    # Each size reads the first batches of one generated log, so it must end on a batch.
    uneven = [size for size in sizes if size % BATCH_ROWS]
    if uneven:
        raise argparse.ArgumentTypeError(
            f"{', '.join(f'{size:,}' for size in uneven)} rows is not a whole number of batches "
            f"({BATCH_ROWS:,} rows each), the unit both sides work in"
        )
    return tuple(sorted(set(sizes)))


def main(argv: list[str] | None = None) -> None:
    """Run P3, or one of its workers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        type=row_counts,
        default=SIZES,
        help=f"sizes, comma separated, each at least one batch ({BATCH_ROWS:,} rows)",
    )
    parser.add_argument(
        "--work", type=work_folder, default=None, help="an existing folder for the generated data"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument(
        "--worker", choices=[*sorted(IMPLEMENTATIONS), "profile"], help=argparse.SUPPRESS
    )
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    if args.generate:
        args.rows = max(args.rows)
        _generate(args)
        return
    report_standalone(lambda: run(args.rows, work=args.work, keep=args.keep))


if __name__ == "__main__":
    run_cli(main)
