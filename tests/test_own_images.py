"""A person's own images: a folder of 16-bit TIFFs without masks, an npz with only `image_train`, label-image masks,
and arrays in Python (the prediction side of the same issue: test_predict_large.py)."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import capseg_main
from capseg import segment
from capseg.seg_data import make_shapes, make_shapes_split


def mosaic(seed: int, side: int = 2) -> tuple[np.ndarray, np.ndarray]:
    "A (side·64)² frame of noisy shapes and its label image (one label per shape)."
    ims, masks, _ = make_shapes_split(side * side, noise=0.5, size=64, seed=seed)
    image = np.block([[ims[side * r + c] for c in range(side)] for r in range(side)])
    labels = np.block([[masks[side * r + c] * (side * r + c + 1) for c in range(side)] for r in range(side)])
    return image, labels.astype(np.uint16)


@pytest.fixture(scope='module')
def tiffs(tmp_path_factory) -> Path:
    "Five 16-bit TIFF frames of 128×128 (one a 2-page stack) in a folder tree, and label-image masks beside them."
    import tifffile
    root = tmp_path_factory.mktemp('own')
    frames = [mosaic(k) for k in range(5)]
    to16 = lambda x: np.clip(x * 9000 + 20000, 0, 65535).astype(np.uint16)         # a 16-bit camera's range
    for k, (image, labels) in enumerate(frames[:3]):
        (root / 'imgs' / f'day{k % 2}').mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / 'imgs' / f'day{k % 2}' / f'cell{k}.tif', to16(image))
        (root / 'masks' / f'day{k % 2}').mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / 'masks' / f'day{k % 2}' / f'cell{k}_mask.tif', labels)
    tifffile.imwrite(root / 'imgs' / 'stack.tif', np.stack([to16(frames[3][0]), to16(frames[4][0])]))
    return root


def test_folder_of_16bit_tiffs_without_masks_then_predict(tiffs, tmp_path):
    out = tmp_path / 'run'
    r = capseg_main('segment', 'train', '--images', tiffs / 'imgs', '--out', out, '--epochs', 2, '--json')
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m['n_frames'] == 5 and m['crop'] == 128 and 'test_iou' not in m and 'train_iou' not in m
    assert m['holdout_risk'] is not None and m['energy'] > 0 and 0 < m['foreground_fraction'] < 1
    assert m['refine'] is None, 'frames are predicted by the network alone (no per-image refinement)'
    assert m['local_scale'] == 128 / 8, 'frames: local region means over a window of 1/8 of the crop'
    assert (out / 'model.pt').exists() and (out / 'results_train.png').exists()
    r = capseg_main('segment', 'predict', '--model', out, tiffs / 'imgs', '--out', tmp_path / 'pred')
    assert r.returncode == 0, r.stderr
    recs = [json.loads(l) for l in (tmp_path / 'pred' / 'predictions.jsonl').read_text().splitlines()]
    assert len(recs) >= 4 and all('mask' in rec for rec in recs)


def test_masks_matched_by_stem_score_only(tiffs, tmp_path):
    r = capseg_main('segment', 'train', '--images', tiffs / 'imgs' / 'day0', tiffs / 'imgs' / 'day1', '--masks',
                    tiffs / 'masks', '--out', tmp_path / 'run', '--epochs', 2, '--json')
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0 <= m['train_iou'] <= 100 and 'baseline_train_iou' in m and m['n_masks'] == 3


def test_eval_with_label_image_masks(tiffs, tmp_path):
    out = tmp_path / 'run'
    assert capseg_main('segment', 'train', '--images', tiffs / 'imgs' / 'day0', tiffs / 'imgs' / 'day1',
                       '--out', out, '--epochs', 2).returncode == 0
    r = capseg_main('segment', 'eval', '--model', out, '--images', tiffs / 'imgs' / 'day0', tiffs / 'imgs' / 'day1',
                    '--masks', tiffs / 'masks', '--out', tmp_path / 'ev', '--json')
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m['n_test'] == 3 and 0 <= m['test_iou'] <= 100 and 0 <= m['baseline_test_iou'] <= 100
    r = capseg_main('segment', 'eval', '--model', out, '--images', tiffs / 'imgs')
    assert r.returncode == 2 and '--masks' in r.stderr


def test_npz_with_only_image_train(tmp_path):
    d = make_shapes(n_train=96, n_test=8, seed=2)
    np.savez(tmp_path / 'only.npz', image_train=d.image_train)
    r = capseg_main('segment', 'train', '--data', tmp_path / 'only.npz', '--out', tmp_path / 'run', '--epochs', 1, '--json')
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m['n_train'] == 96 and 'test_iou' not in m and m['energy'] > 0
    assert m['local_scale'] is None, 'images held whole keep the per-image means'
    r = capseg_main('segment', 'eval', '--model', tmp_path / 'run', '--data', tmp_path / 'only.npz')
    assert r.returncode == 2 and 'image_test' in r.stderr, 'eval needs what it scores'


def test_train_on_arrays(tmp_path):
    d = make_shapes(n_train=64, n_test=8, seed=4)
    m = segment.train(images=d.image_train, masks=d.mask_train * 3, out=tmp_path / 'a', epochs=1, quiet=True)
    assert m['data'] == 'arrays' and 0 <= m['train_iou'] <= 100, 'label-image masks score'
    m = segment.train(images=[mosaic(0)[0], d.image_train[0]], out=tmp_path / 'b', epochs=1, quiet=True)
    assert m['n_frames'] == 2 and m['crop'] == 32 and m['local_scale'] is None, 'crops under 128 px: per-image means'
    with pytest.raises(Exception, match='images= takes'): segment.train(images=42, out=tmp_path / 'c')
