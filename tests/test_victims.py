"""The UAP chapters' shared set-up: image sets drawn from one seeded stream."""

from __future__ import annotations

import numpy as np

from helpers import data, victims
from helpers.scales import get_preset


def test_image_sets_are_seeded_distinct_and_capped():
    preset = get_preset("smoke")
    splits = {"pneumonia": data.load_for_scale("pneumonia", preset, source="synthetic")}
    sets = victims.uap_image_sets(splits, preset, seed=3)
    again = victims.uap_image_sets(splits, preset, seed=3, val=True)
    test = splits["pneumonia"]["test"]
    assert len(sets.attack["pneumonia"]) == min(
        preset.uap_images, len(splits["pneumonia"]["train"].distinct())
    )
    assert len(sets.test["pneumonia"]) == min(preset.eval_images, len(test))
    # the same draws with or without the validation images, which come last from the stream
    np.testing.assert_array_equal(sets.attack["pneumonia"], again.attack["pneumonia"])
    np.testing.assert_array_equal(sets.test["pneumonia"], again.test["pneumonia"])
    assert sets.val is None and len(again.val["pneumonia"]) == min(
        preset.eval_images, len(splits["pneumonia"]["val"])
    )
    # labels belong to the drawn test images
    order = np.random.default_rng(3)
    order.permutation(splits["pneumonia"]["train"].distinct())
    index = order.permutation(len(test))[: preset.eval_images]
    np.testing.assert_array_equal(sets.test_labels["pneumonia"], test.labels[index])
    other = victims.uap_image_sets(splits, preset, seed=4)
    assert not np.array_equal(other.attack["pneumonia"], sets.attack["pneumonia"])
