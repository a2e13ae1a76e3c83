"""The columnar store: Hive-partitioned Parquet, atomic partitions, DuckDB views."""
from .duck import connect, view_sql, views_sql
from .layout import MARKER, Store, StoreError, check_name, write_parquet
from .schema import PARTITIONS, SCHEMAS, TABLES, activations_schema

__all__ = [
    "MARKER", "PARTITIONS", "SCHEMAS", "TABLES", "Store", "StoreError", "activations_schema",
    "check_name", "connect", "view_sql", "views_sql", "write_parquet",
]
from .read import layers_stored, read_layer, read_table  # noqa: E402
from .top import top_neurons, top_order  # noqa: E402

__all__ += ["layers_stored", "read_layer", "read_table", "top_neurons", "top_order"]
