"""Closed-loop lineage: which predictions became labels, which models learned from them, and
what those models predicted next.

Every training records the rows it consumed in `feedback.model_training_rows`, one partition per
model version, so the answer survives later rebuilds of the training sets. The view
`gold.prediction_lineage` joins predictions, labels and consumption in one place.
"""

import polars as pl

from compositional_ai.lib.tables import table_exists, write_frame
from compositional_ai.resources.warehouse import Warehouse

TRAINING_ROWS = ("feedback", "model_training_rows")
MODEL_KEY = "model_key"

TRAINING_ROWS_SCHEMA = {
    MODEL_KEY: pl.String,
    "model_name": pl.String,
    "model_version": pl.String,
    "request_id": pl.String,
    "label_origin": pl.String,
    "predicting_version": pl.String,
}


def model_key(model_name: str, version: str) -> str:
    return f"{model_name}@{version}"


def training_rows(
    training_set: pl.DataFrame, model_name: str, version: str, *, default_origin: str
) -> pl.DataFrame:
    """The consumption record of one training: each request it learned from, and how."""
    origin = (
        pl.col("label_origin") if "label_origin" in training_set.columns else pl.lit(default_origin)
    )
    predicting = (
        pl.col("model_version")
        if "model_version" in training_set.columns
        else pl.lit(None, pl.String)
    )
    return (
        training_set.filter(pl.col("request_id").is_not_null())
        .select(
            pl.lit(model_key(model_name, version)).alias(MODEL_KEY),
            pl.lit(model_name).alias("model_name"),
            pl.lit(version).alias("model_version"),
            "request_id",
            origin.alias("label_origin"),
            predicting.alias("predicting_version"),
        )
        .cast(TRAINING_ROWS_SCHEMA)
    )


def record_training(
    warehouse: Warehouse,
    training_set: pl.DataFrame,
    model_name: str,
    version: str,
    *,
    default_origin: str = "technician",
) -> int:
    """Write the rows a model version trained on; a version is written once and never changes."""
    rows = training_rows(training_set, model_name, version, default_origin=default_origin)
    with warehouse.connect(f"record training rows of {model_key(model_name, version)}") as con:
        write_frame(
            con,
            *TRAINING_ROWS,
            rows,
            partition_column=MODEL_KEY,
            partition_values=[model_key(model_name, version)],
        )
    return rows.height


PREDICTION_SOURCES = (("repair", "repair_inference_log"), ("repair", "served_inference_log"))

# One row per prediction and (if any) per model version that learned from it. Columns:
# predicted_by / predicted_by_version, the prediction; confirmed_level, the technician's label
# where one exists; label_origin, how the prediction entered a training set (technician = its
# confirmed label, model = its own prediction as a self-label, chatbot = what the customer
# reported, synthetic = a synthetic photo made from its photo, carrying its technician label);
# consumed_by / consumed_by_version, the model that learned from it; later_predictions, how many
# predictions that version made.
VIEW_SQL = """
create or replace view gold.prediction_lineage as
with predictions as ({predictions}),
confirmed as ({confirmed}),
consumed as (
    select request_id, model_name as consumed_by, model_version as consumed_by_version,
           label_origin
    from feedback.model_training_rows
),
later as (
    select model_name, model_version, count(*) as later_predictions
    from predictions group by model_name, model_version
)
select p.model_name as predicted_by, p.model_version as predicted_by_version, p.request_id,
       p.batch, p.source, p.predicted_level, p.confidence, c.confirmed_level,
       k.label_origin, k.consumed_by, k.consumed_by_version,
       coalesce(l.later_predictions, 0) as later_predictions
from predictions p
left join confirmed c using (request_id)
left join consumed k using (request_id)
left join later l on l.model_name = k.consumed_by and l.model_version = k.consumed_by_version
"""

PREDICTION_COLUMNS = (
    "request_id, batch, source, model_name, model_version, predicted_level, confidence"
)


def create_lineage_view(warehouse: Warehouse) -> None:
    """(Re)create gold.prediction_lineage over whichever inference logs exist."""
    with warehouse.connect("create gold.prediction_lineage") as con:
        # Identifiers below come from the constants above, never from data.
        sources = [
            f'select {PREDICTION_COLUMNS} from "{schema}"."{table}" where status = \'ok\''
            for schema, table in PREDICTION_SOURCES
            if table_exists(con, schema, table)
        ]
        confirmed = [
            "select request_id, damage_level as confirmed_level from gold.confirmed_labels"
        ]
        if table_exists(con, "repair", "served_outcomes"):
            confirmed.append(
                "select request_id, damage_level as confirmed_level from repair.served_outcomes "
                "where status = 'ok' and quote_accepted and damage_level is not null"
            )
        con.execute("create schema if not exists gold")
        con.execute(
            VIEW_SQL.format(
                predictions=" union all ".join(sources), confirmed=" union all ".join(confirmed)
            )
        )


def lineage_of(warehouse: Warehouse, model_name: str, version: str) -> dict:
    """The closed loop of one model version, as figures a person can read.

    The view is made again first: one made before the service's first segment was ingested
    would not read the served inference log or outcomes.
    """
    create_lineage_view(warehouse)
    params = {"model": model_name, "version": version}
    predictions = warehouse.query(
        "select source, batch, count(distinct request_id) as n from gold.prediction_lineage "
        "where predicted_by = $model and predicted_by_version = $version "
        "group by source, batch order by batch",
        params,
        purpose="lineage",
    )
    labels = warehouse.query(
        "select count(distinct request_id) filter (where confirmed_level is not null) "
        "as confirmed, count(distinct request_id) filter (where confirmed_level is not null "
        "and confirmed_level = predicted_level) as confirmed_correct, "
        "count(distinct request_id) filter (where label_origin = 'model') as self_labelled "
        "from gold.prediction_lineage where predicted_by = $model "
        "and predicted_by_version = $version",
        params,
        purpose="lineage",
    )
    consumers = warehouse.query(
        "select consumed_by, consumed_by_version, label_origin, count(distinct request_id) as n, "
        "max(later_predictions) as later_predictions from gold.prediction_lineage "
        "where predicted_by = $model and predicted_by_version = $version "
        "and consumed_by is not null group by all order by all",
        params,
        purpose="lineage",
    )
    return {
        "predictions": predictions.to_dicts(),
        "labels": labels.to_dicts()[0],
        "consumers": consumers.to_dicts(),
    }
