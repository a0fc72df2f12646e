"""Few labels (issue 25): test IoU against the share of the training data that has masks.

Methods, at labelled fractions 0, 1, 2, 5, 10, 25, 100 % of the training frames (at least one frame when > 0):
  semi         `segment.train(..., learn_from_masks=True)`: the masks of the labelled frames beside the Chan–Vese loss
               on every frame, then a second pass on every frame with the first pass's foreground where a frame has
               no mask (`first_pass_test_iou`: the first pass's own score); at 0 %: the unsupervised default
  labels_only  the same recipe on the labelled frames alone, with their masks (`train(..., supervised=True)`: no
               Chan–Vese term, so no hold-out and the last epoch, as semi with every frame labelled); both
               train `LABEL_NET` (capseg's SkipNet 16/32/64, a UNet), the network of runs whose loss has masks
  unet         the supervised UNet of bench/unet.py on the labelled frames alone (as 32×32 crops 16 px apart, so that
               one labelled frame still gives it images to fit and one to stop on)
Data:
  real         StarDist's img2d.tif (see bench/segment_real.py): the left half cut into 32 tiles of 64×64 (the
               "frames" a person could label); the right half scored as bench/segment_real.py scores it (the issue's
               reference, the UNet on all masks at 90.2 %, is its number): 8 tiles of 128×128; intensities by the left
               half's percentiles 1 and 99.8
  img3d        StarDist's img3d.tif (bench/segment_camera.py's second real frame, never tuned on here): its 31 z-slices
               of 61×57 px as frames, slices 0–14 train and 16–30 score (as segment_camera splits it); one labelled
               slice is 7 % (5 % rounds to 1 slice), two 13 % (10 %); intensities by the training slices' percentiles
               1 and 99.8. Its masks are swollen (57 % foreground where nuclei cover about 38 %), so its IoUs are lower
  shapes_S     `make_shapes` at noise σ S (0.5, 0.75, 1.0): 1000 training images, 1000 test images
Every network is scored the same way: its foreground as it is used (`p > 0.5`, or `p < 0.5` where the unsupervised
model recorded a flip) against the test masks, IoU % per test image, mean. The labelled frames are drawn by the seed.
Seeds: TUNING (0) is the draw any setting was chosen on (the supervised weight, LABEL_SHARE, the network, the stop;
the Chan–Vese weight 1 − share and the last epoch of a loss without it are rules, checked there);
the summary and the plot average the REPORTED seeds (1, 2) only, and `missing` lists the points of the grid not
measured. References: the UNet on all masks of the same shapes (data seed 100) from bench/results/segment_sweep.json.
Records are of frames trained with the loss's window from `local_window`: the 64-px tiles and the shapes' crops are
under 128 px and so have per-image region means; records from before (an 8-px window) were deleted, and the real
frame's records were re-run when its test split became segment_real's 128-px tiles (they were 32 tiles of 64 px).

Resumable: each (dataset, fraction, method, seed) is one record of bench/results/segment_labels.json, written as it
ends (merged with the file's, so that runs over other datasets may go on beside); a rerun skips what is there. Usage:
  python bench/segment_labels.py [--quick] [--datasets real shapes_0.75] [--fractions 0 10] [--seeds 0 1 2]
"""
import os
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from capseg.core import load_json, save_json
from capseg.seg_data import FrameSet, make_shapes
from capseg.segment import FIRST_PASS, infer, iou_per_image, load_model, normalize, train
from bench.segment_real import SPLIT_COLUMN, TILE, package_data, tiles
from bench import segment_camera
from bench.unet import train_unet

FRACTIONS = (0, 1, 2, 5, 10, 25, 100)
DATASETS = ('real', 'img3d', 'shapes_0.5', 'shapes_0.75', 'shapes_1.0')
METHODS = ('semi', 'labels_only', 'unet')
SEEDS = (0, 1, 2)
TUNING, REPORTED = (0,), (1, 2)
REAL_TILE, UNET_EPOCHS, UNET_PATIENCE = 64, 100, 10
RESULTS = ROOT / 'bench' / 'results' / 'segment_labels.json'
SWEEP = ROOT / 'bench' / 'results' / 'segment_sweep.json'


def dataset(name: str, quick: bool) -> dict:
    "Training frames, their masks, test images and masks (N×H×W float32 / uint8) of dataset `name`."
    if name == 'real':
        d = package_data()
        im, fg = d['image'].astype(np.float32), (d['labels'] > 0).astype(np.uint8)
        lo, hi = np.percentile(im[:, :SPLIT_COLUMN], (1, 99.8))
        x = (im - lo) / (hi - lo)
        return dict(x=tiles(x[:, :SPLIT_COLUMN], REAL_TILE), m=tiles(fg[:, :SPLIT_COLUMN], REAL_TILE),
                    x_test=tiles(x[:, SPLIT_COLUMN:], TILE), m_test=tiles(fg[:, SPLIT_COLUMN:], TILE),
                    source=f"{d['package']} {d['version']} img2d.tif")
    if name == 'img3d':
        d = segment_camera.package_data('img3d')
        (x, x_test), (m, m_test) = (segment_camera.halves('img3d', a) for a in (d['image'].astype(np.float32),
                                                                                (d['labels'] > 0).astype(np.uint8)))
        lo, hi = np.percentile(x, (1, 99.8))
        scale = lambda a: ((a - lo) / (hi - lo)).astype(np.float32)
        return dict(x=scale(x), m=m, x_test=scale(x_test), m_test=m_test, source=f"{d['package']} img3d.tif slices")
    sigma = float(name.split('_')[1])
    s = make_shapes(n_train=96 if quick else 1000, n_test=96 if quick else 1000, noise=sigma, seed=100)
    return dict(x=s.image_train, m=s.mask_train, x_test=s.image_test, m_test=s.mask_test, source=s.source)


def labelled(n: int, fraction: float, seed: int) -> np.ndarray:
    "The indices of the labelled training frames: `fraction` % of `n`, at least one when > 0, drawn by `seed`."
    k = 0 if fraction == 0 else min(n, max(1, round(fraction / 100 * n)))
    return np.sort(np.random.default_rng([seed, 11]).choice(n, k, replace=False))


def test_iou(predict_fg, d: dict) -> float:
    "Mean per-image IoU % of a method's foreground (N×H×W bool) on the test images."
    fg = torch.as_tensor(predict_fg(d['x_test']))
    return 100 * iou_per_image(fg, torch.as_tensor(d['m_test'] != 0)).mean().item()


def capseg_fg(out: Path):
    "The foreground of the model in `out` as it is used: `p > 0.5`, or `p < 0.5` where it recorded a flip."
    net, rec = load_model(out, 'cpu')
    def fg(x):
        p = infer(net, normalize(x, rec['norm']))[:, 0]
        return (p < 0.5) if rec['flip'] else (p > 0.5)
    return fg


def run(method: str, d: dict, idx: np.ndarray, seed: int, quick: bool) -> dict:
    "Train `method` with the masks of frames `idx` and score it; its record."
    short = dict(epochs=2) if quick else {}
    out, t = Path(tempfile.mkdtemp(prefix='labels_')), time.perf_counter()
    if method == 'unet':
        crops = lambda a: np.concatenate([tiles(f, 32, 16) for f in a[idx]])
        predict, rec = train_unet(crops(d['x']), crops(d['m']), epochs=3 if quick else UNET_EPOCHS,
                                  patience=UNET_PATIENCE, seed=seed, threads=1)
        extra = dict(epochs=rec['epochs'], best_epoch=rec['best_epoch'])
        fg = lambda x: predict(x) > 0.5
    else:
        if method == 'semi':
            masks = [d['m'][i] if i in set(idx.tolist()) else None for i in range(len(d['x']))]
            frames = FrameSet(list(d['x']), masks, levels=None, source=d['source'])
        else: frames = FrameSet(list(d['x'][idx]), list(d['m'][idx]), levels=None, source=d['source'])
        m = train(frames, out=out, seed=seed, device='cpu', quiet=True, figures=False, overwrite=True,
                  learn_from_masks=method == 'semi' and len(idx) > 0, supervised=method == 'labels_only', **short)
        extra = {k: m[k] for k in ('epochs', 'best_epoch', 'widths', 'labelled_pixels', 'foreground', 'first_pass')
                 if k in m}
        fg = capseg_fg(out)
        if (out / FIRST_PASS / 'model.pt').is_file():
            extra['first_pass_test_iou'] = test_iou(capseg_fg(out / FIRST_PASS), d)
    seconds = time.perf_counter() - t
    return dict(test_iou=test_iou(fg, d), train_seconds=seconds, labelled_frames=len(idx),
                labelled_share=float(d['m'][idx].size / d['m'].size) if len(idx) else 0.0, **extra)


def summary(runs: dict, seeds=REPORTED) -> dict:
    "Mean test IoU over `seeds`: dataset → fraction → method → {mean, n_seeds}."
    out = {}
    for key, r in runs.items():
        ds, frac, method, seed = key.split('/')
        if int(seed) in seeds: out.setdefault(ds, {}).setdefault(frac, {}).setdefault(method, []).append(r['test_iou'])
    return {ds: {f: {m: dict(mean=float(np.mean(v)), n_seeds=len(v)) for m, v in ms.items()} for f, ms in fr.items()}
            for ds, fr in out.items()}


def missing(runs: dict) -> list[str]:
    "The points of the full grid (every dataset, fraction, method, seed) without a record."
    return [f'{ds}/{f:g}/{m}/{s}' for ds in DATASETS for f in FRACTIONS for m in (METHODS if f else ('semi',))
            for s in SEEDS if f'{ds}/{f:g}/{m}/{s}' not in runs]


def references() -> dict:
    "The UNet on all masks of the shapes at each σ (data seed 100, as here), cached by bench/segment_sweep.py."
    runs = load_json(SWEEP)['runs'] if SWEEP.exists() else {}
    return {f'shapes_{s}': runs[f'shapes|{s}|100|unet']['test_iou'] for s in ('0.5', '0.75', '1.0')
            if f'shapes|{s}|100|unet' in runs}


def checks(summ: dict, refs: dict) -> dict:
    """The issue's claims on the reported seeds: at each fraction semi ≥ labels_only and ≥ unet; the real frame at
    ≤ 10 % labelled ≥ 88 %; the shapes at 5 % within 1 point of the UNet on all masks."""
    out = {}
    for ds, fr in summ.items():
        for f, ms in fr.items():
            if 'semi' not in ms: continue
            semi = ms['semi']['mean']
            for other in ('labels_only', 'unet'):
                if other in ms: out[f'{ds}/{f}: semi >= {other}'] = semi >= ms[other]['mean']
            if ds == 'real' and 0 < float(f) <= 10: out[f'real/{f}: semi >= 88'] = semi >= 88
            if ds in refs and float(f) == 5: out[f'{ds}/5: semi >= unet on all masks - 1'] = semi >= refs[ds] - 1
    return out


def plot(res: dict, path: Path):
    "Test IoU against the labelled fraction (reported seeds), one panel per dataset; the missing points named."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    summ, refs = res['summary'], res['references']
    fig, axes = plt.subplots(1, len(summ), figsize=(4 * len(summ), 3.6), squeeze=False)
    for ax, (ds, fr) in zip(axes[0], summ.items()):
        for method in METHODS:
            pts = sorted((float(f), v[method]['mean']) for f, v in fr.items() if method in v)
            if pts: ax.plot(*zip(*pts), 'o-', label=method)
        if ds in refs: ax.axhline(refs[ds], ls='--', c='k', lw=0.8, label='UNet, all masks')
        gone = sorted({float(k.split('/')[1]) for k in res['missing']
                       if k.startswith(ds + '/') and int(k.split('/')[3]) in REPORTED})
        ax.set_xscale('symlog', linthresh=1); ax.set_xlim(-0.2, 130); ax.set_xlabel('labelled training frames, %')
        ax.set_title(f'{ds}\nmissing at %: {", ".join(f"{f:g}" for f in gone) or "none"}', fontsize=8)
        ax.set_ylabel(f'test IoU %, mean of seeds {", ".join(map(str, REPORTED))}'); ax.legend(fontsize=7)
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true',
                    help='a smoke run: 2 epochs, small data, written to the temp folder')
    ap.add_argument('--datasets', nargs='+', default=DATASETS, choices=DATASETS)
    ap.add_argument('--fractions', nargs='+', type=float, default=FRACTIONS)
    ap.add_argument('--methods', nargs='+', default=METHODS, choices=METHODS)
    ap.add_argument('--seeds', nargs='+', type=int, default=SEEDS)
    args = ap.parse_args(argv)
    path = Path(tempfile.gettempdir()) / 'segment_labels_quick.json' if args.quick else RESULTS
    res = load_json(path) if path.exists() else dict(runs={})
    res['about'] = __doc__.split('\nResumable')[0]
    torch.set_num_threads(1)
    for ds in args.datasets:
        d = dataset(ds, args.quick)
        for frac in args.fractions:
            for seed in args.seeds:
                idx = labelled(len(d['x']), frac, seed)
                for method in args.methods if frac else ('semi',):
                    key = f'{ds}/{frac:g}/{method}/{seed}'
                    if key in res['runs']: continue
                    r = run(method, d, idx, seed, args.quick)
                    print(key, f"{r['test_iou']:.1f}", flush=True)
                    res['runs'] = {**(load_json(path)['runs'] if path.exists() else {}), key: r}   # runs beside
                    save_json(res, path)
    res['runs'] = load_json(path)['runs'] if path.exists() else res['runs']
    res.update(summary=summary(res['runs']), tuning=summary(res['runs'], TUNING), missing=missing(res['runs']),
               references=references())
    res['checks'] = checks(res['summary'], res['references'])
    save_json(res, path)
    if res['summary']: plot(res, path.with_suffix('.png'))
    return res


if __name__ == '__main__':
    main()
