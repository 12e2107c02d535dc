"""Shared by the crossfile tests: fixtures and helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

SHAPES = '''"""Shapes."""


def polygon_area(points):
    total = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        total += x0 * y1 - x1 * y0
    return abs(total) / 2


class Vector:
    def __init__(self, x, y):
        self.x, self.y = x, y
'''

REPORT = '''"""Reports."""
from . import shapes


def summary(points):
    """Area of the outline."""
    area = shapes.polygon_area(points)
    return f"area {area:.2f}"


def arrow(x, y):
    return shapes.Vector(x, y)
'''

UNITS = "from pkg.report import summary\n\nSCALE = 2\n"


def two_file_package(root: Path) -> Path:
    """A package whose report.py uses names defined in shapes.py: the smallest cross-file repository."""
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "shapes.py").write_text(SHAPES)
    (root / "report.py").write_text(REPORT)
    return root


@pytest.fixture
def repo(tmp_path) -> Path:
    """two_file_package plus what the readers must skip or count: a third module, Latin-1, a broken link, caches."""
    root = two_file_package(tmp_path / "pkg")
    (root / "units.py").write_text(UNITS)
    (root / "latin.py").write_bytes(b"NAME = '\xe9t\xe9'\n")  # Latin-1: not UTF-8
    (root / "gone.py").symlink_to(root / "missing.py")  # unreadable
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.py").write_text("junk = 1\n")
    return root
