"""Real-data segmentation benchmark: a fluorescence frame of nuclei with its hand-made masks, shipped by StarDist.

Data: `stardist/data/images/img2d.tif` (512×512, uint16, Hoechst-stained nuclei) and `mask2d.tif` (its instance label
image, 125 nuclei; foreground = label > 0), from the 2018 Data Science Bowl (BBBC038, Caicedo et al., Nature Methods
16, 2019), as shipped inside the `stardist` wheel (BSD-3-Clause; the DSB images are CC0). Nothing is downloaded at run
time: the files are read from the installed package (`pip install -e '.[bench]'`), without importing it.

Split: the package ships ONE real 2-D frame with masks, so train and test cannot be split by image. They are split by
halves of the frame: columns 0–255 train, 256–511 test (no pixel shared; nuclei cut by the boundary appear in both
halves). Each half is cut into 8 tiles of 128×128 (the npz-based training takes small images whole).
Intensities: percentiles 1 and 99.8 of the TRAIN half map to 0 and 1 (float32, not clipped), for every method.

Methods (masks only score, except for the two supervised references):
  default     capseg's default, trained on the 8 train tiles without masks (`segment.train(data=SegData(...))`)
  default_crops  the same, trained on the train half cut into 105 overlapping 64×64 crops (32 px apart)
  blur_otsu   Gaussian blur (σ 1.5 px) + Otsu's threshold per tile
  chan_vese   scikit-image's chan_vese with its default parameters, per tile (as in the sweep)
  chan_vese_rule  scikit-image's chan_vese set by a mask-free rule from each tile (`chan_vese_rule`)
  supervised  the network the default chose, trained on the masks with BCE (reference)
  unet        a UNet 32/64/128 trained on the masks with BCE + Dice (bench/unet.py; the ceiling), on the 105 overlapping
              64×64 crops of the train half (8 tiles would give it one optimiser step per epoch); early stop on 10 % of
              those crops (they overlap the others: the stop is only as honest as a split of the train half can be)
IoU: flip-invariant, %, as in the sweep (flip chosen per batch of 32 tiles: here one batch), and per tile.
Writes bench/results/segment_real.json, .md and .png (the test tiles, masks and foregrounds; the foregrounds are
kept under --runs).   Usage: python bench/segment_real.py [--quick]
"""
import os
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse, importlib.metadata, importlib.util, platform, sys, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from capseg.core import CapsegError, load_json, save_json
from capseg.seg_data import SegData
from capseg.plot import image_grid
from capseg.segment import batch_flip, blur_otsu, chan_vese_classic, infer, load_model, normalize, train
from bench.unet import iou_scores, run_unet

PACKAGE, FILES = 'stardist', ('data/images/img2d.tif', 'data/images/mask2d.tif')
TILE, SPLIT_COLUMN = 128, 256
UNET_EPOCHS, UNET_PATIENCE = 100, 10
METHODS = {'images': 'capseg default (no masks), the raw frame half as a 16-bit TIFF (--images)',
           'default': 'capseg default (no masks), 8 tiles in an npz', 'default_crops': 'capseg default (no masks), 64×64 crops',
           'blur_otsu': 'blur + Otsu', 'chan_vese': 'scikit-image chan_vese, defaults',
           'chan_vese_rule': 'scikit-image chan_vese, mask-free rule', 'supervised': 'supervised CVNet (masks, BCE)',
           'unet': 'supervised UNet (masks, BCE + Dice)'}


def package_data() -> dict:
    "The frame, its label image and where they come from, read from the installed package without importing it."
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CapsegError(f"the real-data benchmark needs the {PACKAGE} package's files: pip install -e '.[bench]'")
    import tifffile
    folder = Path(spec.submodule_search_locations[0])
    image, labels = (tifffile.imread(folder / f) for f in FILES)
    meta = importlib.metadata.metadata(PACKAGE)
    return dict(image=image, labels=labels, package=PACKAGE, version=meta['Version'],
                licence=meta.get('License-Expression') or meta.get('License'), files=[f'{PACKAGE}/{f}' for f in FILES],
                origin='2018 Data Science Bowl (BBBC038; Caicedo et al., Nature Methods 16, 2019; images CC0), '
                       'fluorescence, nuclei; instance labels by hand', dtype=str(image.dtype), shape=list(image.shape),
                n_nuclei=int(len(np.unique(labels)) - 1))


def tiles(a: np.ndarray, size: int = TILE, stride: int | None = None) -> np.ndarray:
    "`a` (H×W) cut into size×size tiles `stride` apart (default: not overlapping), row by row (N×size×size)."
    h, w, step = *a.shape, stride or size
    return np.stack([a[i:i + size, j:j + size] for i in range(0, h - size + 1, step)
                     for j in range(0, w - size + 1, step)])


def overlapping(data: SegData) -> SegData:
    "The same split with the train half as overlapping 64×64 crops, 32 px apart (105 of them): more, smaller images."
    stitch = lambda t: np.concatenate([np.concatenate(list(row), 1) for row in t.reshape(-1, 2, TILE, TILE)], 0)
    return SegData(tiles(stitch(data.image_train), 64, 32), tiles(stitch(data.mask_train), 64, 32), data.image_test,
                   data.mask_test, source=data.source + ' (train half as 64×64 crops, stride 32)')


def split(d: dict) -> SegData:
    "Train = left half, test = right half of the frame, as 128×128 tiles; intensities by the train half's percentiles."
    im, fg = d['image'].astype(np.float32), (d['labels'] > 0).astype(np.uint8)
    lo, hi = np.percentile(im[:, :SPLIT_COLUMN], (1, 99.8))
    x = (im - lo) / (hi - lo)
    d['normalisation'] = dict(percentiles=[1, 99.8], values=[float(lo), float(hi)], of='train half')
    return SegData(tiles(x[:, :SPLIT_COLUMN]), tiles(fg[:, :SPLIT_COLUMN]), tiles(x[:, SPLIT_COLUMN:]),
                   tiles(fg[:, SPLIT_COLUMN:]), source=f"{d['package']} {d['version']} img2d.tif")


def chan_vese_rule(images, iterations: int = 300) -> np.ndarray:
    """scikit-image's chan_vese per image, its parameters set from the image alone: intensities by percentiles 1–99.8
    clipped to [0, 1]; the level set started from Otsu's threshold; mu = Δc² · r / 8 with Δc the difference of the
    Otsu classes' means and r the median equivalent radius of Otsu's objects, so that (a disc of radius ρ survives the
    length penalty when ρ > 2·mu/Δc²) objects down to a quarter of the typical object radius are kept."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops
    from skimage.segmentation import chan_vese
    out, used = [], []
    for im in np.asarray(images, dtype=np.float64):
        lo, hi = np.percentile(im, (1, 99.8))
        x = np.clip((im - lo) / (hi - lo or 1.0), 0, 1)
        otsu = x > threshold_otsu(x)
        radii = [np.sqrt(r.area / np.pi) for r in regionprops(label(otsu))]
        r = max(2.0, float(np.median(radii))) if radii else 2.0
        mu = (x[otsu].mean() - x[~otsu].mean()) ** 2 * r / 8
        used.append(round(float(mu), 5))
        out.append(chan_vese(x, mu=mu, init_level_set=np.where(otsu, 1.0, -1.0), max_num_iter=iterations))
    return np.stack(out).astype(np.uint8), used


def scored(pred_fn, data: SegData) -> dict:
    "Run a mask-free per-image method on the test tiles and score it as the sweep does, with per-tile IoUs."
    t = time.perf_counter()
    pred = pred_fn(data.image_test)
    extra = {}
    if isinstance(pred, tuple): pred, extra = pred[0], dict(mu=pred[1])
    seconds = time.perf_counter() - t
    return iou_scores(pred.astype(np.float32), data.mask_test) | dict(seconds=seconds, prob=pred) | extra


def methods(data: SegData, out: Path, quick: bool) -> dict:
    "name → a function that runs the method on `data` and returns its record."
    short = dict(epochs=2) if quick else {}
    def images():                   # what a user does: the raw 16-bit half as a file, no masks anywhere near it
        return files_run(out / 'images', quick)
    def default():
        r = train(data, out=out / 'default', device='cpu', overwrite=True, figures=False, **short)
        return _with_tiles(r, out / 'default', data)
    def default_crops():
        r = train(overlapping(data), out=out / 'default_crops', device='cpu', overwrite=True, figures=False, **short)
        return _with_tiles(r, out / 'default_crops', data)
    def supervised():
        chosen = load_json(out / 'default' / 'metrics.json')['widths']
        r = train(data, out=out / 'supervised', device='cpu', overwrite=True, figures=False, supervised=True,
                  widths=chosen, **short)
        return _with_tiles(r, out / 'supervised', data)
    return {'images': images, 'default': default, 'default_crops': default_crops,
            'blur_otsu': lambda: scored(blur_otsu, data),
            'chan_vese': lambda: scored(chan_vese_classic, data),
            'chan_vese_rule': lambda: scored(chan_vese_rule, data),
            'supervised': supervised,
            'unet': lambda: run_unet(*overlapping(data).arrays().values(),
                                     epochs=3 if quick else UNET_EPOCHS, patience=UNET_PATIENCE, seed=0, threads=1)}


def files_run(out: Path, quick: bool) -> dict:
    """`capseg segment train --images train.tif` on the raw 16-bit left half (random crops, percentiles of the frame),
    then `segment.predict` on the raw right half (its own percentiles); its mask scored per test tile."""
    import tifffile
    from capseg import segment
    d = package_data()
    (out / 'files').mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out / 'files' / 'train.tif', d['image'][:, :SPLIT_COLUMN])
    t = time.perf_counter()
    m = train(images=[out / 'files' / 'train.tif'], out=out / 'run', device='cpu', overwrite=True, figures=False,
              quiet=True, **(dict(epochs=2) if quick else {}))
    seconds = time.perf_counter() - t
    mask = segment.predict(out / 'run', d['image'][:, SPLIT_COLUMN:], device='cpu')
    fg = tiles((d['labels'][:, SPLIT_COLUMN:] > 0).astype(np.uint8))
    return iou_scores(tiles(mask.astype(np.float32)), fg) | dict(seconds=seconds, prob=tiles(mask.astype(np.float32)),
                                                               epochs=m['epochs'], crop=m['crop'], widths=m['widths'])


def _with_tiles(metrics: dict, model: Path, data: SegData) -> dict:
    "A capseg run's metrics, with the per-tile IoUs of its saved model on the test tiles (scored as the others)."
    net, rec = load_model(model, 'cpu')
    p = infer(net, normalize(data.image_test, rec['norm']))[:, 0].numpy()
    tiles_scored = iou_scores(p, data.mask_test)
    assert abs(tiles_scored['test_iou'] - metrics['test_iou']) < 1e-3, 'the saved model scores differently'
    keep = ('test_iou', 'test_iou_per_image', 'train_seconds', 'epochs', 'best_epoch', 'alpha', 'widths', 'selection',
            'inference_images_per_s')
    return {k: metrics[k] for k in keep if k in metrics} | dict(iou_each_image=tiles_scored['iou_each_image'], prob=p)


def foreground(prob, masks) -> np.ndarray:
    "Binary foreground of `prob` (N×H×W) with the flip the IoU chose for the batch (masks pick only the polarity)."
    p = torch.as_tensor(np.asarray(prob, dtype=np.float32))[:, None]
    flipped = batch_flip(p, torch.as_tensor(np.asarray(masks) > 0)[:, None])[1]
    return (((1 - p) if flipped else p) > 0.5)[:, 0].numpy()


def picture(data: SegData, runs: Path, path: Path):
    "The test tiles, their masks and each method's foreground (those run and saved under `runs`) as a PNG grid."
    rows = {'image': np.clip(data.image_test, 0, 1), 'mask': data.mask_test}
    for key in METHODS:
        if (runs / f'pred_{key}.npy').exists(): rows[key] = np.load(runs / f'pred_{key}.npy', allow_pickle=False)
    image_grid(rows, path, size=1.1, title='test tiles (right half of the frame)')


def table(res: dict) -> str:
    "The results as markdown."
    rows = ['| method | test IoU % (batch flip) | per-tile IoU % | per-tile IoUs | seconds |',
            '|---|---:|---:|---|---:|']
    for key, label in METHODS.items():
        r = res['methods'].get(key)
        if r is None: continue
        secs = r.get('train_seconds', r.get('seconds'))
        rows.append(f"| {label} | {r['test_iou']:.1f} | {r['test_iou_per_image']:.1f} | "
                    f"{' '.join(f'{v:.0f}' for v in r['iou_each_image'])} | {secs:.1f} |")
    return '\n'.join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='smoke test: 2–3 epochs per network, results under /tmp')
    ap.add_argument('--results', type=Path, default=ROOT / 'bench' / 'results' / 'segment_real.json')
    ap.add_argument('--runs', type=Path, default=ROOT / 'runs' / 'bench_real', help='training runs go here')
    ap.add_argument('--methods', nargs='+', choices=list(METHODS),
                    help='(re)run these methods (default: every method not in the results yet)')
    ap.add_argument('--fresh', action='store_true', help='ignore earlier results')
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    a.runs.mkdir(parents=True, exist_ok=True)
    d = package_data()
    data = split(d)
    res = load_json(a.results) if a.results.exists() and not a.fresh else {}
    res.update({k: v for k, v in d.items() if k not in ('image', 'labels')})
    res.setdefault('methods', {})
    n_train, n_test = len(data.image_train), len(data.image_test)
    res.update(split=dict(train='columns 0–255 (left half)', test='columns 256–511 (right half)',
                          tiles=f'{TILE}×{TILE}, non-overlapping, {n_train} train + {n_test} test',
                          why='the package ships one real 2-D frame with masks: no split by image possible',
                          train_foreground=float(data.mask_train.mean()), test_foreground=float(data.mask_test.mean())),
               iou='flip-invariant IoU in %, threshold 0.5; test_iou: flip chosen per batch of 32 tiles (one batch '
                   'here); test_iou_per_image: flip chosen per tile; iou_each_image: per test tile, row by row',
               machine=dict(cpus=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                            torch_threads=1), quick=a.quick, unet=dict(max_epochs=UNET_EPOCHS, patience=UNET_PATIENCE))
    for key in a.methods or [m for m in METHODS if a.quick or m not in res['methods']]:
        t = time.perf_counter()
        r = methods(data, a.runs, a.quick)[key]() | dict(wall_seconds=time.perf_counter() - t)
        np.save(a.runs / f'pred_{key}.npy', foreground(r.pop('prob'), data.mask_test))
        res['methods'][key] = r
        save_json(res, a.results)
        print(f"{METHODS[key]:42s} IoU {r['test_iou']:5.1f}  per tile {r['test_iou_per_image']:5.1f}  "
              f"({r['wall_seconds']:.0f} s)", flush=True)
    md = (f"# Real data: {d['package']} {d['version']} ({res['licence']}), `{'`, `'.join(d['files'])}`\n\n"
          f"{res['origin']}. Train: left half, test: right half of the 512×512 frame, as {TILE}×{TILE} tiles "
          f"({res['split']['why']}). {res['iou']}. Seconds: training (networks) or running (classical methods), "
          "one thread.\n\n" + table(res) + '\n')
    a.results.with_suffix('.md').write_text(md)
    picture(data, a.runs, a.results.with_suffix('.png'))
    print(table(res))


if __name__ == '__main__':
    main()
