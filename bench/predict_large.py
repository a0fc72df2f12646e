"""Prediction of one large image: peak RSS and speed of `capseg segment predict` on a 12,000 × 12,000 8-bit PNG, masks
alone and with `--instances` (label image, object table), run one after the other on the same machine.

The model is the default recipe trained for a few seconds on the noisy shapes (speed and memory do not depend on how
well it is trained), or --model DIR. The PNG is noisy discs and boxes (a 1,000² block repeated). Each command runs in
a fresh process under a wrapper of which it is the only child; its peak RSS is the wrapper's RUSAGE_CHILDREN
ru_maxrss. `base` is a process that only imports capseg.segment and loads the model. megapixels_per_s counts the
whole command (reading the PNG, the tiles, writing the mask; with --instances also splitting the objects, writing the
uint16 label TIFF and objects.csv) minus base's wall time (interpreter start, imports). `instances_slowdown`: the
ratio of the two commands' times (target at most 1.5).
The machine is shared: the 1-minute load average before each run is recorded. Writes bench/results/predict_large.json.
Run: .venv/bin/python bench/predict_large.py [--side 12000] [--model DIR]   (~2 min on 2 CPU cores)
"""
import argparse, json, os, subprocess, sys, tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / 'bench' / 'results' / 'predict_large.json'
TARGETS = {'peak_rss_gb': 3.0, 'megapixels_per_s': 20.0, 'instances_peak_rss_gb': 3.0, 'instances_slowdown': 1.5}
PEAK = """
import resource, subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def measure(*cmd) -> dict:
    "Wall seconds and peak RSS (bytes) of a command run alone under a wrapper, with the load average before it."
    load = os.getloadavg()[0]
    r = subprocess.run([sys.executable, '-c', PEAK, *map(str, cmd)], capture_output=True, text=True, check=True)
    wall, rss = r.stdout.split()[-2:]
    return dict(wall_s=round(float(wall), 2), peak_rss_bytes=int(rss), load_1min=round(load, 2))


def large_png(path: Path, side: int):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:1000, :1000]
    block = np.zeros((1000, 1000), np.float32)
    for _ in range(50):
        cy, cx, r = rng.uniform(0, 1000, 2).tolist() + [rng.uniform(8, 30)]
        block[np.hypot(yy - cy, xx - cx) < r] = 1
    block = np.clip((block + rng.normal(0, 0.5, block.shape)) * 255, 0, 255).astype(np.uint8)
    reps = -(-side // 1000)
    Image.fromarray(np.tile(block, (reps, reps))[:side, :side]).save(path, compress_level=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--side', type=int, default=12000)
    ap.add_argument('--model', type=Path)
    args = ap.parse_args()
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            from capseg import segment
            from capseg.seg_data import make_shapes
            model = tmp / 'model'
            segment.train(make_shapes(n_train=512, n_test=64, seed=1), out=model, epochs=8, device='cpu', figures=False)
        large_png(tmp / 'large.png', args.side)
        exe = Path(sys.executable).parent / 'capseg'
        base = measure(sys.executable, '-c', f'from capseg import segment; segment.load_model({str(model)!r})')
        run = measure(exe, 'segment', 'predict', '--model', model, tmp / 'large.png', '--out', tmp / 'out')
        objects = measure(exe, 'segment', 'predict', '--model', model, tmp / 'large.png', '--out', tmp / 'objects',
                          '--instances')
        record = json.loads((tmp / 'out' / 'predictions.jsonl').read_text().splitlines()[0])
        found = json.loads((tmp / 'objects' / 'predictions.jsonl').read_text().splitlines()[0])
    megapixels = args.side ** 2 / 1e6
    speed = lambda r: round(megapixels / max(r['wall_s'] - base['wall_s'], 1e-9), 2)
    result = dict(side=args.side, megapixels=megapixels, png_bits=8, base=base, predict=run,
                  peak_rss_gb=round(run['peak_rss_bytes'] / 1e9, 3), megapixels_per_s=speed(run),
                  megapixels_per_s_with_start=round(megapixels / run['wall_s'], 2),
                  foreground_fraction=record.get('foreground_fraction'), predict_instances=objects,
                  instances_peak_rss_gb=round(objects['peak_rss_bytes'] / 1e9, 3),
                  instances_megapixels_per_s=speed(objects),
                  instances_slowdown=round((objects['wall_s'] - base['wall_s']) / (run['wall_s'] - base['wall_s']), 3),
                  objects=found.get('objects'), cpu_count=os.cpu_count(), targets=TARGETS,
                  command='capseg segment predict --model M large.png --out DIR [--instances] (default tiles)')
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + '\n')
    print(json.dumps(result, indent=1))


if __name__ == '__main__': main()
