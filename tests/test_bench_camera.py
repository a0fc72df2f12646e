"""bench/segment_camera.py (issue 26): the camera model's counts have the mean and variance it states, the grid marks
its rows, and the classical pipelines run on raw counts."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.segment_camera import CLASSICAL, GAIN, OFFSET, READ_NOISE, camera, classical, points


def test_camera_counts():
    "A flat scene at the brightest level: mean GAIN·photons + OFFSET, variance GAIN²·(photons + READ_NOISE²)."
    scene = np.zeros((200, 200))
    scene[:100] = 1.0                         # the top half at the brightest level, the bottom half dark
    counts = camera(scene, 50, 1.0, seed=3).astype(np.float64)
    top, bottom = counts[:100], counts[100:]
    assert camera(scene, 50, 1.0, 3).dtype == np.uint16
    assert abs(top.mean() - (GAIN * 50 + OFFSET)) < 1 and abs(bottom.mean() - OFFSET) < 0.5
    assert abs(top.var() / (GAIN ** 2 * (50 + READ_NOISE ** 2)) - 1) < 0.1
    assert np.array_equal(camera(scene, 50, 1.0, 3), camera(scene, 50, 1.0, 3))


def test_camera_falloff():
    "Fall-off 0.3: the corners get 30 % of the centre's photons."
    scene = np.ones((101, 101))
    scene[0, 0] = 0                           # the scene spans 0–1
    counts = camera(scene, 400, 0.3, seed=0).astype(np.float64) - OFFSET
    centre, corner = counts[45:56, 45:56].mean(), counts[:6, :6].mean()
    assert abs(corner / centre - 0.33) < 0.06


def test_grid_and_classical():
    "Tuning rows (seed 0) and reported rows (seed 1, the real frames) are apart; each pipeline gives a mask per frame."
    grid = points(None, False)
    assert {r for *_, r in grid} == {'tuning', 'reported'}
    assert all((seed == 0) == (role == 'tuning') for _, p, _, seed, role in grid if p is not None)
    rng = np.random.default_rng(0)
    frames = (OFFSET + GAIN * rng.poisson(5 + 20 * (np.hypot(*np.mgrid[-32:32, -32:32]) < 10), (2, 64, 64)))
    for method in CLASSICAL:
        fg = classical(method, frames.astype(np.uint16))
        assert fg.shape == (2, 64, 64) and fg.dtype == bool and 0 < fg[:, 32, 32].sum()
