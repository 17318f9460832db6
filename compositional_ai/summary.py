"""The demo's summary: rows per layer and batch, quarantine reasons, and each model's figures."""

import json
from pathlib import Path

from compositional_ai.defect_detection.assets import DEFECT_MODEL
from compositional_ai.recommendation.assets import RECOMMENDER
from compositional_ai.repair_service.assets import REPAIR_MODEL
from compositional_ai.resources.model_registry import ModelRegistry
from compositional_ai.resources.warehouse import Warehouse
from compositional_ai.warehouse.lookups import table_exists

SCHEMAS = (
    "bronze",
    "silver",
    "gold",
    "repair",
    "chatbot",
    "feedback",
    "defect_detection",
    "recommendation",
)
# Deitsch et al. 2019, the elpv dataset's paper: a CNN's average accuracy on the 25 % holdout.
PAPER_CNN_ACCURACY = 0.8842
MODELS = (REPAIR_MODEL, DEFECT_MODEL, RECOMMENDER)

TABLES_SQL = (
    "select table_schema, table_name from information_schema.tables "
    "where table_schema in (select unnest($schemas)) order by table_schema, table_name"
)


def table_counts(warehouse: Warehouse) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Row counts of every table, and per batch for the tables that have a batch column."""
    totals, by_batch = {}, {}
    with warehouse.connect("summary") as con:
        tables = con.execute(TABLES_SQL, {"schemas": list(SCHEMAS)}).fetchall()
        for schema, table in tables:
            name = f"{schema}.{table}"
            quoted = f'"{schema}"."{table}"'
            # Table names come from information_schema, not from input.
            totals[name] = con.execute(f"select count(*) from {quoted}").fetchone()[0]
            columns = {row[0] for row in con.execute(f"describe {quoted}").fetchall()}
            if "batch" in columns:
                rows = con.execute(
                    f"select batch, count(*) from {quoted} group by batch order by batch"
                ).fetchall()
                by_batch[name] = {batch: count for batch, count in rows}
    return totals, by_batch


def quarantine_counts(warehouse: Warehouse) -> dict[str, int]:
    frame = warehouse.query(
        "select reason, sum(rows)::bigint as rows from gold.quarantine_summary "
        "group by reason order by reason",
        purpose="summary",
    )
    return dict(frame.iter_rows())


LABELS_SQL = (
    "select label_origin, count(*) as rows, count(*) filter (where confirmed) as confirmed "
    "from gold.damage_labels group by label_origin order by label_origin"
)
# Model and chatbot labels against the technician's label of the same request.
AGREEMENT_SQL = """
select l.label_origin, count(*) as compared,
       count(*) filter (where l.damage_level = t.damage_level) as agreeing
from gold.damage_labels l
join (select request_id, any_value(damage_level) as damage_level from gold.damage_labels
      where label_origin = 'technician' group by request_id) t using (request_id)
where l.label_origin in ('model', 'chatbot')
group by l.label_origin order by l.label_origin
"""


def label_figures(warehouse: Warehouse) -> dict:
    """Damage labels by origin (how many, how many confirmed) and how often model and chatbot
    labels agree with the technician; empty before gold.damage_labels exists."""
    if not table_exists(warehouse, "gold", "damage_labels"):
        return {}
    by_origin = {
        origin: {"rows": rows, "confirmed": confirmed}
        for origin, rows, confirmed in warehouse.query(LABELS_SQL, purpose="summary").iter_rows()
    }
    agreement = {
        origin: {
            "compared": compared,
            "agreeing": agreeing,
            "agreement": round(agreeing / compared, 4) if compared else None,
        }
        for origin, compared, agreeing in warehouse.query(
            AGREEMENT_SQL, purpose="summary"
        ).iter_rows()
    }
    return {"by_origin": by_origin, "agreement_with_technicians": agreement}


def model_figures(registry: ModelRegistry) -> dict:
    figures = {}
    for name in MODELS:
        versions = registry.versions(name)
        figures[name] = {
            "versions": [version.version for version in versions],
            "champion": next((v.version for v in versions if "champion" in v.aliases), None),
            "metrics": {v.version: v.metrics for v in versions},
        }
    return figures


def build_summary(warehouse: Warehouse, registry: ModelRegistry) -> dict:
    totals, by_batch = table_counts(warehouse)
    return {
        "tables": totals,
        "rows_by_batch": by_batch,
        "quarantine": quarantine_counts(warehouse),
        "labels": label_figures(warehouse),
        "models": model_figures(registry),
        "baselines": {"elpv_paper_cnn_accuracy": PAPER_CNN_ACCURACY},
    }


def write_summary(summary: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def render(summary: dict) -> str:
    """The summary as text for a person."""
    lines = ["Rows per table (and per batch):"]
    for name, rows in summary["tables"].items():
        per_batch = summary["rows_by_batch"].get(name)
        detail = ""
        if per_batch:
            detail = "  [" + ", ".join(f"{b}: {n}" for b, n in per_batch.items()) + "]"
        lines.append(f"  {name:<45} {rows:>7}{detail}")
    lines.append("Quarantined rows by reason:")
    for reason, rows in summary["quarantine"].items() or {"(none)": 0}.items():
        lines.append(f"  {reason:<45} {rows:>7}")
    labels = summary.get("labels") or {}
    if labels:
        lines.append("Damage labels by origin (only technician labels are confirmed):")
        agreement = labels.get("agreement_with_technicians", {})
        for origin, figures in labels["by_origin"].items():
            detail = ""
            if origin in agreement:
                detail = (
                    f"  agree with the technician on {_pct(agreement[origin]['agreement'])} of "
                    f"{agreement[origin]['compared']} labelled requests"
                )
            lines.append(
                f"  {origin:<12} {figures['rows']:>7} rows, {figures['confirmed']:>7} confirmed"
                + detail
            )
    lines.append(
        "Models (holdout = the fixed 25 % stratified elpv split; binary: defective = "
        "defect probability >= 0.5):"
    )
    for name, model in summary["models"].items():
        lines.append(f"  {name}: versions {model['versions']}, champion {model['champion']}")
        for version, metrics in model["metrics"].items():
            lines.append(f"    v{version}: " + _model_line(name, metrics))
    return "\n".join(lines)


def _model_line(name: str, metrics: dict) -> str:
    if name == RECOMMENDER:
        return (
            f"hit-rate@3 {_pct(metrics.get('hit_rate_at_3'))} vs popularity "
            f"{_pct(metrics.get('popularity_hit_rate_at_3'))}"
        )
    if name == DEFECT_MODEL:
        return (
            f"binary accuracy {_pct(metrics.get('binary_accuracy'))} (majority class "
            f"{_pct(metrics.get('majority_binary_accuracy'))}, elpv paper CNN "
            f"{_pct(PAPER_CNN_ACCURACY)})"
        )
    return (
        f"4-class accuracy {_pct(metrics.get('four_class_accuracy'))} (majority "
        f"{_pct(metrics.get('majority_four_class_accuracy'))}), binary accuracy "
        f"{_pct(metrics.get('binary_accuracy'))} (majority "
        f"{_pct(metrics.get('majority_binary_accuracy'))}, elpv paper CNN "
        f"{_pct(PAPER_CNN_ACCURACY)}), macro-F1 {metrics.get('macro_f1', float('nan')):.3f}"
    )
