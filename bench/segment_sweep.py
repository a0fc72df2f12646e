"""Segmentation sweep: test IoU against the noise level, on data the default was not tuned on.

For each noise σ in {0.25, 0.5, 0.75, 1.0} and each of three data seeds (100, 101, 102 — the default's settings were
worked out on seeds 0 and 10–21), 1000 + 1000 noisy shapes (`make_shapes`), and for each method:

  default     capseg's default recipe, all automatic (alpha from the noise level, network screened by held-out SURE)
  seed_60     the seed's pipeline (SEED_FACTS.md: its network, init, SGD settings, batch 32, alpha 0.001,
              augmentation) for 60 epochs
  blur_otsu   Gaussian blur (σ 1.5 px) + Otsu's threshold per image
  chan_vese   skimage.segmentation.chan_vese per image, its default parameters (mu 0.25, 500 iterations)
  supervised  the network the default chose, trained on the masks with binary cross-entropy (for reference
              only: no other method sees a mask; the default beats it at σ ≤ 0.5, so it is no ceiling)
  unet        a supervised UNet 32/64/128 with skip connections, BCE + Dice, early stop on 10 % of the train images
              (bench/unet.py): the real ceiling

and, on other generators (`OTHER`: several shapes, dark shapes on a grey background with varied contrast, 64×64
images with larger shapes), the default, blur + Otsu and chan_vese at σ 0.5 and 1.0 for two seeds.

Every result is written to bench/results/segment_sweep.json as soon as it exists, and a rerun skips what is there
(`--fresh` starts over), so an interrupted sweep loses at most one training run. `--part K/N` runs every N-th
data set of the grid, so N processes (one thread each) share the cores; they write the same file under a lock. The plot, IoU against σ with a
±std band over seeds per method, goes to bench/results/segment_sweep.png.
`--methods` and `--seeds` restrict a run to some methods and data seeds (the rest of the grid waits for a later run).
Usage: python bench/segment_sweep.py [--quick] [--fresh] [--part K/N] [--methods unet] [--seeds 100]
(about 2 hours on 2 CPU cores, plus about 5 min per UNet run at one thread)
"""
import os
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')    # before torch: idle OpenMP threads sleep instead of spinning

import argparse, fcntl, platform, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from capseg.core import load_json, save_json
from capseg.seg_data import make_shapes
from capseg.segment import baseline_scores, train
from bench.report import sweep_table, write_sweep_report
from bench.unet import run_unet

NOISES, SEEDS = (0.25, 0.5, 0.75, 1.0), (100, 101, 102)
OTHER = {'1-3 shapes, sizes ×0.6–1.3': dict(n_shapes=(1, 3), scale=(0.6, 1.3)),
         'dark on grey, contrast 0.5–1.5': dict(polarity='dark', background=0.5, contrast=(0.5, 1.5)),
         '64×64': dict(size=64)}
KEEP = ('test_iou', 'test_iou_per_image', 'train_seconds', 'wall_seconds', 'inference_images_per_s', 'epochs',
        'alpha', 'noise_sigma', 'widths', 'best_epoch', 'selection', 'val_loss_history')
UNET_EPOCHS = 30      # at most; early stop after 8 epochs without a lower validation loss


def methods(data, out: Path, quick: bool) -> dict:
    "name → a function that trains or runs the method on `data` and returns its scores."
    short = dict(epochs=2) if quick else {}
    default = lambda: train(data, out=out / 'default', device='cpu', overwrite=True, figures=False, **short)
    def supervised():
        chosen = load_json(out / 'default' / 'metrics.json')['widths']
        return train(data, out=out / 'supervised', device='cpu', overwrite=True, figures=False, supervised=True,
                     widths=chosen, **short)
    return {'default': default,
            'seed_60': lambda: train(data, out=out / 'seed', arch='seed', epochs=2 if quick else 60, device='cpu',
                                     overwrite=True, figures=False),
            'blur_otsu': lambda: baseline_scores(data.image_test, data.mask_test),
            'chan_vese': lambda: baseline_scores(data.image_test[:64] if quick else data.image_test,
                                                 data.mask_test[:64] if quick else data.mask_test, 'chan_vese'),
            'supervised': supervised,
            'unet': lambda: run_unet(data.image_train, data.mask_train, data.image_test, data.mask_test,
                                     epochs=2 if quick else UNET_EPOCHS, seed=0, threads=1)}


def record(path: Path, update) -> dict:
    "Apply `update` to the results in `path` and write them back, under a lock (several sweep processes share it)."
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix('.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        res = load_json(path) if path.exists() else {}
        update(res)
        save_json(res, path)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='smoke test: 2 epochs, one seed, two noise levels')
    ap.add_argument('--fresh', action='store_true', help='ignore earlier results')
    ap.add_argument('--results', type=Path, default=ROOT / 'bench' / 'results' / 'segment_sweep.json')
    ap.add_argument('--runs', type=Path, default=ROOT / 'runs' / 'bench_sweep', help='training runs go here')
    ap.add_argument('--part', default='0/1', help='K/N: run every N-th data set of the grid, starting at K')
    ap.add_argument('--methods', nargs='+', help='run only these methods (default: all)')
    ap.add_argument('--seeds', nargs='+', type=int, help='run only these data seeds (default: all)')
    a = ap.parse_args(argv)
    k, n = map(int, a.part.split('/'))
    torch.set_num_threads(1)
    if a.fresh and a.results.exists(): a.results.unlink()
    def describe(res):
        res.setdefault('runs', {})
        res.update(machine=dict(cpus=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                                processor=platform.processor() or platform.machine(),
                                omp_wait_policy=os.environ.get('OMP_WAIT_POLICY'), torch_threads=1),
                   settings=dict(noises=NOISES, seeds=SEEDS, n_train=1000, n_test=1000, other=OTHER, quick=a.quick,
                                 seed_pipeline='SEED_FACTS.md: SeedNet 64/128/256, Xavier init with biases 1, SGD lr '
                                               '0.1 momentum 0.9 weight decay 1e-3, batch 32, alpha 0.001, 60 epochs',
                                 unet=f'bench/unet.py: UNet 32/64/128 with skips, BCE + Dice, AdamW lr 1e-3, batch 32, '
                                      f'dihedral augmentation, ≤ {UNET_EPOCHS} epochs, early stop (patience 8) on 10 % '
                                      'of the train images, one thread'),
                   iou="flip-invariant IoU in %, threshold 0.5, flip chosen per batch of 32 test images (the seed's)")
    res = record(a.results, describe)
    shapes = ('default', 'supervised', 'unet', 'seed_60', 'blur_otsu', 'chan_vese')
    conditions = [('shapes', {}, n, s, shapes) for n in NOISES for s in SEEDS]
    conditions += [(name, gen, n, s, ('default', 'blur_otsu', 'chan_vese')) for name, gen in OTHER.items()
                   for n in (0.5, 1.0) for s in SEEDS[:2]]
    if a.quick: conditions = [c for c in conditions if c[2] in (0.5, 1.0) and c[3] == SEEDS[0]]
    grid = [(setting, gen, noise, seed, m) for setting, gen, noise, seed, ms in conditions[k::n] for m in ms
            if (not a.methods or m in a.methods) and (not a.seeds or seed in a.seeds)]
    t0 = time.perf_counter()
    for setting, gen, noise, seed, method in grid:
        key = f'{setting}|{noise}|{seed}|{method}'
        if key in res['runs']: continue
        data = make_shapes(noise=noise, seed=seed, **gen)
        out = a.runs / setting.replace(' ', '_').replace('×', 'x') / f'noise{noise}_seed{seed}'
        load, t = os.getloadavg()[0], time.perf_counter()
        r = methods(data, out, a.quick)[method]()
        r = {k: r[k] for k in KEEP if k in r} | dict(setting=setting, noise=noise, seed=seed, method=method,
                                                      seconds=time.perf_counter() - t, load_average=round(load, 2))
        def add(res, key=key, r=r): res['runs'][key] = r; res['seconds'] = res.get('seconds', 0) + r['seconds']
        res = record(a.results, add)
        print(f"{setting:32s} σ {noise:<4} seed {seed} {method:10s} IoU {r['test_iou']:6.2f}  ({r['seconds']:.0f} s, "
              f"load {load:.1f})", flush=True)
    write_sweep_report(res, a.results.with_suffix('.png'), a.results.with_suffix('.md'))
    print(sweep_table(res))
    print(f'\n{(time.perf_counter() - t0) / 60:.1f} min this run')


if __name__ == '__main__':
    main()
