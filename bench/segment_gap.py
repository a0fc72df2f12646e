"""Closing the gap to the supervised UNet without masks: what each candidate gains over the default, and at what cost.

For each (noise σ, data seed) the default is trained once (no masks) on 1000 + 1000 noisy shapes, and its test IoU is
measured as it is and with each candidate added on top (none of them sees a mask):

  flip2       the probability averaged over the 2 horizontal flips (test-time augmentation)
  dihedral8   ... over the 8 flips and rotations of the square (the augmentation the default trains with)
  refine      per-image refinement (`capseg.seg_model.refine_probability`, now part of the default): 10 Adam steps
              (lr 0.3, on the logits) of each test image's Chan–Vese energy at α = 2.2 σ̂², started from the
              network's output. Adam moves a logit by at most about lr per step, so only pixels with |logit| < 3 can
              change side: the uncertain ones along the boundaries
  self_train  self-training: the dihedral8 probabilities of the TRAIN images, thresholded at 0.5, are the labels of a
              UNet 8/16/32 with skip connections (bench/unet.py: BCE + Dice, ≤ 15 epochs, early stop on 10 % of the
              train images); the student is what is scored

beside each one's inference speed (images/s, one thread, the 1000 test images) and, for self_train, its extra
training time. The settings (10 steps at lr 0.3; the student's size and epochs) were chosen on the tuning draws, data
seeds 0 and 10 (--tune); the reported draws are the sweep's seeds 100–102, not looked at before. The supervised UNet
ceiling at the same σ comes from bench/results/segment_sweep.json. Writes bench/results/segment_gap.json, each
result as it arrives (a rerun skips what is there).
Usage: python bench/segment_gap.py [--tune] [--noise 0.5 1.0] [--seeds 100 101 102]   (about 80 s per data set)"""
import argparse, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.unet import iou_scores, train_unet
from capseg.core import load_json, save_json
from capseg.seg_data import make_shapes
from capseg.segment import Refined, fused_for_inference, infer, load_model, normalize, train

RESULTS = ROOT / 'bench' / 'results' / 'segment_gap.json'
SWEEP = ROOT / 'bench' / 'results' / 'segment_sweep.json'
STUDENT_WIDTHS, STUDENT_EPOCHS = (8, 16, 32), 15


def dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    "Transform `k` of the 8 symmetries of the square (k < 4: rotations by k·90°, then the same mirrored)."
    if not inverse:
        x = torch.flip(x, (-1,)) if k >= 4 else x
        return torch.rot90(x, k % 4, (-2, -1))
    x = torch.rot90(x, -(k % 4), (-2, -1))
    return torch.flip(x, (-1,)) if k >= 4 else x


def averaged(net, x: torch.Tensor, ks) -> torch.Tensor:
    "The mean probability over the transforms `ks`, each undone."
    return torch.stack([dihedral(infer(net, dihedral(x, k)), k, inverse=True) for k in ks]).mean(0)


def timed(f):
    "`(f(), seconds)`: its result and its best time of 2 runs."
    best = float('inf')
    for _ in range(2):
        t = time.perf_counter()
        p = f()
        best = min(best, time.perf_counter() - t)
    return p, best


def measure(noise: float, seed: int) -> dict:
    d = make_shapes(noise=noise, seed=seed)
    with tempfile.TemporaryDirectory() as out:
        metrics = train(d, out=out, figures=False, quiet=True, device='cpu')
        model, rec = load_model(out, 'cpu')
    model = fused_for_inference(model)
    net = model.net if isinstance(model, Refined) else model      # the network alone
    x, n = normalize(d.image_test, rec['norm']), len(d.image_test)
    row = dict(noise=noise, seed=seed, train_seconds=round(metrics['train_seconds'], 1), alpha=rec['alpha'])
    score = lambda p, s: dict(test_iou=round(iou_scores(p[:, 0].numpy(), d.mask_test)['test_iou'], 2),
                              images_per_s=round(n / s))
    candidates = {'none': lambda: infer(net, x), 'flip2': lambda: averaged(net, x, [0, 4]),
                  'dihedral8': lambda: averaged(net, x, range(8)),
                  'refine': lambda: infer(Refined(net, **rec['refine']), x)}
    for name, f in candidates.items(): row[name] = score(*timed(f))
    labels = averaged(net, normalize(d.image_train, rec['norm']), range(8))[:, 0].numpy() > 0.5
    student, record = train_unet(d.image_train, labels, epochs=STUDENT_EPOCHS, widths=STUDENT_WIDTHS, threads=1)
    fast = fused_for_inference(student.net)     # timed as the default is: batch norm folded into the convolutions
    _, s = timed(lambda: infer(fast, torch.as_tensor(np.asarray(d.image_test, np.float32))[:, None]))
    row['self_train'] = score(torch.as_tensor(student(d.image_test))[:, None], s) | dict(
        extra_train_seconds=round(record['train_seconds'], 1), epochs=record['epochs'])
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tune', action='store_true', help='the tuning draws (data seeds 0 and 10)')
    ap.add_argument('--noise', type=float, nargs='+', default=[0.25, 0.5, 0.75, 1.0])
    ap.add_argument('--seeds', type=int, nargs='+', default=[100, 101, 102])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [0, 10] if args.tune else args.seeds
    results = load_json(RESULTS) if RESULTS.exists() else {'runs': {}}
    results['settings'] = dict(refine='the model record\'s (capseg default: 10 steps, lr 0.3)', student=dict(
        widths=list(STUDENT_WIDTHS), epochs=STUDENT_EPOCHS), tuning_seeds=[0, 10], n_train=1000, n_test=1000,
        threads=1, iou='flip-invariant test IoU in %, flip chosen per batch of 32 (the sweep\'s)')
    for noise in args.noise:
        for seed in seeds:
            key = f'{noise}/{seed}'
            if key in results['runs']: continue
            results['runs'][key] = dict(measure(noise, seed), draw='tuning' if args.tune else 'reported')
            print(key, results['runs'][key], flush=True)
            save_json(results, RESULTS)
    print(gap_table(results))


def gap_table(results: dict) -> str:
    "Markdown: per σ, the mean over the reported draws of each candidate's IoU and speed, and the UNet ceiling."
    rows = [r for r in results['runs'].values() if r['draw'] == 'reported']
    ceiling = {}
    if SWEEP.exists():
        for r in load_json(SWEEP)['runs'].values():
            if r['method'] == 'unet' and r['setting'] == 'shapes': ceiling.setdefault(r['noise'], []).append(r['test_iou'])
    names = ('none', 'flip2', 'dihedral8', 'refine', 'self_train')
    lines = ['| σ | seeds | ' + ' | '.join(names) + ' | UNet ceiling |', '|---|---|' + '---:|' * (len(names) + 1)]
    for noise in sorted({r['noise'] for r in rows}):
        rs = [r for r in rows if r['noise'] == noise]
        cells = [f"{np.mean([r[m]['test_iou'] for r in rs]):.1f} ({np.mean([r[m]['images_per_s'] for r in rs]):,.0f}/s)"
                 for m in names]
        c = ceiling.get(noise)
        top = f'{np.mean(c):.1f} (n={len(c)})' if c else '–'
        lines.append(f"| {noise} | {len(rs)} | " + ' | '.join(cells) + f' | {top} |')
    return '\n'.join(lines)


if __name__ == '__main__': main()
