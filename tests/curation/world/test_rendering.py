"""Rendering puts each object where its truth says."""

import numpy as np

from curation.world.pool import WorldConfig
from curation.world.rendering import render
from curation.world.vocabulary import BACKGROUND_MEAN, COLOUR_RGB

CFG = WorldConfig(num_images=5000, seed=3)


def test_render_places_objects_where_the_truth_says():
    truth = {"background": "white", "relations": [],
             "objects": [{"shape": "circle", "colour": "red", "size": "medium", "texture": "solid",
                          "x": 0.3, "y": 0.7}]}
    img = render(truth, 64, np.random.default_rng(0)).astype(float)
    assert np.linalg.norm(img[45, 19] - COLOUR_RGB["red"]) < 40  # row = y, column = x
    assert np.linalg.norm(img[19, 45] - BACKGROUND_MEAN["white"]) < 40
