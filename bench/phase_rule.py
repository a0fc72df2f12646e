"""Which phase is the foreground, without masks: training's old border rule against the sea rule, on real frames.

The camera benchmark (bench/segment_camera.py) keeps every capseg model it trained (runs/bench_camera/*_capseg/,
16-bit TIFF of the training half beside it). For each, both rules decide the phase from the model's masks of its
training frames (no masks used): `border` (the phase covering most of the image border is the background, in most
frames: capseg up to 2026-12) and `sea` (`capseg.seg_train._above_is_background`: the phase whose largest connected
piece holds the larger share of it is the background; the border decides where neither does). The truth is the phase
that fits the held-out half's mask better; `iou_*` is the held-out pixel IoU (%) of the phase each rule gives.
Training is the same under both rules (the phase is decided after it), so these models stand for runs of either.
Writes bench/results/phase_rule.json. Usage: python bench/phase_rule.py [--runs runs/bench_camera]
"""
import argparse, sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import segment_camera as cam
from capseg import segment
from capseg.core import save_json
from capseg.seg_train import _above_is_background

RESULTS = ROOT / 'bench' / 'results' / 'phase_rule.json'


def border_high(above: np.ndarray) -> bool:
    return np.concatenate([above[0], above[-1], above[1:-1, 0], above[1:-1, -1]]).mean() > 0.5


def decide(run: Path) -> dict:
    "Both rules' phase and the truth for the camera benchmark's run folder `run` (frame_photons_falloff_seed_capseg)."
    name, photons, falloff, seed = run.name.split('_')[:4]
    d = cam.package_data(name)
    frames = d['image'] if photons == 'real' else cam.camera(d['image'], int(photons), float(falloff), int(seed))
    (train, test), test_m = cam.halves(name, frames), cam.halves(name, d['labels'] > 0)[1]
    flip = bool(segment.load_model(run / 'model', 'cpu')[1]['flip'])
    above = lambda xs: [m ^ flip for m in segment.predict(run / 'model', list(xs), device='cpu')]   # p > 0.5
    tr, te = above(train), np.stack(above(test))
    vote = lambda rule: sum(rule(a) for a in tr) > len(tr) / 2
    rules = dict(border=vote(border_high), sea=vote(lambda a: _above_is_background(torch.from_numpy(a.astype(np.float32)))))
    ious = {False: cam.iou(te, test_m), True: cam.iou(~te, test_m)}      # by whether p > 0.5 is the background
    role = 'reported' if photons == 'real' else cam.SEEDS[int(seed)]
    return dict(run=run.name, frame=name, role=role, truth_flip=ious[True] > ious[False],
                **{f'{k}_flip': bool(v) for k, v in rules.items()}, **{f'iou_{k}': round(ious[v], 2) for k, v in rules.items()})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=Path, default=ROOT / 'runs' / 'bench_camera')
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for run in sorted(a.runs.glob('*_capseg')):
        rows.append(decide(run))
        print(rows[-1], flush=True)
    right = lambda k, f=None: sum(r[f'{k}_flip'] == r['truth_flip'] for r in rows if f in (None, r['frame']))
    save_json(dict(description=__doc__, runs=rows, summary={
        f or 'all': dict(models=sum(f in (None, r['frame']) for r in rows), border_right=right('border', f),
                         sea_right=right('sea', f)) for f in (None, *cam.FRAMES)}), RESULTS)


if __name__ == '__main__':
    main()
