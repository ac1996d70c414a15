"""The shape table: the shape list is its keys (written once), and every shape is drawn from primitives in
unit coordinates [-1, 1]^2."""

import numpy as np

from curation.world.shapes import SHAPE_PRIMITIVES, SHAPES, turn


def test_the_shape_list_is_the_tables_keys():
    assert SHAPES == tuple(SHAPE_PRIMITIVES) and len(set(SHAPES)) == len(SHAPES) >= 20


def test_every_shape_is_a_list_of_primitives_in_unit_coordinates():
    for name, primitives in SHAPE_PRIMITIVES.items():
        assert primitives, name
        for kind, points, width in primitives:
            pts = np.asarray(points, float)
            assert kind in ("fill", "hole", "line") and width >= 0, name
            assert pts.ndim == 2 and pts.shape[1] == 2, name
            assert np.isfinite(pts).all() and np.abs(pts).max() <= 1.5, name  # the heart's lobes reach 1.18


def test_turning_by_a_full_circle_is_the_identity():
    square = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    assert np.allclose(turn(square, 360.0), square)
    assert not np.allclose(turn(square, 30.0), square)
