"""Training on folders of image files: peak memory against the number and the size of the frames.

Writes 16-bit TIFF folders of noisy-shapes mosaics, then runs `capseg segment train --images DIR --epochs 1` in a process
of its own for each and records its peak RSS and wall time: 8 and 80 frames of 1024² (memory must not grow with the
number of frames), and 64 frames of 4096² (2 GiB of TIFFs: under 3 GB RSS). Writes bench/results/segment_files.json.
Usage: python bench/segment_files.py [--quick] (--quick: 2 and 20 frames of 512², 8 of 2048²)."""
import argparse, json, os, platform, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

from capseg.seg_data import make_shapes_split

RESULTS = Path(__file__).parent / 'results' / 'segment_files.json'


def write_frames(folder: Path, n: int, side: int) -> int:
    "`n` 16-bit TIFF frames of `side`² (mosaics of 64² noisy shapes, noise 0.5); the bytes written."
    import tifffile
    folder.mkdir(parents=True)
    k = side // 64
    for i in range(n):
        ims, _, _ = make_shapes_split(k * k, noise=0.5, size=64, seed=i)
        frame = ims.reshape(k, k, 64, 64).transpose(0, 2, 1, 3).reshape(side, side)
        tifffile.imwrite(folder / f'f{i:03d}.tif', np.clip(frame * 8000 + 16000, 0, 65535).astype(np.uint16))
    return sum(f.stat().st_size for f in folder.iterdir())


def train_once(folder: Path, out: Path) -> dict:
    "Peak RSS (MB) and wall seconds of one epoch of `capseg segment train` on `folder`, in a process of its own."
    script = ('import resource, sys; from capseg.cli import main\n'
              'try: main(sys.argv[1:])\n'
              'except SystemExit: pass\n'
              'print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)')
    t = time.perf_counter()
    r = subprocess.run([sys.executable, '-c', script, 'segment', 'train', '--images', str(folder), '--out', str(out),
                        '--epochs', '1', '--json'], capture_output=True, text=True,
                       env={**os.environ, 'CAPSEG_DEVICE': 'cpu'})
    wall = time.perf_counter() - t
    lines = r.stdout.strip().splitlines()
    if r.returncode or len(lines) < 2: raise RuntimeError(r.stderr[-2000:])
    metrics = json.loads(lines[-2])
    return dict(peak_rss_mb=round(int(lines[-1]) / 1024, 1), wall_seconds=round(wall, 1),
                train_seconds=round(metrics['train_seconds'], 1), crop=metrics['crop'], n_frames=metrics['n_frames'])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--quick', action='store_true')
    args = ap.parse_args()
    cases = ([('few', 2, 512), ('many', 20, 512), ('large', 8, 2048)] if args.quick
             else [('few', 8, 1024), ('many', 80, 1024), ('large', 64, 4096)])
    work = Path(tempfile.mkdtemp(prefix='capseg-files-'))
    results = dict(machine=dict(cpus=os.cpu_count(), python=platform.python_version()), quick=args.quick, runs={})
    try:
        for name, n, side in cases:
            size = write_frames(work / name, n, side)
            run = train_once(work / name, work / f'{name}-run')
            results['runs'][name] = dict(frames=n, side=side, tiff_bytes=size, **run)
            print(name, results['runs'][name], flush=True)
            shutil.rmtree(work / name)
        few, many = results['runs']['few'], results['runs']['many']
        results['rss_ratio_many_vs_few'] = round(many['peak_rss_mb'] / few['peak_rss_mb'], 3)
    finally: shutil.rmtree(work, ignore_errors=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != 'runs'}))


if __name__ == '__main__': main()
