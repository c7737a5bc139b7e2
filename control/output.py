"""`--output json|tsv|table|yaml` and `--query` (JMESPath), as `az` prints them."""

from __future__ import annotations

import io
import json
from typing import Any

import jmespath
import yaml
from rich.console import Console
from rich.table import Table

FORMATS = ("json", "tsv", "table", "yaml")


def render(data: Any, *, output: str = "json", query: str | None = None) -> str:
    if query:
        data = jmespath.search(query, data)
    if output == "json":
        return json.dumps(data, indent=2, default=str)
    if output == "yaml":
        return yaml.safe_dump(data, sort_keys=False).rstrip()
    if output == "tsv":
        return _tsv(data)
    if output == "table":
        return _table(data)
    raise ValueError(f"--output: '{output}' must be one of {', '.join(FORMATS)}")


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _tsv(data: Any) -> str:
    if isinstance(data, list):
        return "\n".join(_tsv(row) for row in data)
    if isinstance(data, dict):
        return "\t".join(_scalar(v) for v in data.values() if not isinstance(v, dict | list))
    return _scalar(data)


def _table(data: Any) -> str:
    rows = data if isinstance(data, list) else [data]
    table = Table(show_header=True, header_style="bold")
    if rows and all(isinstance(r, dict) for r in rows):
        columns = [k for k, v in rows[0].items() if not isinstance(v, dict | list)]
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(_scalar(row.get(c)) for c in columns))
    else:
        table.add_column("value")
        for row in rows:
            table.add_row(_scalar(row))
    buffer = io.StringIO()
    Console(file=buffer, width=160, force_terminal=False).print(table)
    return buffer.getvalue().rstrip()
