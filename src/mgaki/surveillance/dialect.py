"""The few SQL spellings that differ between DuckDB and Spark SQL.

Every surveillance stage is written once, in window functions and joins both
engines run; the handful of functions whose names differ go through here.
Times are compared as integer epoch seconds so RANGE frames work on both.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DUCKDB", "SPARK", "Dialect"]


@dataclass(frozen=True)
class Dialect:
    name: str
    epoch_tpl: str  # timestamp -> integer epoch seconds
    epoch_exact_tpl: str  # timestamp -> DOUBLE epoch seconds, microseconds kept (the study cohort's hours)
    from_epoch_tpl: str  # integer epoch seconds -> timestamp
    ffill_tpl: str  # last non-null value in the window frame
    bfill_tpl: str  # first non-null value in the window frame
    median_tpl: str
    string_type: str  # the type name CAST(... AS <string_type>) takes
    double_tpl: str  # a DOUBLE literal (Spark reads 3600.0 as DECIMAL)
    reverse_bfill: bool  # bfill_over as a reversed forward fill
    slope_tpl: str  # least-squares slope of {0} on {1}; NaN when every x is equal (DuckDB's answer)
    struct_tpl: str  # a struct of named fields ({} holds them, each spelt by struct_field_tpl); read as s.name
    struct_field_tpl: str  # one field of struct_tpl: {0} its name, {1} its value

    def epoch(self, col: str) -> str:
        return self.epoch_tpl.format(col)

    def epoch_exact(self, col: str) -> str:
        return self.epoch_exact_tpl.format(col)

    def from_epoch(self, col: str) -> str:
        return self.from_epoch_tpl.format(col)

    def ffill(self, col: str) -> str:
        return self.ffill_tpl.format(col)

    def bfill(self, col: str) -> str:
        return self.bfill_tpl.format(col)

    def bfill_over(self, col: str, partition: str, order: tuple[str, ...]) -> str:
        """Next non-null value at or after this row. Spark evaluates an UNBOUNDED FOLLOWING frame anew
        for every row (quadratic in the partition), so it runs as a forward fill in reverse order."""
        if self.reverse_bfill:
            desc = ", ".join(f"{c} DESC" for c in order)
            return (f"{self.ffill(col)} OVER (PARTITION BY {partition} ORDER BY {desc} "
                    "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)")
        return (f"{self.bfill(col)} OVER (PARTITION BY {partition} ORDER BY {', '.join(order)} "
                "ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING)")

    def median(self, col: str) -> str:
        return self.median_tpl.format(col)

    def slope(self, y: str, x: str) -> str:
        return self.slope_tpl.format(y, x)

    def struct(self, **fields: str) -> str:
        """A struct value of named fields (read back as ``col.name``): one window function carries them all."""
        return self.struct_tpl.format(", ".join(self.struct_field_tpl.format(k, v) for k, v in fields.items()))

    def double(self, x: float) -> str:
        return self.double_tpl.format(float(x))


DUCKDB = Dialect(
    name="duckdb",
    epoch_tpl="CAST(epoch({}) AS BIGINT)",
    epoch_exact_tpl="epoch({})",
    from_epoch_tpl="make_timestamp(CAST({} AS BIGINT) * 1000000)",
    ffill_tpl="last_value({} IGNORE NULLS)",
    bfill_tpl="first_value({} IGNORE NULLS)",
    median_tpl="median({})",
    string_type="VARCHAR",
    double_tpl="{}",
    reverse_bfill=False,
    slope_tpl="regr_slope({0}, {1})",
    struct_tpl="struct_pack({})",
    struct_field_tpl="{0} := {1}",
)

SPARK = Dialect(
    name="spark",
    epoch_tpl="CAST(unix_timestamp({}) AS BIGINT)",
    # DuckDB's epoch() is microseconds / 1e6 as DOUBLE; the same division here gives the same double
    epoch_exact_tpl="(CAST(unix_micros(CAST({} AS TIMESTAMP_LTZ)) AS DOUBLE) / 1000000.0D)",
    from_epoch_tpl="CAST(timestamp_seconds(CAST({} AS BIGINT)) AS TIMESTAMP_NTZ)",  # naive, like the inputs
    ffill_tpl="last({}, true)",
    bfill_tpl="first({}, true)",
    median_tpl="percentile({}, 0.5)",
    string_type="STRING",  # Spark's VARCHAR needs a length
    double_tpl="{}D",
    reverse_bfill=True,
    # Spark answers NULL where DuckDB answers NaN (zero variance of x); the outputs follow DuckDB
    slope_tpl="CASE WHEN regr_count({0}, {1}) > 0 AND regr_slope({0}, {1}) IS NULL THEN CAST('NaN' AS DOUBLE) "
              "ELSE regr_slope({0}, {1}) END",
    struct_tpl="named_struct({})",
    struct_field_tpl="'{0}', {1}",
)
