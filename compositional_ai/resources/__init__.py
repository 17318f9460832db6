"""Dagster resources: the handles assets use to reach storage and services."""

from compositional_ai.resources.warehouse import Warehouse, WarehouseIOManager

__all__ = ["Warehouse", "WarehouseIOManager"]
