"""GX's verdicts for the standard expectations, without importing Great Expectations.

Importing GX takes about 2.4 s, more than validating 100k rows. When every expectation of a suite is
one `learn_suite` writes (row count, column exists, type checks, not null, between, in set, value
lengths, a timestamp's min and max) with plain arguments, and the Arrow push-down computes all their
metrics, the verdicts and result dicts are made here with GX 1.x's own rules, transcribed:

- map expectations (`ColumnMapExpectation._validate`, `ExpectColumnValuesToNotBeNull._validate`,
  `_mostly_success`, `_format_map_output` in the SUMMARY format);
- aggregate bounds (`BatchExpectation._validate_metric_value_between`);
- type checks on a pandas dtype (`_validate_pandas` of the type-list and of-type expectations);
- `ExpectColumnToExist._validate`.

Anything else, an argument GX might read differently, or any error here, and the whole suite is
judged by GX as before (`_gx_arrow`). `bench/gx_equivalence.py` and `tests/tasks/test_validate_native.py`
compare these results with GX's, result dict for result dict.
"""

from __future__ import annotations

import datetime
import math
import re
from collections import Counter
from typing import Any

PARTIAL = 20  # GX's partial_unexpected_count in the SUMMARY result format

_MAP_METRIC = {
    "expect_column_values_to_not_be_null": "column_values.nonnull",
    "expect_column_values_to_be_between": "column_values.between",
    "expect_column_values_to_be_in_set": "column_values.in_set",
    "expect_column_value_lengths_to_be_between": "column_values.value_length.between",
    "expect_column_values_to_be_in_type_list": "column_values.in_type_list",
    "expect_column_values_to_be_of_type": "column_values.of_type",
}
_AGGREGATE = {"expect_table_row_count_to_be_between": "table.row_count",
              "expect_column_min_to_be_between": "column.min", "expect_column_max_to_be_between": "column.max"}
_KEYS = {"type", "kwargs", "meta", "id"}  # an expectation's keys read here; any other and GX reads the suite
_SUITE_KEYS = {"name", "expectations", "meta", "id", "notes", "suite_parameters"}


class Configuration:
    """An expectation's type, arguments and meta: what the engine and the validation table read of GX's."""

    __slots__ = ("kwargs", "meta", "type")

    def __init__(self, kind: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> None:
        self.type, self.kwargs, self.meta = kind, kwargs, meta


class Result:
    """GX's `ExpectationValidationResult`, as far as the engine and the validation table read it."""

    __slots__ = ("exception_info", "expectation_config", "result", "success")

    def __init__(self, success: bool, result: dict[str, Any], configuration: Configuration) -> None:
        self.success, self.result, self.expectation_config = success, result, configuration
        self.exception_info = {"raised_exception": False, "exception_traceback": None, "exception_message": None}


class Expectation:
    """One standard expectation, judged with GX's rules from the push-down's metrics."""

    def __init__(self, configuration: Configuration) -> None:
        self.configuration = configuration
        self.map_metric = _MAP_METRIC.get(configuration.type)

    def judge(self, metrics: dict[str, Any]) -> Result:
        kind, kwargs = self.configuration.type, self.configuration.kwargs
        if kind == "expect_column_to_exist":
            outcome: dict[str, Any] = {"success": kwargs["column"] in metrics["table.columns"]}
        elif kind in _AGGREGATE:
            outcome = _between(metrics.get(_AGGREGATE[kind]), kwargs)
        elif kind == "expect_column_values_to_not_be_null":
            outcome = _not_null(metrics, kwargs.get("mostly", 1.0))
        elif kind in ("expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type") \
                and "table.column_types" in metrics \
                and not _checks_values(kind, metrics["table.column_types"][0]["type"], kwargs):
            outcome = _dtype_check(kind, metrics["table.column_types"][0]["type"], kwargs)
        else:
            outcome = _column_map(metrics, self.map_metric, kwargs.get("mostly", 1.0))
        return Result(bool(outcome["success"]), outcome.get("result") or {}, self.configuration)


def expectations(suite_json: dict[str, Any]) -> list[Expectation] | None:
    """The suite's expectations judged here, or None when any of them is for GX to read and judge."""
    if not isinstance(suite_json, dict) or set(suite_json) - _SUITE_KEYS or suite_json.get("suite_parameters") \
            or not isinstance(suite_json.get("meta", {}), dict | None):
        return None
    found = suite_json.get("expectations")
    if not isinstance(found, list):
        return None
    out = []
    for item in found:
        if not isinstance(item, dict) or set(item) - _KEYS or not isinstance(item.get("type"), str) \
                or not isinstance(item.get("kwargs"), dict) or not isinstance(item.get("meta"), dict | None) \
                or not isinstance(item.get("id"), str | None) or not _plain_arguments(item["type"], item["kwargs"]):
            return None
        out.append(Expectation(Configuration(item["type"], _as_gx_reads(item["type"], item["kwargs"]),
                                             dict(item.get("meta") or {}))))
    return out


def _as_gx_reads(kind: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments as GX's models hold them: a values-between bound is a float (GX's `Comparable` tries float
    first), so an int64 column is compared in float64, as GX compares it."""
    out = dict(kwargs)
    if kind == "expect_column_values_to_be_between":
        for key in ("min_value", "max_value"):
            if out.get(key) is not None:
                out[key] = float(out[key])
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# A date and a time, as both GX's model (pydantic's datetime, after float and date fail) and `fromisoformat` read
# it. A date alone GX reads as a date (which a timestamp does not compare with), digits alone as a float.
_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?")


def _iso(value: Any) -> bool:
    if not isinstance(value, str) or not _ISO_DATETIME.fullmatch(value):
        return False
    try:
        datetime.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _plain_arguments(kind: Any, kwargs: dict[str, Any]) -> bool:
    """Whether GX would take these arguments as they are (so its verdict is the one computed here)."""
    column = kwargs.get("column")
    if kind == "expect_table_row_count_to_be_between":
        bounds = [kwargs.get("min_value"), kwargs.get("max_value")]
        return set(kwargs) <= {"min_value", "max_value", "strict_min", "strict_max"} \
            and all(b is None or (isinstance(b, int) and not isinstance(b, bool)) for b in bounds) \
            and any(b is not None for b in bounds) and _ordered(bounds) and _strict(kwargs)
    if not isinstance(column, str) or not column:
        return False
    if kind == "expect_column_to_exist":
        return set(kwargs) == {"column"}
    if kind in ("expect_column_min_to_be_between", "expect_column_max_to_be_between"):
        bounds = [kwargs.get("min_value"), kwargs.get("max_value")]
        return set(kwargs) <= {"column", "min_value", "max_value", "strict_min", "strict_max"} \
            and all(b is None or _iso(b) for b in bounds) and any(b is not None for b in bounds) and _strict(kwargs)
    mostly = kwargs.get("mostly", 1.0)
    if kind not in _MAP_METRIC or not _number(mostly) or not 0 <= mostly <= 1:
        return False
    rest = set(kwargs) - {"column", "mostly"}
    if kind == "expect_column_values_to_not_be_null":
        return not rest
    if kind == "expect_column_values_to_be_in_type_list":
        types = kwargs.get("type_list")
        return rest == {"type_list"} and isinstance(types, list) and all(isinstance(t, str) for t in types)
    if kind == "expect_column_values_to_be_of_type":
        return rest == {"type_"} and isinstance(kwargs["type_"], str)
    if kind == "expect_column_values_to_be_in_set":
        values = kwargs.get("value_set")
        return rest == {"value_set"} and isinstance(values, list) and bool(values) \
            and all(isinstance(v, str | bool) for v in values)
    bounds = [kwargs.get("min_value"), kwargs.get("max_value")]
    return rest <= {"min_value", "max_value", "strict_min", "strict_max"} \
        and all(b is None or _number(b) for b in bounds) and any(b is not None for b in bounds) \
        and _ordered(bounds) and _strict(kwargs)


def _ordered(bounds: list[Any]) -> bool:
    return None in bounds or bounds[0] <= bounds[1]


def _strict(kwargs: dict[str, Any]) -> bool:
    return all(isinstance(kwargs.get(k, False), bool) for k in ("strict_min", "strict_max"))


# ---------------------------------------------------------------------------------------------- GX's rules
def _between(value: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`BatchExpectation._validate_metric_value_between`, for int and ISO-string bounds."""
    import pandas as pd

    if value is None:
        return {"success": False, "result": {"observed_value": value}}
    if not isinstance(value, datetime.datetime) and pd.isnull(value):
        return {"success": False, "result": {"observed_value": None}}
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if isinstance(value, datetime.datetime):
        low = datetime.datetime.fromisoformat(low) if isinstance(low, str) else low
        high = datetime.datetime.fromisoformat(high) if isinstance(high, str) else high
    elif isinstance(low, str) or isinstance(high, str):
        raise TypeError("a string bound for a value that is not a timestamp: GX judges it")
    above = True if low is None else (value > low if kwargs.get("strict_min") else value >= low)
    below = True if high is None else (value < high if kwargs.get("strict_max") else value <= high)
    return {"success": bool(above and below), "result": {"observed_value": value}}


def _mostly_success(considered: int, unexpected: int, mostly: float) -> bool:
    return (float(considered) - float(unexpected)) / float(considered) >= mostly


def _not_null(metrics: dict[str, Any], mostly: float) -> dict[str, Any]:
    """`ExpectColumnValuesToNotBeNull._validate`: the share of all rows, no missing count."""
    total = metrics.get("table.row_count")
    unexpected = metrics.get("column_values.nonnull.unexpected_count")
    success = True if not total else (total - unexpected) / total >= mostly
    return _map_output(success, total, None, unexpected, metrics.get("column_values.nonnull.unexpected_values"),
                       metrics.get("column_values.nonnull.unexpected_index_list"))


def _column_map(metrics: dict[str, Any], metric: str, mostly: float) -> dict[str, Any]:
    """`ColumnMapExpectation._validate`: the share of the non-missing rows."""
    total = metrics.get("table.row_count")
    nulls = metrics.get("column_values.nonnull.unexpected_count")
    unexpected = metrics.get(f"{metric}.unexpected_count")
    if total is None or nulls is None:
        total = nonnull = 0
    else:
        nonnull = total - nulls
    success = True if unexpected is None or total == 0 or nonnull == 0 else \
        _mostly_success(nonnull, unexpected, mostly)
    return _map_output(success, total, nonnull, unexpected, metrics.get(f"{metric}.unexpected_values"),
                       metrics.get(f"{metric}.unexpected_index_list"))


def _map_output(success: bool, element_count: int | None, nonnull_count: int | None, unexpected_count: int | None,
                unexpected_list: list[Any] | None, unexpected_index_list: list[int] | None) -> dict[str, Any]:
    """`_format_map_output` in GX's SUMMARY result format (20 partial values)."""
    element_count = element_count or 0
    skip_missing = nonnull_count is None
    missing_count = None if skip_missing else element_count - nonnull_count
    missing_percent = total_percent = nonmissing_percent = None
    if unexpected_count is not None and element_count > 0:
        total_percent = unexpected_count / element_count * 100
        if not skip_missing:
            missing_percent = missing_count / element_count * 100
            nonmissing_percent = unexpected_count / nonnull_count * 100 if nonnull_count > 0 else None
        else:
            nonmissing_percent = total_percent
    result: dict[str, Any] = {"element_count": element_count, "unexpected_count": unexpected_count,
                              "unexpected_percent": nonmissing_percent}
    if unexpected_list is not None:
        result["partial_unexpected_list"] = unexpected_list[:PARTIAL]
    if not skip_missing:
        result.update(missing_count=missing_count, missing_percent=missing_percent,
                      unexpected_percent_total=total_percent, unexpected_percent_nonmissing=nonmissing_percent)
    if unexpected_list is not None:
        items = [tuple(item.values()) for item in unexpected_list] \
            if len(unexpected_list) and isinstance(unexpected_list[0], dict) else unexpected_list
        try:
            result["partial_unexpected_counts"] = [
                {"value": key, "count": value}
                for key, value in sorted(Counter(items).most_common(PARTIAL), key=lambda x: (-x[1], x[0]))]
        except TypeError:
            pass  # GX leaves the counts out when the values cannot be counted or sorted
    if unexpected_index_list is not None:
        result["partial_unexpected_index_list"] = unexpected_index_list[:PARTIAL]
    return {"success": success, "result": result}


def _checks_values(kind: str, dtype: Any, kwargs: dict[str, Any]) -> bool:
    """Whether GX checks each value's type (an object column) rather than the column's dtype."""
    if dtype.type.__name__ != "object_":
        return False
    if kind == "expect_column_values_to_be_in_type_list":
        return kwargs.get("type_list") is not None
    return kwargs.get("type_") not in ("object", "object_", "O", None)


def _native_types(name: str) -> tuple[type, ...] | None:
    """GX's `native_type_type_map`."""
    lowered = name.lower()
    return {"none": (type(None),), "bool": (bool,), "int": (int,), "long": (int,), "float": (float,),
            "bytes": (bytes,), "complex": (complex,), "str": (str,), "string_types": (str,), "list": (list,),
            "dict": (dict,)}.get(lowered)


def _dtype_check(kind: str, dtype: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`_validate_pandas` of `expect_column_values_to_be_in_type_list` and `..._to_be_of_type`."""
    import numpy as np
    import pandas as pd

    if kind == "expect_column_values_to_be_of_type":
        expected = kwargs.get("type_")
        if expected is None:
            success = True
        else:
            comp: list[Any] = []
            try:
                comp.append(np.dtype(expected).type)
            except TypeError:
                for home in (pd, pd.core.dtypes.dtypes):
                    found = getattr(home, expected, None)
                    if isinstance(found, type):
                        comp.append(found)
            comp.extend(_native_types(expected) or ())
            success = dtype.type in comp
        return {"success": success, "result": {"observed_value": dtype.type.__name__}}
    types = kwargs.get("type_list")
    if types is None:
        success = True
    else:
        comp = []
        for name in types:
            try:
                comp.append(np.dtype(name).type)
                comp.append(np.dtype(name))
            except TypeError:
                found = getattr(pd, name, None)
                if isinstance(found, type):
                    comp.append(found)
                    try:
                        if isinstance(found(), pd.core.dtypes.base.ExtensionDtype):
                            comp.append(found())
                    except TypeError:
                        pass
                found = getattr(pd.core.dtypes.dtypes, name, None)
                if isinstance(found, type):
                    comp.append(found)
            comp.extend(_native_types(name) or ())
        success = dtype in comp
    return {"success": success, "result": {"observed_value": dtype.type.__name__}}
