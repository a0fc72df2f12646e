"""Segmentation benchmark: the seed's pipeline vs capseg's default vs blur + Otsu vs a supervised upper bound.

Same machine, same process, on the generated noisy shapes (1000 train + 1000 test, seed 0) at noise 0.5, 0.75, 1.0.
The seed pipeline runs 275 epochs at noise 0.5 and 60 elsewhere (`--full`: 275 everywhere, ~3× longer); its state
after epoch 60 is scored too — with its constant learning rate that is exactly a 60-epoch run. Writes
bench/results/segment.json and prints a markdown table.  Usage: python bench/segment.py [--full] [--noise 0.5 ...]
"""
import os
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')   # before torch: idle OpenMP threads sleep instead of spinning,
                                                       # which keeps timings sane when other processes share the cores
import argparse, json, platform, shutil, sys, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from capseg.core import save_json
from capseg.data import make_shapes
from capseg.segment import (ARCHS, bench_table, baseline_scores, build_net, cpu_threads, images_per_second, infer,
                            normalize, score, train)

RESULTS = ROOT / 'bench' / 'results' / 'segment.json'
KEEP = ('test_iou', 'test_iou_per_image', 'train_iou', 'train_seconds', 'train_cpu_seconds', 'wall_seconds',
        'inference_images_per_s', 'epochs', 'alpha', 'baseline_test_iou')


def snapshot_at(epoch: int, out: Path):
    "A train() callback that copies the checkpoint after `epoch` epochs to out/epoch{epoch}.pt."
    def callback(e, history):
        if e == epoch: shutil.copyfile(out / 'checkpoint.pt', out / f'epoch{epoch}.pt')
    return callback


def score_snapshot(path: Path, data) -> dict:
    "Score a seed checkpoint saved mid-run on the test split, as train() scores its final model."
    ck = torch.load(path, weights_only=False)
    r = ARCHS['seed']
    net = build_net(r.net, r.widths)
    net.load_state_dict(ck['model'])
    with cpu_threads(r.threads):
        x = normalize(data.image_test, ck['norm'])
        s = score(x, infer(net, x), data.mask_test, r.alpha)
        speed = images_per_second(net, x)
    return dict(test_iou=s['iou_batch_level'], test_iou_per_image=s['iou_per_image'], train_seconds=ck['train_seconds'],
                train_cpu_seconds=ck.get('cpu_seconds'), inference_images_per_s=speed, epochs=ck['epoch'])


def run(name, fn, results, noise):
    load = os.getloadavg()[0]
    t = time.perf_counter()
    r = fn()
    r = {k: v for k, v in r.items() if k in KEEP} | {'load_average_before': round(load, 2),
                                                    'load_average_after': round(os.getloadavg()[0], 2)}
    results['noise'][noise][name] = r
    results['seconds'] = time.perf_counter() - T0
    save_json(results, RESULTS)
    print(f"noise {noise} {name:10s} IoU {r['test_iou']:6.2f}  train {r.get('train_seconds') or 0:6.1f} s  "
          f"{r.get('inference_images_per_s') or 0:8.0f} img/s  (load {load:.1f}, {time.perf_counter() - t:.0f} s)",
          flush=True)


def main(argv=None):
    global T0, RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--noise', type=float, nargs='+', default=[0.5, 0.75, 1.0])
    ap.add_argument('--full', action='store_true', help='seed pipeline for 275 epochs at every noise level')
    ap.add_argument('--out', type=Path, default=ROOT / 'runs' / 'bench_segment', help='training runs go here')
    ap.add_argument('--results', type=Path, default=RESULTS, help='the JSON to write')
    ap.add_argument('--quick', action='store_true', help='smoke test: 3 epochs each (the seed scored after 2)')
    a = ap.parse_args(argv)
    RESULTS = a.results
    short = dict(epochs=3) if a.quick else {}
    snap = 2 if a.quick else 60
    T0 = time.perf_counter()
    results = dict(machine=dict(cpus=os.cpu_count(), torch=torch.__version__, torch_threads=torch.get_num_threads(),
                                python=platform.python_version(), processor=platform.processor() or platform.machine(),
                                omp_wait_policy=os.environ.get('OMP_WAIT_POLICY'), device='cpu'),
                   started=time.strftime('%Y-%m-%d %H:%M:%S'), noise={},
                   notes='IoU: flip-invariant, %, threshold 0.5; test_iou batch-level (flip chosen per batch of 32 test '
                         'images, as the seed), test_iou_per_image per image. train_seconds: wall time of the '
                         'training passes; train_cpu_seconds: their CPU time. Seed pipeline: 275 epochs at noise 0.5'
                         + (' and elsewhere' if a.full else ', 60 elsewhere (run with --full for 275 everywhere)') +
                         '; seed_60 is the same run scored after epoch 60. supervised: the default network trained on '
                         'the masks with BCE (upper bound, reference only). No masks are used by the other methods.')
    for noise in a.noise:
        key = f'{noise:g}'
        results['noise'][key] = {}
        data = make_shapes(noise=noise)
        out = a.out / f'noise{key}'
        run('blur_otsu', lambda: {**(b := baseline_scores(data.image_test, data.mask_test)), 'test_iou': b['iou'],
                                  'test_iou_per_image': b['iou_per_image'], 'inference_images_per_s': b['images_per_s']},
            results, key)
        run('default', lambda: train(data, out=out / 'default', device='cpu', **short), results, key)
        run('supervised', lambda: train(data, out=out / 'supervised', device='cpu', supervised=True, figures=False,
                                        **short), results, key)
        seed_epochs = 3 if a.quick else 275 if (noise == 0.5 or a.full) else 60
        name = 'seed_275' if seed_epochs > snap else 'seed_60'
        run(name, lambda: train(data, out=out / 'seed', arch='seed', epochs=seed_epochs, device='cpu',
                                callback=snapshot_at(snap, out / 'seed')), results, key)
        if seed_epochs > snap:
            run('seed_60', lambda: score_snapshot(out / 'seed' / f'epoch{snap}.pt', data), results, key)
    d = results['noise'].get('0.5', {}).get('default')
    if d:
        results['targets'] = dict(iou_ge_90=d['test_iou'] >= 90, train_le_60s=d['train_seconds'] <= 60,
                                  inference_ge_5000=d['inference_images_per_s'] >= 5000)
    results['seconds'] = time.perf_counter() - T0
    save_json(results, RESULTS)
    print(bench_table(results))
    print(f"\n{results['seconds'] / 60:.1f} min; targets at noise 0.5: {results.get('targets')}")


if __name__ == '__main__':
    main()
