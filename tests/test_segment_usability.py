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


def frames(n: int, seed: int, side: int = 2) -> tuple[list, list]:
    "n 16-bit frames of (side·32)² noisy shapes and their label images."
    from capseg.seg_data import make_shapes_split
    ims, masks, _ = make_shapes_split(n * side * side, noise=0.5, size=32, seed=seed)
    tile = lambda a, k: np.block([[a[k + side * r + c] for c in range(side)] for r in range(side)])
    images = [np.clip(tile(ims, k) * 9000 + 20000, 0, 65535).astype(np.uint16) for k in range(0, len(ims), side * side)]
    labels = [tile(masks * np.arange(1, len(masks) + 1)[:, None, None], k).astype(np.uint16)
              for k in range(0, len(ims), side * side)]
    return images, labels


def same_metrics(a: dict, b: dict):
    "The scores of two evaluations agree (not their data source, model path or speed)."
    keys = {k for k in a if k.startswith(('test_', 'baseline_')) or k == 'n_test'}
    assert keys and keys == {k for k in b if k.startswith(('test_', 'baseline_')) or k == 'n_test'}
    for k in sorted(keys): assert a[k] == pytest.approx(b[k], abs=1e-9), k


def test_evaluate_arrays_as_files(tmp_path):
    "A model trained on files: its images and label masks as arrays score as the same files do."
    import tifffile
    from capseg import segment
    images, labels = frames(3, seed=5)
    (tmp_path / 'masks').mkdir()
    for k, (im, lab) in enumerate(zip(images, labels)):
        tifffile.imwrite(tmp_path / f'f{k}.tif', im); tifffile.imwrite(tmp_path / 'masks' / f'f{k}_mask.tif', lab)
    files = sorted(map(str, tmp_path.glob('f?.tif')))
    segment.train(images=files[:2], out=tmp_path / 'run', epochs=1, quiet=True, figures=False)
    on_files = segment.evaluate(model=tmp_path / 'run', images=files, masks=[tmp_path / 'masks'], out=tmp_path / 'ev1')
    on_arrays = segment.evaluate(model=tmp_path / 'run', images=images, masks=labels, out=tmp_path / 'ev2')
    same_metrics(on_files, on_arrays)
    assert on_arrays['n_test'] == 3 and on_arrays['data'] == '3 arrays'
    with pytest.raises(segment.CapsegError, match='masks= takes an array or PIL image per image: 3 images, not 2 masks'):
        segment.evaluate(model=tmp_path / 'run', images=images, masks=labels[:2])


def test_evaluate_arrays_as_npz(seg_small, tmp_path):
    "A model trained on an npz: its test split as an N×H×W array and masks scores as `--data` does."
    from capseg import segment
    from capseg.seg_data import load_seg_npz
    folder, model = seg_small[0], seg_small[0] / 'run'
    d = load_seg_npz(folder / 'small.npz')
    on_npz = segment.evaluate(folder / 'small.npz', model, out=tmp_path / 'ev1')
    on_arrays = segment.evaluate(model=model, images=d.image_test, masks=list(d.mask_test), out=tmp_path / 'ev2')
    same_metrics(on_npz, on_arrays)
