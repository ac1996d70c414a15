"""The world's shape classes as drawing steps: silhouettes that differ at a glance.

At 64x64 a small ViT cannot tell polygons apart by their side count (a trial with such classes reached about
2x chance in seven minutes), so every class here is a distinct silhouette. SHAPES, the class list, is the
table's keys in order: the table is the one place a shape is named.
"""

from __future__ import annotations

import numpy as np

Primitive = tuple[str, np.ndarray, float]
"""A drawing step in unit coordinates [-1, 1]^2 (y down): ("fill" | "hole" | "line", points, width)."""


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 360.0,
         n: int = 40) -> np.ndarray:
    t = np.radians(np.linspace(a0, a1, n, endpoint=(a1 - a0) < 360))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=float)


def _poly(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=float)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    angles = np.radians(-90 + np.arange(2 * points) * 180 / points)
    radius = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], axis=1) / 16.5


def turn(points: np.ndarray, degrees: float) -> np.ndarray:
    """(n, 2) points rotated by `degrees` (clockwise on screen, y down); rendering turns masks with it."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return points @ np.array([[c, s], [-s, c]])


def _shape_table() -> dict[str, list[Primitive]]:
    """Every shape as drawing steps; silhouettes chosen to differ at a glance at 64x64."""
    plus = [("fill", _rect(-0.95, -0.3, 0.95, 0.3), 0), ("fill", _rect(-0.3, -0.95, 0.3, 0.95), 0)]
    return {
        "circle": [("fill", _arc(0, 0, 0.95, 0.95), 0)],
        "square": [("fill", _rect(-0.8, -0.8, 0.8, 0.8), 0)],
        "triangle": [("fill", _poly((0, -0.95), (0.95, 0.8), (-0.95, 0.8)), 0)],
        "star": [("fill", _star(5, 1.0, 0.42), 0)],
        "heart": [("fill", _heart(), 0)],
        "plus": plus,
        "cross": [(op, turn(pts, 45), w) for op, pts, w in plus],
        "crescent": [("fill", _arc(0, 0, 0.95, 0.95), 0), ("hole", _arc(0.42, -0.2, 0.8, 0.8), 0)],
        "ring": [("fill", _arc(0, 0, 0.95, 0.95), 0), ("hole", _arc(0, 0, 0.55, 0.55), 0)],
        "arrow": [("fill", _rect(-0.95, -0.22, 0.2, 0.22), 0),
                  ("fill", _poly((0.1, -0.75), (0.98, 0), (0.1, 0.75)), 0)],
        "diamond": [("fill", _poly((0, -1), (0.62, 0), (0, 1), (-0.62, 0)), 0)],
        "ellipse": [("fill", _arc(0, 0, 1.0, 0.5), 0)],
        "pillar": [("fill", _rect(-0.28, -1, 0.28, 1), 0)],
        "dome": [("fill", _arc(0, 0.45, 1.0, 1.1, 180, 360), 0)],
        "corner": [("fill", _poly((-0.8, -0.95), (-0.25, -0.95), (-0.25, 0.4), (0.8, 0.4),
                                  (0.8, 0.95), (-0.8, 0.95)), 0)],
        "mushroom": [("fill", _arc(0, 0.05, 1.0, 0.95, 180, 360), 0),
                     ("fill", _rect(-0.28, 0, 0.28, 0.95), 0)],
        "horseshoe": [("line", np.concatenate([_poly((-0.6, -0.95)), _arc(0, 0.2, 0.6, 0.6, 180, 0, 20),
                                               _poly((0.6, -0.95))]), 0.42)],
        "hourglass": [("fill", _poly((-0.8, -0.95), (0.8, -0.95), (0.1, 0), (0.8, 0.95), (-0.8, 0.95),
                                     (-0.1, 0)), 0)],
        "lightning": [("fill", _poly((0.2, -1), (-0.6, 0.15), (-0.05, 0.15), (-0.3, 1), (0.65, -0.25),
                                     (0.1, -0.25), (0.45, -1)), 0)],
        "chevron": [("fill", _poly((-0.95, -0.7), (0, 0.1), (0.95, -0.7), (0.95, 0.05), (0, 0.85),
                                   (-0.95, 0.05)), 0)],
        "frame": [("fill", _rect(-0.9, -0.9, 0.9, 0.9), 0), ("hole", _rect(-0.5, -0.5, 0.5, 0.5), 0)],
        "droplet": [("fill", np.concatenate([_poly((0, -1)), _arc(0, 0.35, 0.62, 0.62, -20, 200, 30)]), 0)],
        "flower": [("fill", _arc(0.52 * np.cos(a), 0.52 * np.sin(a), 0.42, 0.42), 0)
                   for a in np.radians(np.arange(5) * 72 - 90)] + [("fill", _arc(0, 0, 0.4, 0.4), 0)],
        "house": [("fill", _rect(-0.7, -0.05, 0.7, 0.95), 0),
                  ("fill", _poly((-1, 0), (0, -0.95), (1, 0)), 0)],
        "bone": [("fill", _rect(-0.65, -0.2, 0.65, 0.2), 0)]
        + [("fill", _arc(sx * 0.68, sy * 0.26, 0.3, 0.3), 0) for sx in (-1, 1) for sy in (-1, 1)],
        "tree": [("fill", _poly((0, -1), (0.8, 0.45), (-0.8, 0.45)), 0),
                 ("fill", _rect(-0.18, 0.4, 0.18, 1), 0)],
    }


SHAPE_PRIMITIVES: dict[str, list[Primitive]] = _shape_table()
"""Drawing steps of every shape. Trials dropped 'cloud' and 'fish' (mistaken for dome and ellipse)."""

SHAPES: tuple[str, ...] = tuple(SHAPE_PRIMITIVES)
"""Shape classes of the world (the zero-shot classes), each a distinct silhouette, in table order."""
