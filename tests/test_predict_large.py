"""Prediction of large and unusual images (issue 16): tiled against whole-image masks, peak memory of a large PNG in a
subprocess, 16-bit and multi-page TIFF records, --save-prob, --foreground bright/dark, and the array API of both jobs."""
import json, resource, subprocess, sys, textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import capseg_exe, capseg_main
from capseg import segment
from capseg.core import CapsegError


def noisy_shapes(h, w, seed=0, noise=0.5) -> tuple[np.ndarray, np.ndarray]:
    "(image, mask): bright discs and boxes (value 1) on 0, plus Gaussian noise; float32."
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), bool)
    for _ in range(max(4, h * w // 20000)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, 30)
        mask |= (np.hypot(yy - cy, xx - cx) < r) if rng.random() < 0.5 else (abs(yy - cy) < r) & (abs(xx - cx) < r * .7)
    return (mask + rng.normal(0, noise, mask.shape)).astype(np.float32), mask


@pytest.fixture(scope='module')
def good(tmp_path_factory) -> Path:
    "A model that segments the shapes (8 epochs on 512 images, ~10 s): tiling and polarity need a non-constant one."
    from capseg.seg_data import make_shapes
    out = tmp_path_factory.mktemp('good') / 'run'
    segment.train(make_shapes(n_train=512, n_test=64, seed=1), out=out, epochs=8, seed=0, device='cpu', figures=False)
    return out


def test_tiled_agrees_with_whole(good):
    image, truth = noisy_shapes(600, 500)
    whole, tiled = segment.predict(good, image), segment.predict(good, image, tile=192)
    assert whole.shape == (600, 500) and whole.dtype == bool
    assert (whole == truth).mean() > 0.95, 'the model segments the shapes'
    assert (whole == tiled).mean() >= 0.995


def test_foreground_bright_dark(good):
    "Shapes darker than the background: `dark` finds them, `bright` takes the background, whatever `flip` says."
    image, truth = noisy_shapes(300, 260, seed=2)
    dark, bright = (segment.predict(good, 1 - image, foreground=f) for f in ('dark', 'bright'))
    assert (dark == truth).mean() > 0.95 and (bright == ~truth).mean() > 0.95
    with pytest.raises(CapsegError, match='auto, bright or dark'): segment.predict(good, image, foreground='light')


def test_array_api_and_wrong_types(good):
    image, _ = noisy_shapes(64, 80, seed=3)
    u8 = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    mask = segment.predict(good, u8)
    assert isinstance(mask, np.ndarray) and mask.shape == (64, 80) and mask.dtype == bool
    masks = segment.predict(good, [Image.fromarray(u8), u8, np.stack([u8] * 3, -1)])
    assert isinstance(masks, list) and all(np.array_equal(m, mask) for m in masks), 'PIL, array and RGB of one image'
    for bad, named in (({'image': u8}, 'dict'), ([u8, 'a.png'], 'paths and images'), (3, 'int')):
        with pytest.raises(CapsegError, match=f'segment.predict takes image paths.*NumPy arrays or PIL images, not .*{named}'):
            segment.predict(good, bad)


def test_caption_array_api(caption_one_process, tmp_path):
    from capseg.caption import predict
    folder = caption_one_process[0]
    rng = np.random.default_rng(0)
    pil = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    pil.save(tmp_path / 'a.png')
    one = predict(folder, pil, device='cpu')
    assert isinstance(one, str) and one == list(predict(folder, [tmp_path / 'a.png'], device='cpu'))[0]['caption']
    assert predict(folder, [pil, np.asarray(pil)], device='cpu') == [one, one]
    with pytest.raises(CapsegError, match='caption.predict takes .*PIL images, not dict'): predict(folder, {'a': pil})


def test_tiff_16bit_stack_and_save_prob(seg_small, tmp_path):
    import tifffile
    model, rng = seg_small[0] / 'run', np.random.default_rng(0)
    frames = rng.integers(0, 65536, (3, 40, 56), dtype=np.uint16)
    tifffile.imwrite(tmp_path / 'stack.tif', frames, photometric='minisblack')
    tifffile.imwrite(tmp_path / 'deep.tif', frames[0])
    out = tmp_path / 'out'
    r = capseg_main('segment', 'predict', '--model', model, tmp_path / 'stack.tif', tmp_path / 'deep.tif', '--out', out,
                    '--save-prob')
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in (out / 'predictions.jsonl').read_text().splitlines()]
    assert [(Path(r['path']).name, r.get('index')) for r in recs] == [('stack.tif', 0), ('stack.tif', 1),
                                                                      ('stack.tif', 2), ('deep.tif', None)]
    assert recs[0]['mask'] == str(out / 'masks' / 'stack.tif' / 'frame_0000.png')
    for rec in recs:
        mask, prob = np.asarray(Image.open(rec['mask'])), np.asarray(Image.open(rec['prob'])).astype(np.uint16)
        assert Path(rec['prob']).parent.parts[-1 - ('index' in rec)] == 'probs' and Image.open(rec['prob']).mode.startswith('I')
        assert mask.shape == prob.shape == (40, 56) and np.array_equal(mask > 0, prob > 32767)
        assert rec['foreground_fraction'] == pytest.approx((mask > 0).mean(), abs=1e-6)
    same = segment.predict(model, frames[0])          # the 16-bit values are kept: the file gives the array's mask
    assert np.array_equal(np.asarray(Image.open(recs[3]['mask'])) > 0, same)


PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""

def peak_rss(*cmd) -> int:
    "Peak RSS (bytes) of a command, measured in a wrapper process of which it is the only child."
    r = subprocess.run([sys.executable, '-c', PEAK, *map(str, cmd)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stdout.split()[-1])


def test_large_png_memory(seg_small, tmp_path):
    """A 4,000 × 4,000 8-bit PNG: the memory above a process that only loads the model grows with the pixels no faster
    than the 3 GB allowed for 12,000 × 12,000 (bench/predict_large.py measures that one)."""
    model, side = seg_small[0] / 'run', 4000
    tile, _ = noisy_shapes(500, 500, seed=4)
    Image.fromarray(np.tile((np.clip(tile, 0, 1) * 255).astype(np.uint8), (side // 500, side // 500))).save(
        tmp_path / 'big.png', compress_level=1)
    base = peak_rss(sys.executable, '-c', f"from capseg import segment; segment.load_model({str(model)!r})")
    peak = peak_rss(capseg_exe(), 'segment', 'predict', '--model', model, tmp_path / 'big.png',
                    '--out', tmp_path / 'out')
    allowed = (3e9 - base) * side ** 2 / 12000 ** 2
    print(f'base {base / 1e6:.0f} MB, peak {peak / 1e6:.0f} MB, allowed above base {allowed / 1e6:.0f} MB')
    assert peak - base <= allowed
    mask = np.asarray(Image.open(tmp_path / 'out' / 'masks' / 'big.png'))
    assert mask.shape == (side, side)
