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


def test_large_npz_images_train_as_crops(tmp_path, monkeypatch):
    """Images in an npz too large to train on whole (here: `WHOLE_PIXELS` lowered to 16 images of 64²) train as crops,
    in their own units; the test split is scored image by image, and `eval --data` scores it the same way."""
    from capseg import seg_inputs, segment
    from capseg.seg_data import make_shapes, save_seg_npz
    monkeypatch.setattr(seg_inputs, 'WHOLE_PIXELS', 16 * 64 * 64)
    save_seg_npz(make_shapes(n_train=24, n_test=6, size=64, seed=2), tmp_path / 'big.npz')
    m = segment.train(tmp_path / 'big.npz', out=tmp_path / 'run', epochs=1, quiet=True)
    assert m['crop'] == 64 and m['n_frames'] == 24 and m['n_test'] == 6 and m['data'] == str(tmp_path / 'big.npz')
    assert 0 <= m['test_iou'] <= 100 and 'baseline_test_iou' in m and (tmp_path / 'run' / 'results_test.png').exists()
    assert segment.load_model(tmp_path / 'run')[1]['inputs'] is None, 'predicted in its own units, as an npz holds it'
    ev = segment.evaluate(tmp_path / 'big.npz', tmp_path / 'run', out=tmp_path / 'ev')
    assert ev['test_iou'] == pytest.approx(m['test_iou'], abs=1e-3) and ev['n_test'] == 6
    monkeypatch.setattr(seg_inputs, 'WHOLE_PIXELS', 64 * 64 * 64)
    m = segment.train(tmp_path / 'big.npz', out=tmp_path / 'whole', epochs=1, quiet=True, figures=False)
    assert 'crop' not in m and m['n_train'] == 24, 'below the limit: held whole, as before'


def test_frame_too_large_for_memory_one_line(tmp_path, monkeypatch):
    "A frame that needs more memory than the process has is refused before training, saying how much it needs."
    from PIL import Image
    from conftest import capseg_main
    from capseg import seg_inputs
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 640), dtype=np.uint8)).save(tmp_path / 'big.png')
    monkeypatch.setattr(seg_inputs, '_available_memory', lambda: 2 ** 20)           # 1 MiB free
    r = capseg_main('segment', 'train', '--images', tmp_path / 'big.png', '--out', tmp_path / 'run')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'big.png: training on a 512×640 frame needs about 4 MiB of memory, 1 MiB is free' in r.stderr
    assert not (tmp_path / 'run' / 'checkpoint.pt').exists()
    monkeypatch.setattr(seg_inputs, '_available_memory', lambda: 2 ** 30)
    assert capseg_main('segment', 'train', '--images', tmp_path / 'big.png', '--out', tmp_path / 'run',
                       '--epochs', 1).returncode == 0


def test_available_memory_sees_an_address_space_limit():
    "`ulimit -v` (as the fuzz run's allocator failures came from) lowers what is counted free."
    import subprocess, sys
    code = 'from capseg.seg_inputs import _available_memory as a; print(a())'
    limited = subprocess.run(['prlimit', f'--as={6 * 2 ** 30}', sys.executable, '-c', code], capture_output=True,
                             text=True)
    if limited.returncode: pytest.skip(f'prlimit: {limited.stderr.strip()}')
    assert 0 < int(limited.stdout) < 5 * 2 ** 30, 'the limit less the address space the process already holds'


def test_large_image_shows_progress_over_tiles(seg_small, tmp_path, monkeypatch):
    """`segment predict` on an image of many tiles: as quiet as before while it is quick; once its tiles take longer
    than `REPORT_AFTER` (lowered to 0 here), a line at each tenth of them on stderr (not a terminal), a bar on one."""
    import io, re, sys
    from PIL import Image
    from conftest import capseg_main
    from capseg import seg_model, segment
    model, image = seg_small[0] / 'run', np.random.default_rng(0).random((1200, 1000)).astype(np.float32)
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / 'a.png')
    predict = lambda out: capseg_main('segment', 'predict', '--model', model, tmp_path / 'a.png', '--out', tmp_path / out)
    r = predict('quick')
    assert r.returncode == 0 and r.stderr == '', r.stderr
    monkeypatch.setattr(seg_model, 'REPORT_AFTER', 0.0)
    r = predict('slow')
    lines = r.stderr.splitlines()
    assert r.returncode == 0 and 3 <= len(lines) <= 11, r.stderr
    assert all(re.fullmatch(r'1200×1000 image: \d+ of \d+ tiles \(\d+%\) in \d+ s', line) for line in lines), lines
    assert re.fullmatch(r'1200×1000 image: (\d+) of \1 tiles \(100%\) in \d+ s', lines[-1])

    class Terminal(io.StringIO):
        def isatty(self): return True
    monkeypatch.setattr(sys, 'stderr', Terminal())
    segment.predict(model, image)
    shown = sys.stderr.getvalue()
    assert '1200×1000 image' in shown and 'tile/s' in shown and ' of ' not in shown, 'a bar, not lines'
