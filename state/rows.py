"""Named rows: each kind of row the job hands between operators or keeps in state is a
NamedTuple, the one place its fields are named and ordered. Its Flink type is built from
those names (:func:`row_type`), an operator reads a row with ``Kind._make(row)`` (which
fails on a row of another length instead of shifting fields), and writes one with
:func:`to_row`.

>>> from typing import NamedTuple
>>> from pyflink.common import Types
>>> class Point(NamedTuple):
...     x: int
...     y: int
>>> row_type(Point, [Types.LONG(), Types.LONG()]).get_field_names()
['x', 'y']
>>> Point._make(to_row(Point(1, 2)))
Point(x=1, y=2)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pyflink.common import Row, Types
from pyflink.common.typeinfo import RowTypeInfo


def row_type(kind: type[NamedTuple], field_types: list[Any]) -> RowTypeInfo:
    """The Flink row type of ``kind``: its field names, in order, with ``field_types``."""
    names = list(kind._fields)
    if len(names) != len(field_types):
        raise TypeError(f"{kind.__name__} has {len(names)} fields, {len(field_types)} types")
    return Types.ROW_NAMED(names, field_types)


def to_row(record: NamedTuple) -> Row:
    """A Flink ``Row`` of ``record``'s fields, in order."""
    return Row(*record)
