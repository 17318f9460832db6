"""The landing-batch partitions shared by every per-batch asset."""

from dagster import DynamicPartitionsDefinition

landing_batches = DynamicPartitionsDefinition(name="landing_batch")

# The column that holds the partition key in every per-batch table.
BATCH_COLUMN = "batch"
