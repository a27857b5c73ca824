"""Request validation against a model's MLflow signature: bad input gets a 422 naming the field."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from prefect_mlops.errors import brief

MAX_PROBLEMS = 20  # a 10,000-row request with one bad column should not answer 10,000 lines
_INTEGER = frozenset({"long", "integer"})
_FLOAT = frozenset({"double", "float"})
_DTYPES = {"long": "int64", "integer": "int32", "double": "float64", "float": "float32", "boolean": "bool"}


class RequestError(Exception):
    """A request the model cannot take; `problems` name each field (and row) and what is wrong."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        self.problems = problems[:MAX_PROBLEMS]
        super().__init__("; ".join(_say(p) for p in self.problems))


def _say(problem: dict[str, Any]) -> str:
    where = f"field {problem['field']!r}" if problem.get("field") else "request"
    row = f" (row {problem['row']})" if problem.get("row") is not None else ""
    return f"{where}{row}: {problem['problem']}"


@dataclass(frozen=True)
class Column:
    """One input column of a model's signature."""

    name: str
    kind: str  # MLflow's type name: long, double, string, boolean, datetime, ...
    required: bool = True


class InputSchema:
    """The columns a model takes, from its MLflow signature; turns JSON bodies into column lists.

    Example:
        ```python
        from prefect_mlops.serving.schema import Column, InputSchema, RequestError
        schema = InputSchema([Column("age", "long"), Column("plan", "string")])
        columns, rows = schema.parse({"records": [{"age": 3, "plan": "basic"}]})
        assert rows == 1 and columns == {"age": [3], "plan": ["basic"]}
        try:
            schema.parse({"records": [{"age": "old", "plan": "basic"}]})
        except RequestError as exc:
            assert exc.problems[0]["field"] == "age"
        ```
    """

    def __init__(self, columns: list[Column]) -> None:
        self.columns = columns
        self.names = [c.name for c in columns]
        self._by_name = {c.name: c for c in columns}

    @classmethod
    def from_signature(cls, signature: Any) -> InputSchema | None:
        """From an `mlflow.models.ModelSignature`; None when the model has no column-based signature."""
        inputs = getattr(signature, "inputs", None)
        if inputs is None or not getattr(inputs, "has_input_names", lambda: False)():
            return None
        return cls([Column(spec.name, getattr(spec.type, "name", str(spec.type)), bool(spec.required))
                    for spec in inputs.inputs])

    def parse(self, body: Any) -> tuple[dict[str, list[Any]], int]:
        """Columns (name -> values) and the row count of a request body, or `RequestError`.

        Takes `{"records": [{...}, ...]}`, `{"columns": {"name": [...], ...}}`, or MLflow's own
        `dataframe_records` / `dataframe_split` forms.
        """
        if not isinstance(body, dict):
            raise RequestError([{"field": None, "problem": f"expected a JSON object with 'records' or 'columns', "
                                                           f"got {type(body).__name__}"}])
        if "records" in body or "dataframe_records" in body:
            columns, rows = self._from_records(body.get("records", body.get("dataframe_records")))
        elif "columns" in body and isinstance(body["columns"], dict):
            columns, rows = self._from_columns(body["columns"])
        elif "dataframe_split" in body:
            columns, rows = self._from_split(body["dataframe_split"])
        else:
            raise RequestError([{"field": None, "problem": "expected 'records' (a list of objects) or 'columns' "
                                                           f"(an object of lists); got keys {brief(sorted(body))}"}])
        self._check(columns, rows)
        return columns, rows

    def _from_records(self, records: Any) -> tuple[dict[str, list[Any]], int]:
        if not isinstance(records, list) or not records:
            raise RequestError([{"field": "records", "problem": "expected a non-empty list of objects"}])
        problems: list[dict[str, Any]] = []
        unknown: set[str] = set()
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                problems.append({"field": "records", "row": index,
                                 "problem": f"expected an object, got {type(record).__name__}"})
            else:
                unknown.update(k for k in record if k not in self._by_name)
        if problems:
            raise RequestError(problems)
        self._reject_unknown(unknown)
        return {name: [record.get(name) for record in records] for name in self.names}, len(records)

    def _from_columns(self, given: dict[str, Any]) -> tuple[dict[str, list[Any]], int]:
        self._reject_unknown(set(given) - set(self._by_name))
        lengths = {name: len(v) for name, v in given.items() if isinstance(v, list)}
        not_lists = [name for name, v in given.items() if not isinstance(v, list)]
        if not_lists:
            raise RequestError([{"field": n, "problem": "expected a list of values"} for n in not_lists])
        if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise RequestError([{"field": "columns",
                                 "problem": f"every column needs the same, non-zero number of values; got {lengths}"}])
        rows = next(iter(lengths.values()))
        return {name: given.get(name, [None] * rows) for name in self.names}, rows

    def _from_split(self, split: Any) -> tuple[dict[str, list[Any]], int]:
        if not isinstance(split, dict) or not isinstance(split.get("columns"), list) \
                or not isinstance(split.get("data"), list):
            raise RequestError([{"field": "dataframe_split",
                                 "problem": "expected {'columns': [...], 'data': [[...]]}"}])
        names = split["columns"]
        bad = [i for i, row in enumerate(split["data"]) if not isinstance(row, list) or len(row) != len(names)]
        if bad:
            raise RequestError([{"field": "dataframe_split", "row": i,
                                 "problem": f"expected a list of {len(names)} values"} for i in bad])
        return self._from_columns({n: [row[i] for row in split["data"]] for i, n in enumerate(names)})

    def _reject_unknown(self, unknown: set[str]) -> None:
        if unknown:
            raise RequestError([{"field": name, "problem": f"not an input of the model; it takes "
                                                           f"{brief(self.names, 500)}"} for name in sorted(unknown)])

    def _check(self, columns: dict[str, list[Any]], rows: int) -> None:
        problems: list[dict[str, Any]] = []
        for column in self.columns:
            for row, value in enumerate(columns[column.name]):
                problem = _problem(column, value)
                if problem:
                    problems.append({"field": column.name, "row": row if rows > 1 else None, "problem": problem})
                    if len(problems) >= MAX_PROBLEMS:
                        raise RequestError(problems)
        if problems:
            raise RequestError(problems)

    def frame(self, columns: dict[str, list[Any]]) -> pd.DataFrame:
        """The model's input frame, with the signature's column types (nulls in integers become floats)."""
        frame = pd.DataFrame(columns, columns=self.names)
        for column in self.columns:
            dtype = _DTYPES.get(column.kind)
            if dtype and frame[column.name].dtype != dtype and not frame[column.name].isna().any():
                frame[column.name] = frame[column.name].astype(dtype)
        return frame


def _problem(column: Column, value: Any) -> str | None:
    """What is wrong with `value` for `column`, or None."""
    if value is None:
        return "is required (missing or null)" if column.required else None
    kind = column.kind
    if kind in _INTEGER:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float)
                                                                      and value.is_integer())):
            return f"expected an integer, got {brief(value)}"
    elif kind in _FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected a number, got {brief(value)}"
        if isinstance(value, float) and math.isinf(value):
            return f"expected a finite number, got {value}"
    elif kind == "string":
        if not isinstance(value, str):
            return f"expected a string, got {brief(value)}"
    elif kind == "boolean":
        if not isinstance(value, bool):
            return f"expected true or false, got {brief(value)}"
    elif kind == "datetime" and not isinstance(value, str):
        return f"expected an ISO-8601 date-time string, got {brief(value)}"
    return None
