"""Issue 27, segmentation side: the results grid's probability row in the binary row's polarity, `segment.evaluate` on
arrays, large images held in memory trained on as crops, and progress over the tiles of a large image."""
import numpy as np
import pytest

from capseg import seg_train


def test_grid_probability_matches_binary(monkeypatch):
    "A network that took the background (`flip`): the probability row shows the shape's probability, as `binary` does."
    yy, xx = np.mgrid[:32, :32]
    shape = np.hypot(yy - 16, xx - 16) < 8
    p = np.where(shape, 0.1, 0.9).astype(np.float32)              # p > 0.5 on the background
    shown = {}
    monkeypatch.setattr(seg_train, 'image_grid', lambda rows, path, **kw: shown.update(rows))
    for flip, region in ((True, shape), (False, ~shape)):
        seg_train._grid(dict(image=[p], p=[p], mask=[shape]), flip, None, 'test')
        assert np.array_equal(shown['binary'][0], region)
        assert np.array_equal(shown['probability'][0] > 0.5, region), 'bright where the binary row is white'
        np.testing.assert_allclose(shown['probability'][0], np.where(region, 0.9, 0.1), rtol=1e-6)
