"""A small landing for the feedback-loop replay, shared by its in-process and HTTP tests."""

import hashlib
import io
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from PIL import Image

from compositional_ai.landing.formats import CATALOG_FILE
from compositional_ai.lib.tables import connect_warehouse, write_frame
from compositional_ai.settings import DataPaths

ARCHIVE, B1, B2, B3 = "2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"
CATALOG_CSV = (
    "product_id,product_line,title,list_price_usd,rating\n"
    "P0001,Solar,Mono panel 400 W,200.00,4.5\n"
    "P0002,Solar,Poly panel 300 W,1000,\n"
)
# A product the catalog does not sell: the service refuses the one request naming it.
UNSOLD_PRODUCT = "P9999"
UNSOLD_REQUEST = "r0201"
LEAKED_REQUEST = "r0100"


def _png(seed: int, level: int) -> bytes:
    # Brighter photos for higher levels, so the labels are learnable; the seed makes each unique.
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(40 + 60 * level, 20, (20, 20)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _sha(content: bytes) -> str:
    # Content addresses, as silver and the service compute them.
    return hashlib.sha256(content).hexdigest()


@pytest.fixture(scope="session")
def replay_landing():
    """An archive of 24 labels, 3 online batches of 8, a holdout of 8, two leaks, one bad form.

    Batch j's labels are confirmed in batch j + 1; the last batch stays unconfirmed. The archive
    carries a 25th label and batch 1 one request (r0100) whose photo is a holdout photo. Request
    r0201 of batch 2 names a product the catalog does not sell.
    """
    holdout_photos = [_png(900 + i, i % 4) for i in range(8)]
    holdout = pl.DataFrame(
        {
            "sha256": [_sha(content) for content in holdout_photos],
            "damage_level": [i % 4 for i in range(8)],
            "content": holdout_photos,
        }
    )
    leaked = holdout["sha256"][0]
    inspected = datetime(2026, 1, 6, 9, 30, tzinfo=UTC)
    requests, labels, photos = [], [], {}
    for batch_index, (batch, count, confirmed_in) in enumerate(
        [(ARCHIVE, 24, ARCHIVE), (B1, 8, B2), (B2, 8, B3), (B3, 8, None)]
    ):
        for i in range(count):
            seed = 100 * batch_index + i
            level = i % 4
            content = _png(seed, level)
            sha = _sha(content)
            photos[sha] = content
            if batch_index == 1 and i == 0:
                sha = leaked
            request_id = f"r{seed:04d}"
            if batch != ARCHIVE:
                requests.append(
                    {
                        "request_id": request_id,
                        "batch": batch,
                        "photo_sha256": sha,
                        "product_id": UNSOLD_PRODUCT
                        if request_id == UNSOLD_REQUEST
                        else f"P000{1 + i % 2}",
                        "name": f"name-{seed}",
                        "email": f"email-{seed}",
                        "phone": f"phone-{seed}",
                    }
                )
            if confirmed_in is not None:
                labels.append(
                    {
                        "request_id": request_id,
                        "request_batch": batch,
                        "confirmed_in_batch": confirmed_in,
                        "photo_sha256": sha,
                        "damage_level": level,
                        "technician_id": f"TECH-0{1 + i % 3}",
                        "cell_type": ("mono", "poly")[i % 2],
                        "inspected_at": inspected + timedelta(days=7 * batch_index, minutes=i),
                    }
                )
    labels.append(
        {
            "request_id": "r0999",
            "request_batch": ARCHIVE,
            "confirmed_in_batch": ARCHIVE,
            "photo_sha256": leaked,
            "damage_level": 0,
            "technician_id": "TECH-01",
            "cell_type": "mono",
            "inspected_at": inspected,
        }
    )
    photos[leaked] = holdout["content"][0]
    return {
        "labels": pl.DataFrame(labels),
        "requests": pl.DataFrame(requests),
        "holdout": holdout,
        "photos": pl.DataFrame({"sha256": list(photos), "content": list(photos.values())}),
    }


@pytest.fixture(scope="session")
def write_replay_inputs():
    """Write a landing (as `replay_landing` builds it) where the replay asset reads it: the
    warehouse tables and the product catalog."""

    def write(paths: DataPaths, landed: dict) -> None:
        labels, requests = landed["labels"], landed["requests"]
        tables = {
            ("gold", "confirmed_labels"): labels.with_columns(
                pl.lit("technician").alias("label_origin")
            ),
            ("repair", "repair_inference_log"): requests.select(
                "request_id",
                "batch",
                pl.col("photo_sha256").alias("input_sha256"),
                "product_id",
                pl.lit("ok").alias("status"),
                pl.lit("batch").alias("source"),
            ),
            ("silver", "repair_requests"): requests.select(
                "batch",
                "request_id",
                "product_id",
                pl.col("name").alias("name_pseudonym"),
                pl.col("email").alias("email_pseudonym"),
                pl.col("phone").alias("phone_pseudonym"),
            ),
            ("silver", "holdout_photos"): landed["holdout"],
            ("silver", "repair_photos"): landed["photos"],
        }
        with connect_warehouse(paths.warehouse, purpose="test: replay inputs") as con:
            for (schema, table), frame in tables.items():
                write_frame(con, schema, table, frame)
        paths.reference.mkdir(parents=True, exist_ok=True)
        (paths.reference / CATALOG_FILE).write_text(CATALOG_CSV)

    return write
