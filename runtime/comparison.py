"""One row type for every "does this host/graph/engine match the reference" check, and its report.

Three checks compare outputs against a reference within tolerances: the export's verification
(ONNX Runtime vs eager autograd), an engine's build parity (engine vs ONNX Runtime) and the
bundle self-test (any host vs the stored outputs). Each produces :class:`Comparison` rows
(what was compared, how it was measured, the worst value seen, the tolerance) gathered in a
:class:`ComparisonReport`, which says whether all passed and renders them as a text table, a
JSON-ready dict or a one-line summary. Numpy-free, torch-free.

Measures: ``max abs``, ``max rel`` and ``mismatches`` pass when ``worst <= tolerance``;
``agreement`` (a fraction) passes when ``worst >= tolerance``. A non-finite worst value (a shape
mismatch, NaN) fails; a row without a tolerance is reported, not gated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

HIGHER_IS_BETTER = frozenset({"agreement"})


@dataclass(frozen=True)
class Comparison:
    name: str
    """What was compared (an output name, or a phrase such as ``cam (given classes)``)."""
    measure: str
    """``max abs``, ``max rel``, ``mismatches`` or ``agreement`` (see the module docstring)."""
    worst: float
    tolerance: float | None
    """None: reported, not gated."""
    group: str = ""
    """Optional grouping of rows (the self-test's stage)."""

    @property
    def gated(self) -> bool:
        return self.tolerance is not None

    @property
    def passed(self) -> bool:
        if self.tolerance is None:
            return True
        if not math.isfinite(self.worst):
            return False
        return self.worst >= self.tolerance if self.measure in HIGHER_IS_BETTER else self.worst <= self.tolerance

    @property
    def result(self) -> str:
        return "info" if not self.gated else "ok" if self.passed else "FAIL"

    def shown(self, value: float | None) -> str:
        """``value`` (the worst or the tolerance) as the table prints it, per measure."""
        if value is None:
            return "-"
        if not math.isfinite(value):
            return "inf (shape)" if value > 0 else "nan"
        if self.measure == "mismatches":
            return str(int(value))
        if self.measure == "agreement":
            return f"{100 * value:.1f}%"
        return f"{value:.2e}"

    def failure(self) -> str:
        """``name worst > tolerance`` (``<`` for agreement): the row in a one-line summary."""
        sign = "<" if self.measure in HIGHER_IS_BETTER else ">"
        return f"{self.name} {self.shown(self.worst)} {sign} {self.shown(self.tolerance)}"

    def to_dict(self, name_key: str = "name", group_key: str | None = None) -> dict[str, Any]:
        head = {group_key: self.group} if group_key else {}
        return {**head, name_key: self.name, "measure": self.measure,
                "worst": self.worst if math.isfinite(self.worst) else None,
                "tolerance": self.tolerance, "passed": self.passed}


class ComparisonReport:
    """The rows of one check. Subclasses are frozen dataclasses with a ``rows`` field placed among
    their own context fields (precision, seed, bundle...); they name the columns and extend
    :meth:`to_dict`."""

    rows: tuple[Comparison, ...]

    NAME_KEY: ClassVar[str] = "name"
    """The name column's header and JSON key (the self-test: ``output``)."""
    GROUP_KEY: ClassVar[str | None] = None
    """The group column's header and JSON key, if rows are grouped (the self-test: ``stage``)."""

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def failed(self) -> tuple[Comparison, ...]:
        return tuple(row for row in self.rows if not row.passed)

    def row(self, *key: str) -> Comparison:
        """The row named ``name`` (or ``group, name`` when rows are grouped)."""
        for row in self.rows:
            if (row.group, row.name) == tuple(key) or (len(key) == 1 and row.name == key[0]):
                return row
        raise KeyError(" ".join(key))

    def summary(self, label: str = "check") -> str:
        """One line: all passed, or the rows that failed with their values."""
        if self.passed:
            return f"{label}: all {len(self.rows)} checks passed"
        return f"{label} failed: " + "; ".join(row.failure() for row in self.failed)

    def table(self) -> str:
        """An aligned text table, one line per row (numbers right-aligned), after a header and a rule."""
        header = (*((self.GROUP_KEY,) if self.GROUP_KEY else ()), self.NAME_KEY, "measure", "worst", "tolerance",
                  "result")
        lines = [header] + [
            (*((r.group,) if self.GROUP_KEY else ()), r.name, r.measure, r.shown(r.worst), r.shown(r.tolerance),
             r.result)
            for r in self.rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        right = {len(header) - 3, len(header) - 2}
        text = ["  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                          for i, cell in enumerate(line)).rstrip() for line in lines]
        text.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(text)

    def rows_dicts(self) -> list[dict[str, Any]]:
        return [row.to_dict(self.NAME_KEY, self.GROUP_KEY) for row in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "rows": self.rows_dicts()}
