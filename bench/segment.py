"""Segmentation benchmark: the seed's whole pipeline vs capseg's default vs blur + Otsu vs a supervised ceiling.

Same machine, same process, on the generated noisy shapes (1000 train + 1000 test, data seed 100 — not one the
default was tuned on) at noise 0.5 (`--noise` for others). The seed's pipeline uses SEED_FACTS.md's settings (its
network and initialisation, SGD lr 0.1 momentum 0.9 weight decay 1e-3, batch 32, alpha 0.001, its augmentation) for
its 275 epochs; its state after epoch 60 is scored too — with its constant learning rate that is exactly a
60-epoch run. Training time, inference speed and test IoU; bench/segment_sweep.py covers the noise levels.
Writes bench/results/segment.json and prints a markdown table.  Usage: python bench/segment.py [--noise 0.5 ...] [--seed-epochs 60]
"""
import os
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')   # before torch: idle OpenMP threads sleep instead of spinning,
                                                       # which keeps timings sane when other processes share the cores
import argparse, platform, shutil, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from capseg.core import load_weights, save_json
from capseg.seg_data import make_shapes
from bench.report import bench_table
from capseg.segment import (ARCHS, baseline_scores, build_net, cpu_threads, images_per_second, infer,
                            normalize, score, train)

RESULTS = ROOT / 'bench' / 'results' / 'segment.json'
KEEP = ('test_iou', 'test_iou_per_image', 'train_iou', 'train_seconds', 'train_cpu_seconds', 'wall_seconds',
        'inference_images_per_s', 'epochs', 'alpha', 'baseline_test_iou', 'widths', 'noise_sigma', 'selection',
        'best_epoch', 'seconds')


def snapshot_at(epoch: int, out: Path):
    "A train() callback that copies the checkpoint after `epoch` epochs to out/epoch{epoch}.pt."
    def callback(e, history):
        if e == epoch: shutil.copyfile(out / 'checkpoint.pt', out / f'epoch{epoch}.pt')
    return callback


def score_snapshot(path: Path, data) -> dict:
    "Score a seed checkpoint saved mid-run on the test split, as train() scores its final model."
    ck = load_weights(path)
    r = ARCHS['seed']
    net = build_net(r.net, r.widths)
    net.load_state_dict(ck['nets'][0]['model'])
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
    ap.add_argument('--noise', type=float, nargs='+', default=[0.5])
    ap.add_argument('--data-seed', type=int, default=100)
    ap.add_argument('--out', type=Path, default=ROOT / 'runs' / 'bench_segment', help='training runs go here')
    ap.add_argument('--results', type=Path, default=RESULTS, help='the JSON to write')
    ap.add_argument('--seed-epochs', type=int, default=275,
                    help="the seed pipeline's epochs (275, its own; 60 for a quicker run that scores seed_60 only)")
    ap.add_argument('--quick', action='store_true', help='smoke test: 3 epochs each (the seed scored after 2)')
    a = ap.parse_args(argv)
    RESULTS = a.results
    short = dict(epochs=3) if a.quick else {}
    snap = 2 if a.quick else 60
    T0 = time.perf_counter()
    results = dict(machine=dict(cpus=os.cpu_count(), torch=torch.__version__, torch_threads=torch.get_num_threads(),
                                python=platform.python_version(), processor=platform.processor() or platform.machine(),
                                omp_wait_policy=os.environ.get('OMP_WAIT_POLICY'), device='cpu'),
                   started=time.strftime('%Y-%m-%d %H:%M:%S'), noise={}, data_seed=a.data_seed,
                   seed_settings=dict(source='SEED_FACTS.md', network='SeedNet 64/128/256, Xavier-uniform conv '
                                      'weights, conv biases 1, BatchNorm weight 1 and bias 1', optimizer='SGD lr 0.1 '
                                      'momentum 0.9 weight decay 1e-3', batch=32, alpha=1e-3, epochs=275,
                                      augmentation='random choice of flips, rotation ±30°, resized crop, affine'),
                   notes='IoU: flip-invariant, %, threshold 0.5; test_iou batch-level (flip chosen per batch of 32 test '
                         'images, as the seed), test_iou_per_image per image. train_seconds: wall time of the '
                         'training (the default: every candidate and the held-out risk estimates included); '
                         'train_cpu_seconds: its CPU time. seed_60 is the seed run scored after epoch 60. supervised: '
                         'the network the default chose, trained on the masks with BCE (a ceiling, reference only). '
                         'No masks are used by the other methods.')
    for noise in a.noise:
        key = f'{noise:g}'
        results['noise'][key] = {}
        data = make_shapes(noise=noise, seed=a.data_seed)
        out = a.out / f'noise{key}'
        run('blur_otsu', lambda: baseline_scores(data.image_test, data.mask_test), results, key)
        run('default', lambda: train(data, out=out / 'default', device='cpu', overwrite=True, **short), results, key)
        chosen = results['noise'][key]['default']['widths']
        run('supervised', lambda: train(data, out=out / 'supervised', device='cpu', overwrite=True, supervised=True,
                                        figures=False, widths=chosen, **short), results, key)
        seed_epochs = 3 if a.quick else a.seed_epochs
        snapshot = snapshot_at(snap, out / 'seed') if seed_epochs > snap else None   # seed_60 scored mid-run
        run(f'seed_{seed_epochs}', lambda: train(data, out=out / 'seed', arch='seed', epochs=seed_epochs, device='cpu',
                                                 overwrite=True, callback=snapshot), results, key)
        if seed_epochs > snap: run('seed_60', lambda: score_snapshot(out / 'seed' / f'epoch{snap}.pt', data), results, key)
    d = results['noise'].get('0.5', {}).get('default')
    if d:
        sup = results['noise']['0.5']['supervised']['test_iou']
        results['targets'] = dict(iou_ge_92=d['test_iou'] >= 92, iou_ge_97_percent_of_supervised=d['test_iou'] >= 0.97 * sup,
                                  train_le_60s=d['train_seconds'] <= 60,
                                  inference_ge_5000=d['inference_images_per_s'] >= 5000)
    results['seconds'] = time.perf_counter() - T0
    save_json(results, RESULTS)
    print(bench_table(results))
    (RESULTS.parent / 'segment.md').write_text(bench_table(results) + '\n')
    print(f"\n{results['seconds'] / 60:.1f} min; targets at noise 0.5: {results.get('targets')}")


if __name__ == '__main__':
    main()
