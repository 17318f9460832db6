"""Which landed sources carry personal data, and what of a rejected record may leave bronze."""

import polars as pl

# Sources whose records hold names, e-mails or phone numbers as landed.
PERSONAL_SOURCES = ("repair_requests", "customers", "chat_transcripts")


def withhold_personal_records(quarantine: pl.DataFrame) -> pl.DataFrame:
    """Drop the record text of rejected personal records; bronze keeps the original.

    A quarantined row still names its batch, file, line and the sha256 of the original, which
    finds it in bronze, where raw personal data is allowed to stay.
    """
    return quarantine.with_columns(
        pl.when(pl.col("source").is_in(PERSONAL_SOURCES))
        .then(pl.lit(None, pl.String))
        .otherwise(pl.col("record"))
        .alias("record")
    )
