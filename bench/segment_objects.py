"""Object benchmark: capseg's objects against blur + Otsu split the same way, and the supervised UNet split the same way
(the ceiling), matched one-to-one to the true objects as StarDist's `matching` does.

Data (nothing downloaded; masks only score, except for the UNet):
  real       stardist's img2d.tif + mask2d.tif (see segment_real.py: 2018 Data Science Bowl nuclei, CC0, shipped in the
             stardist wheel, BSD-3-Clause). capseg is trained as a user would: `train(images=[left half as a 16-bit
             TIFF])`, no masks, then predicts both halves. REPORTED: the right half (held out). The left half is
             where the splitting's two constants (SEED_SPACING, MIN_AREA in capseg.objects) were chosen, with the
             true masks and blur + Otsu, so its rows are marked `tuning`. capseg is trained with seeds 0, 1, 2: its
             row is their mean, `capseg_per_seed` each.
  synthetic  `touching_objects` frames (384², touching ellipses of brightness 0.5-1, noise std 0.15), written as 16-bit
             TIFFs: capseg trains on one frame of a draw (no masks) and predicts another frame of the same draw.
             Seeds 0-2: tuning (the splitting was chosen there with the true masks and blur + Otsu); seeds 100-102:
             REPORTED, never looked at while choosing.
Rows per data set: capseg (its own phase, as `predict` gives it), blur_otsu (Gaussian σ 1.5 px + Otsu, the phase
with the better pixel IoU: generous to the baseline), unet (real only: bench/unet.py trained on the left half's masks,
the ceiling), truth (the true foreground split the same way: what the splitting itself can reach). Metrics: object
precision, recall, F1 and AP = TP/(TP+FP+FN) at IoU 0.5, AP and F1 averaged over IoU 0.5:0.05:0.95, mean matched IoU,
count error (%), pixel IoU (%); seconds of training, prediction and labelling.
stardist_check: capseg.objects.matching against stardist.matching.matching on every (true, predicted) pair above, at
each threshold: the largest difference of any field (tp, fp, fn, precision, recall, accuracy, f1, mean_true_score,
mean_matched_score, panoptic_quality).
Writes bench/results/segment_objects.json.   Usage: python bench/segment_objects.py [--quick] [--only real|synthetic]
"""
import os
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse, platform, sys, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from capseg.core import load_json, save_json
from capseg.objects import IOU_THRESHOLDS, label_objects, matching, object_metrics, touching_objects
from capseg.seg_model import blur_otsu
from bench.segment_real import SPLIT_COLUMN, UNET_EPOCHS, UNET_PATIENCE, overlapping, package_data, split
from bench.unet import train_unet

RESULTS = ROOT / 'bench' / 'results' / 'segment_objects.json'
TUNING, REPORTED = (0, 1, 2), (100, 101, 102)
TRAIN_SEEDS = (0, 1, 2)       # capseg's training seeds on the real frame: the row is their mean, each kept
KEYS = ('f1', 'precision', 'recall', 'ap', 'ap_mean', 'f1_mean', 'mean_matched_iou', 'count_error')
FIELDS = ('tp', 'fp', 'fn', 'precision', 'recall', 'accuracy', 'f1', 'mean_true_score', 'mean_matched_score',
          'panoptic_quality')


def pixel_iou(fg: np.ndarray, truth: np.ndarray) -> float:
    return 100 * float((fg & truth).sum() / max((fg | truth).sum(), 1))


def scored(fg: np.ndarray, labels: np.ndarray, pairs: list) -> dict:
    "The object metrics (%) of foreground `fg` split into objects, against true `labels`; the pair kept for checks."
    t = time.perf_counter()
    found = label_objects(fg)
    seconds = time.perf_counter() - t
    pairs.append((labels, found))
    m = object_metrics([(labels, found)])
    return {k: round(m[k] if k == 'count_error' else 100 * m[k], 2) for k in KEYS} | dict(
        objects_true=m['objects_true'], objects_pred=m['objects_pred'], pixel_iou=round(pixel_iou(fg, labels > 0), 2),
        label_seconds=round(seconds, 3))


def otsu_phase(image: np.ndarray, truth: np.ndarray) -> np.ndarray:
    "blur + Otsu's phase with the better pixel IoU against the true foreground."
    fg = blur_otsu(image[None])[0] > 0
    return fg if pixel_iou(fg, truth) >= pixel_iou(~fg, truth) else ~fg


def capseg_run(train_frames: list, out: Path, quick: bool, seed: int = 0) -> tuple:
    "`train(images=TIFFs, seed=seed)` as a user runs it, without masks; (the model folder, training seconds)."
    from capseg import segment
    t = time.perf_counter()
    segment.train(images=[str(f) for f in train_frames], out=out, device='cpu', figures=False, quiet=True,
                  overwrite=True, seed=seed, **(dict(epochs=2) if quick else {}))
    return out, time.perf_counter() - t


def predicted(model: Path, image: np.ndarray) -> tuple:
    "capseg's foreground of `image` (its own phase) and the seconds it took."
    from capseg import segment
    t = time.perf_counter()
    fg = segment.predict(model, image, device='cpu')
    return fg, time.perf_counter() - t


def unet_foreground(d: dict, cache: Path, quick: bool) -> tuple:
    """The supervised UNet's foreground of the whole frame (trained on the left half's masks as in segment_real.py)
    and its training seconds; kept in `cache`, so that rerunning capseg does not retrain the ceiling."""
    if cache.exists() and not quick:
        with np.load(cache) as z: return z['fg'], float(z['seconds'])
    data = split(d)
    crops = overlapping(data)
    t = time.perf_counter()
    unet, _ = train_unet(crops.image_train, crops.mask_train, epochs=3 if quick else UNET_EPOCHS,
                         patience=UNET_PATIENCE, seed=0, threads=1)
    seconds = time.perf_counter() - t
    lo, hi = d['normalisation']['values']
    fg = unet(((d['image'].astype(np.float32) - lo) / (hi - lo))[None])[0] > 0.5
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, fg=fg, seconds=seconds)
    return fg, seconds


def real(runs: Path, quick: bool, pairs: list) -> dict:
    import tifffile
    d = package_data()
    image, labels = d['image'], d['labels']
    halves = {'train (tuning)': np.s_[:, :SPLIT_COLUMN], 'test (reported)': np.s_[:, SPLIT_COLUMN:]}
    (runs / 'files').mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(runs / 'files' / 'train.tif', image[:, :SPLIT_COLUMN])
    unet_fg, unet_seconds = unet_foreground(d, runs / 'unet.npz', quick)
    seeds = TRAIN_SEEDS[:1] if quick else TRAIN_SEEDS
    runs_ = {s: capseg_run([runs / 'files' / 'train.tif'], runs / f'capseg_seed{s}', quick, s) for s in seeds}
    out = dict(source=f"{d['package']} {d['version']} {', '.join(d['files'])}", licence=d['licence'],
               origin=d['origin'], capseg_seeds=list(seeds),
               train_seconds=dict(capseg=round(float(np.mean([s for _, s in runs_.values()])), 1),
                                  unet=round(unet_seconds, 1)))
    for name, cols in halves.items():
        truth, x = labels[cols], image[cols]
        per_seed = {}
        for s, (model, _) in runs_.items():
            fg, seconds = predicted(model, x)
            per_seed[str(s)] = scored(fg, truth, pairs) | dict(predict_seconds=round(seconds, 2))
        out[name] = dict(capseg=mean_rows({s: dict(capseg=r) for s, r in per_seed.items()})['capseg'],
                         capseg_per_seed=per_seed,
                         blur_otsu=scored(otsu_phase(x.astype(np.float32), truth > 0), truth, pairs),
                         unet=scored(unet_fg[cols], truth, pairs), truth=scored(truth > 0, truth, pairs))
        print(name, {k: v['f1'] for k, v in out[name].items() if 'f1' in v},
              {s: r['f1'] for s, r in per_seed.items()}, flush=True)
    return out


def synthetic(runs: Path, quick: bool, pairs: list, seeds) -> dict:
    import tifffile
    out = {}
    for seed in seeds:
        frames = []
        for k in range(2):                     # frame 0 trains, frame 1 is scored
            image, labels = touching_objects(384, seed=1000 * seed + k)
            raw = np.clip(image * 20000 + 3000, 0, 65535).astype(np.uint16)
            path = runs / f'seed{seed}' / f'frame{k}.tif'
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, raw)
            frames.append((path, raw, labels))
        model, train_seconds = capseg_run([frames[0][0]], runs / f'seed{seed}' / 'capseg', quick)
        _, raw, truth = frames[1]
        fg, seconds = predicted(model, raw)
        out[str(seed)] = dict(capseg=scored(fg, truth, pairs) | dict(train_seconds=round(train_seconds, 1),
                                                                     predict_seconds=round(seconds, 2)),
                              blur_otsu=scored(otsu_phase(raw.astype(np.float32), truth > 0), truth, pairs),
                              truth=scored(truth > 0, truth, pairs))
        print('seed', seed, {k: v['f1'] for k, v in out[str(seed)].items()}, flush=True)
    return out


def mean_rows(per_seed: dict) -> dict:
    "Per method: the mean of each metric over seeds."
    methods = next(iter(per_seed.values())).keys()
    return {m: {k: round(float(np.mean([s[m][k] for s in per_seed.values()])), 2) for k in KEYS + ('pixel_iou',)}
            for m in methods}


def stardist_check(pairs: list) -> dict:
    "The largest difference between capseg.objects.matching and stardist's on `pairs`, over fields and thresholds."
    from stardist.matching import matching as stardist_matching
    worst = 0.0
    for true, pred in pairs:
        for t in IOU_THRESHOLDS:
            ours, theirs = matching(true, pred, t), stardist_matching(true, pred, thresh=t)._asdict()
            worst = max(worst, *(abs(float(ours[f]) - float(theirs[f])) for f in FIELDS))
    return dict(pairs=len(pairs), thresholds=list(IOU_THRESHOLDS), fields=list(FIELDS), max_abs_difference=worst)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='smoke test: 2 epochs, one seed each, results under /tmp')
    ap.add_argument('--only', choices=['real', 'synthetic'], help='(re)run only this part')
    ap.add_argument('--runs', type=Path, default=ROOT / 'runs' / 'bench_objects')
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = Path('/tmp/segment_objects_quick.json') if a.quick else RESULTS
    res = load_json(results) if results.exists() else {}
    res.update(description=__doc__.split('\n\n')[0], machine=dict(cpus=os.cpu_count(), torch=torch.__version__,
               python=platform.python_version(), torch_threads=1), quick=a.quick)
    pairs = []
    if a.only in (None, 'real'):
        res['real'] = real(a.runs / 'real', a.quick, pairs)
        save_json(res, results)
    if a.only in (None, 'synthetic'):
        tuning = synthetic(a.runs / 'synthetic', a.quick, pairs, TUNING[:1] if a.quick else TUNING)
        reported = synthetic(a.runs / 'synthetic', a.quick, pairs, REPORTED[:1] if a.quick else REPORTED)
        res['synthetic'] = dict(tuning=dict(seeds=tuning, mean=mean_rows(tuning)),
                                reported=dict(seeds=reported, mean=mean_rows(reported)))
        save_json(res, results)
    res['stardist_check'] = stardist_check(pairs)
    save_json(res, results)
    print('stardist_check', res['stardist_check']['max_abs_difference'], 'over', len(pairs), 'pairs')


if __name__ == '__main__':
    main()
