"""Test-time augmentation for the segmentation default: does averaging the probability over flips and rotations help?

For each (noise σ, data seed) the default is trained once (no masks), then the test IoU is measured three ways: the
network as it is, the mean probability over the 2 horizontal flips, and over the 8 flips and rotations of the square
(the augmentation it was trained with), beside inference speed. Tuning draws: data seeds 0 and 10 (--tune); reported
draws: 100–102 (the sweep's). Writes bench/results/segment_tta.json (resumable: each result as it arrives).
Usage: python bench/segment_tta.py [--tune] [--noise 0.5 1.0] [--seeds 100 101 102]"""
import argparse, json, tempfile, time
from pathlib import Path

import torch

from capseg.seg_data import make_shapes
from capseg.segment import flip_invariant_iou, fused_for_inference, infer, load_model, normalize, train

RESULTS = Path(__file__).parent / 'results' / 'segment_tta.json'


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


def measure(noise: float, seed: int) -> dict:
    d = make_shapes(noise=noise, seed=seed)
    with tempfile.TemporaryDirectory() as out:
        metrics = train(d, out=out, figures=False, quiet=True, device='cpu')
        net, rec = load_model(out, 'cpu')
    net = fused_for_inference(net)
    x, masks = normalize(d.image_test, rec['norm']), torch.as_tensor(d.mask_test)[:, None]
    row = dict(noise=noise, seed=seed, train_seconds=round(metrics['train_seconds'], 1))
    for name, ks in (('none', [0]), ('flip2', [0, 4]), ('dihedral8', range(8))):
        t = time.perf_counter()
        p = averaged(net, x, ks)
        row[name] = dict(test_iou=round(flip_invariant_iou(p, masks), 3),
                         images_per_s=round(len(x) / (time.perf_counter() - t)))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--tune', action='store_true', help='the tuning draws (data seeds 0 and 10)')
    ap.add_argument('--noise', type=float, nargs='+', default=[0.25, 0.5, 0.75, 1.0])
    ap.add_argument('--seeds', type=int, nargs='+', default=[100, 101, 102])
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [0, 10] if args.tune else args.seeds
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {'runs': {}}
    for noise in args.noise:
        for seed in seeds:
            key = f'{noise}/{seed}'
            if key in results['runs']: continue
            results['runs'][key] = dict(measure(noise, seed), draw='tuning' if args.tune else 'reported')
            print(key, results['runs'][key], flush=True)
            RESULTS.write_text(json.dumps(results, indent=1))


if __name__ == '__main__': main()
