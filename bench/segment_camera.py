"""Real frames as a camera records them: capseg (no masks) against a microscopist's classical pipelines.

Data (nothing downloaded; masks only score, except for the UNet ceiling): the two real frames with hand-made masks
that the `stardist` wheel ships (BSD-3-Clause), read from the installed package without importing it
(`bench.segment_real.package_data`'s pattern):
  img2d   `data/images/img2d.tif` + `mask2d.tif`: 512×512 uint16 nuclei, 2018 Data Science Bowl (BBBC038, Caicedo et
          al., Nature Methods 16, 2019; images CC0). Train: columns 0–255; scored: columns 256–511.
  img3d   `data/images/img3d.tif` + `mask3d.tif`: a 31×61×57 uint16 stack of nuclei (StarDist's 3-D example), cut
          into its z-slices (61×57 frames). Train: slices 0–14; scored: slices 16–30 (slice 15 unused; a nucleus
          spanning z can appear in both halves, as nuclei cut by the column split of img2d do).
Each frame is used as it is (`photons` None: the real camera's own frame) and RE-IMAGED by a camera model: the real
frame, its minimum at 0 and its maximum at 1, is the scene s; the expected photo-electrons are
  λ = photons · s · v(r),   v(r) = 1 − (1 − falloff) · (r / r_corner)²   (r from the frame's centre, per frame)
and the recorded counts are GAIN · Poisson(λ) + OFFSET + Normal(0, GAIN · READ_NOISE), rounded, clipped to 16 bits.
The grid: photons at the brightest pixel PHOTONS, fall-off at the corners FALLOFF, camera noise seeds SEEDS.
Rows are marked `tuning` (seed 0: where the data term was chosen) or `reported` (seed 1 and the real frames: never
looked at while choosing).

Methods (each on the held-out half, in its raw counts):
  capseg      `segment.train(images=[16-bit TIFF of the training half])` as a user runs it (no masks), then
              `segment.predict(..., foreground='bright')` on the held-out half (`iou`: nuclei are bright, as every
              classical pipeline assumes); `iou_auto`: the phase `predict` gave by default when these models were
              trained (the border rule, since replaced: bench/phase_rule.py)
  blur_otsu, tophat_otsu, flatfield_otsu, anscombe_otsu: the four classical pipelines, parameters fixed below
              BEFORE any mask was looked at; each scored with the better of its two phases (generous to them)
  unet        bench/unet.py trained on the training half's masks (the ceiling; at most UNET_EPOCHS epochs): too costly
              for every point, run only on UNET_POINTS
IoU: pixel IoU (%) of the foreground against mask > 0 over the whole held-out half.
Tuning-only variants of capseg (records `capseg_alpha_x2`, `capseg_alpha_x4`: alpha 2× and 4× today's for frames;
`capseg_window_16px`: img3d's local-means window 16 px instead of crop/8) were run on tuning rows by the same
`capseg_fg` with the constant patched in; none was kept (see nbs/06_seg_inputs.ipynb, 'Frames as a camera records').
Every record (frame, photons, falloff, seed, method) is written to bench/results/segment_camera.json when it ends
(under a lock, so two processes may share the grid with --part); a rerun skips what is there.
Usage: python bench/segment_camera.py [--quick] [--part K/N] [--role tuning|reported] [--methods ...]
"""
import os
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse, fcntl, importlib.metadata, importlib.util, platform, sys, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from capseg.core import CapsegError, load_json, save_json

PACKAGE = 'stardist'
FRAMES = {'img2d': ('data/images/img2d.tif', 'data/images/mask2d.tif'),
          'img3d': ('data/images/img3d.tif', 'data/images/mask3d.tif')}
# the camera: gain in ADU per photo-electron, offset in ADU, read noise in electrons rms (a typical sCMOS)
GAIN, OFFSET, READ_NOISE = 2.0, 100.0, 1.6
PHOTONS, FALLOFF, SEEDS = (5, 20, 100, 500), (1.0, 0.3), {0: 'tuning', 1: 'reported'}
TUNING_POINTS = ((5, 1.0), (5, 0.3), (500, 0.3), (20, 0.3))   # seed 0 runs only these (img2d and img3d)
# the classical pipelines' parameters, fixed before any mask was looked at (a microscopist's usual choices for nuclei
# about 10–20 px across): Gaussian σ of the pre-blur; the top-hat's disk radius, ~2–3 nucleus radii; the flat-field
# estimate's Gaussian σ, far larger than a nucleus; the dark level subtracted before division and Anscombe: the
# frame's 0.1 percentile (no dark frame is recorded)
BLUR_SIGMA, TOPHAT_RADIUS, FLAT_SIGMA, DARK_PERCENTILE = 1.5, 25, 50.0, 0.1
CLASSICAL = ('blur_otsu', 'tophat_otsu', 'flatfield_otsu', 'anscombe_otsu')
UNET_EPOCHS, UNET_PATIENCE = 40, 8
UNET_POINTS = ((None, 1.0, 0), (20, 0.3, 1))                 # (photons, falloff, seed) where the ceiling runs
RESULTS = ROOT / 'bench' / 'results' / 'segment_camera.json'


def package_data(name: str) -> dict:
    "Frame `name` (2-D, or a z-stack), its label image and where they come from, read from the installed package."
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CapsegError(f"the camera benchmark needs the {PACKAGE} package's files: pip install -e '.[bench]'")
    import tifffile
    folder = Path(spec.submodule_search_locations[0])
    image, labels = (tifffile.imread(folder / f) for f in FRAMES[name])
    meta = importlib.metadata.metadata(PACKAGE)
    return dict(image=image, labels=labels, files=[f'{PACKAGE}/{f}' for f in FRAMES[name]],
                package=f"{PACKAGE} {meta['Version']}", licence=meta.get('License-Expression') or meta.get('License'))


def halves(name: str, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    "(train, test) parts of frame `name`'s array `a`, as N×H×W stacks of frames."
    if name == 'img2d': return a[None, :, :256], a[None, :, 256:]
    return a[:15], a[16:]


def camera(image: np.ndarray, photons: float, falloff: float, seed: int) -> np.ndarray:
    "`image` (H×W or N×H×W) re-imaged by the camera model above (uint16 counts), each frame vignetted about its centre."
    x = image.astype(np.float64)
    s = (x - x.min()) / (x.max() - x.min())
    h, w = x.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    r2 = ((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (((h - 1) / 2) ** 2 + ((w - 1) / 2) ** 2)
    lam = photons * s * (1 - (1 - falloff) * r2)
    rng = np.random.default_rng([seed, photons, round(100 * falloff)])
    counts = GAIN * rng.poisson(lam) + OFFSET + rng.normal(0, GAIN * READ_NOISE, lam.shape)
    return np.clip(np.round(counts), 0, 65535).astype(np.uint16)


def _phase(fg: np.ndarray, truth: np.ndarray) -> np.ndarray:
    "`fg` or its complement, whichever has the better IoU against `truth` (generous to the classical pipelines)."
    return fg if iou(fg, truth) >= iou(~fg, truth) else ~fg


def iou(fg: np.ndarray, truth: np.ndarray) -> float:
    return 100 * float((fg & truth).sum() / max((fg | truth).sum(), 1))


def classical(method: str, frames: np.ndarray) -> np.ndarray:
    "The foreground (N×H×W bool) of classical pipeline `method` on raw `frames` (N×H×W counts), frame by frame."
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import disk, white_tophat
    out = []
    for im in frames.astype(np.float64):
        dark = np.percentile(im, DARK_PERCENTILE)
        if method == 'tophat_otsu': im = white_tophat(im, disk(TOPHAT_RADIUS))
        elif method == 'flatfield_otsu':
            im = np.clip(im - dark, 0, None)
            im = im / np.maximum(gaussian(im, FLAT_SIGMA, preserve_range=True), 1e-6)
        elif method == 'anscombe_otsu': im = 2 * np.sqrt(np.clip(im - dark, 0, None) + 3 / 8)
        b = gaussian(im, BLUR_SIGMA, preserve_range=True)
        out.append(b > threshold_otsu(b) if np.ptp(b) > 0 else np.zeros(b.shape, bool))
    return np.stack(out)


def capseg_fg(train: np.ndarray, test: np.ndarray, out: Path, quick: bool) -> tuple[dict, dict]:
    """capseg trained as a user would (a 16-bit TIFF of the training frames, no masks); its foregrounds of `test` by
    phase rule (`capseg_phases`) and what the training did."""
    import tifffile
    from capseg import segment
    out.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out / 'train.tif', train)
    t = time.perf_counter()
    m = segment.train(images=[str(out / 'train.tif')], out=out / 'model', device='cpu', figures=False, quiet=True,
                      overwrite=True, **(dict(epochs=2) if quick else {}))
    seconds = time.perf_counter() - t
    return capseg_phases(out / 'model', test), dict(train_seconds=round(seconds, 1), epochs=m['epochs'],
                                                    crop=m['crop'], widths=m['widths'], alpha=m.get('alpha'))


def capseg_phases(model: Path, test: np.ndarray) -> dict:
    """The foregrounds (N×H×W bool) of trained `model` on `test`: 'auto' (the phase training chose by its border
    rule: what `predict` gives by default) and 'bright' (`predict(..., foreground='bright')`: a user who knows that
    stained nuclei are bright says so; the classical pipelines get the better of their two phases, at least as much)."""
    from capseg import segment
    return {ph: np.stack([segment.predict(model, t_, device='cpu', foreground=ph) for t_ in test])
            for ph in ('auto', 'bright')}


def unet_fg(train: np.ndarray, train_masks: np.ndarray, test: np.ndarray, quick: bool) -> tuple[np.ndarray, dict]:
    "The supervised UNet (bench/unet.py) on 64×64 crops 32 px apart of the training frames (percentiles 1–99.8)."
    from bench.segment_real import tiles
    from bench.unet import train_unet
    lo, hi = np.percentile(train, (1, 99.8))
    f = lambda a: ((a.astype(np.float32) - lo) / (hi - lo))
    side = min(64, *train.shape[-2:]) // 8 * 8
    x = np.concatenate([tiles(f(a), side, side // 2) for a in train])
    m = np.concatenate([tiles(a.astype(np.float32), side, side // 2) for a in train_masks])
    t = time.perf_counter()
    net, _ = train_unet(x, m, epochs=3 if quick else UNET_EPOCHS, patience=UNET_PATIENCE, seed=0, threads=1)
    return net(f(test)) > 0.5, dict(train_seconds=round(time.perf_counter() - t, 1), crops=len(x), side=side)


def points(role: str | None, quick: bool) -> list[tuple]:
    "(frame, photons, falloff, seed, role) of the grid, tuning rows first."
    grid = []
    for name in FRAMES:
        for seed, r in SEEDS.items():
            if role and r != role: continue
            pts = TUNING_POINTS if r == 'tuning' else [(p, f) for p in PHOTONS for f in FALLOFF]
            grid += [(name, p, f, seed, r) for p, f in pts]
        if role in (None, 'reported'): grid.append((name, None, 1.0, 0, 'reported'))
    return grid[:2] if quick else grid


def key(name, photons, falloff, seed, method) -> str:
    return f'{name}|{photons if photons is not None else "real"}|{falloff}|{seed}|{method}'


def record(results: Path, k: str, rec: dict, meta: dict):
    "Add record `k` to the results file under a lock (several processes may share the grid)."
    with open(results.with_suffix('.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        res = load_json(results) if results.exists() else {}
        res.update(meta)
        res.setdefault('records', {})[k] = rec
        save_json(res, results)


def run_point(pt: tuple, methods, done: set, runs: Path, results: Path, meta: dict, quick: bool, name_as: str):
    name, photons, falloff, seed, role = pt
    d = package_data(name)
    frames = d['image'] if photons is None else camera(d['image'], photons, falloff, seed)
    (train, test), (train_m, test_m) = halves(name, frames), halves(name, d['labels'] > 0)
    for method in methods:
        k = key(name, photons, falloff, seed, name_as if method == 'capseg' else method)
        if k in done: continue
        if method == 'unet' and (photons, falloff, seed) not in UNET_POINTS: continue
        t = time.perf_counter()
        extra = {}
        if method == 'capseg':
            fgs, extra = capseg_fg(train, test, runs / k.replace('|', '_'), quick)
            fg, extra['iou_auto'] = fgs['bright'], round(iou(fgs['auto'], test_m), 2)
        elif method == 'unet': fg, extra = unet_fg(train, train_m, test, quick)
        else: fg = _phase(classical(method, test), test_m)
        rec = dict(frame=name, photons=photons, falloff=falloff, seed=seed, role=role, method=k.split('|')[-1],
                   iou=round(iou(fg, test_m), 2), seconds=round(time.perf_counter() - t, 1)) | extra
        record(results, k, rec, meta)
        print(f"{k:40s} {role:9s} IoU {rec['iou']:5.1f}  ({rec['seconds']:.0f} s)", flush=True)


def summary(res: dict) -> tuple[list, str]:
    """Per grid point (tuning and reported): capseg's IoU in both phases, each classical pipeline's, the best of them,
    capseg's margins over it and over blur + Otsu, the UNet where run, and the tuning variants; as rows and markdown."""
    points_ = {}
    for r in res['records'].values():
        p = points_.setdefault((r['frame'], r['photons'] is None, r['photons'] or 0, -r['falloff'], r['seed']),
                               dict(frame=r['frame'], photons=r['photons'], falloff=r['falloff'], seed=r['seed'],
                                    role=r['role']))
        p[r['method']] = r['iou']
        if r['method'] == 'capseg': p['capseg_auto'] = r.get('iou_auto')
    rows = []
    for k in sorted(points_):
        p = points_[k]
        if 'capseg' not in p or not all(m in p for m in CLASSICAL): continue
        best = max(CLASSICAL, key=lambda m: p[m])
        rows.append(p | dict(best_classical=best, margin_best=round(p['capseg'] - p[best], 2),
                             margin_blur_otsu=round(p['capseg'] - p['blur_otsu'], 2)))
    variants = sorted({m for p in rows for m in p if m.startswith('capseg_') and m != 'capseg_auto'})
    head = ['role', 'frame', 'photons', 'fall-off', 'seed', 'capseg', 'capseg (auto phase)', *CLASSICAL,
            'capseg − best', 'capseg − blur_otsu', 'unet', *variants]
    md = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    f = lambda v: '–' if v is None else f'{v:.1f}' if isinstance(v, float) else str(v)
    for p in rows:
        md.append('| ' + ' | '.join([p['role'], p['frame'], 'real' if p['photons'] is None else str(p['photons']),
                                     f(p['falloff']), str(p['seed']), *(f(p.get(m)) for m in (
                                         'capseg', 'capseg_auto', *CLASSICAL, 'margin_best', 'margin_blur_otsu',
                                         'unet', *variants))]) + ' |')
    return rows, '\n'.join(md)


def rescore(results: Path, runs: Path):
    "Score every capseg record's saved model (under `runs`) again on its held-out half, in both phases."
    res = load_json(results)
    for k, r in res['records'].items():
        model = runs / k.replace('|', '_') / 'model'
        if not r['method'].startswith('capseg') or not model.exists(): continue
        d = package_data(r['frame'])
        frames = d['image'] if r['photons'] is None else camera(d['image'], r['photons'], r['falloff'], r['seed'])
        test, test_m = halves(r['frame'], frames)[1], halves(r['frame'], d['labels'] > 0)[1]
        fgs = capseg_phases(model, test)
        rec = r | dict(iou=round(iou(fgs['bright'], test_m), 2), iou_auto=round(iou(fgs['auto'], test_m), 2))
        record(results, k, rec, {})
        print(f"{k:40s} IoU bright {rec['iou']:5.1f}  auto {rec['iou_auto']:5.1f}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='smoke test: 2 epochs, two grid points, results under /tmp')
    ap.add_argument('--role', choices=sorted(set(SEEDS.values())), help='only these rows')
    ap.add_argument('--frames', nargs='+', choices=list(FRAMES), default=list(FRAMES), help='only these frames')
    ap.add_argument('--methods', nargs='+', default=['capseg', *CLASSICAL, 'unet'])
    ap.add_argument('--part', default='1/1', help='K/N: every N-th grid point from the K-th (N processes share it)')
    ap.add_argument('--redo', action='store_true', help='rerun the chosen records even where they exist')
    ap.add_argument('--rescore', action='store_true', help="score capseg's saved models again (both phases)")
    ap.add_argument('--name', default='capseg', help="capseg's records under this method name (e.g. a variant's)")
    ap.add_argument('--runs', type=Path, default=ROOT / 'runs' / 'bench_camera')
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = Path('/tmp/segment_camera_quick.json') if a.quick else RESULTS
    k, n = map(int, a.part.split('/'))
    meta = dict(description=__doc__, camera=dict(gain_adu_per_electron=GAIN, offset_adu=OFFSET,
                read_noise_electrons=READ_NOISE, photons=list(PHOTONS), falloff=list(FALLOFF)),
                classical=dict(blur_sigma=BLUR_SIGMA, tophat_radius=TOPHAT_RADIUS, flat_sigma=FLAT_SIGMA,
                               dark_percentile=DARK_PERCENTILE),
                unet=dict(max_epochs=UNET_EPOCHS, patience=UNET_PATIENCE, points=[list(p) for p in UNET_POINTS]),
                machine=dict(cpus=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                             torch_threads=1), quick=a.quick)
    if a.rescore: return rescore(results, a.runs), write_summary(results)
    done = set() if a.redo or not results.exists() else set(load_json(results).get('records', {}))
    for pt in [p for p in points(a.role, a.quick) if p[0] in a.frames][k - 1::n]:
        run_point(pt, a.methods, done, a.runs, results, meta, a.quick, a.name)
    write_summary(results)


def write_summary(results: Path):
    "The summary rows into the results file and its table into the .md beside it."
    with open(results.with_suffix('.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        res = load_json(results)
        res['summary'], md = summary(res)
        res['description'] = __doc__
        rep = lambda f: [r for r in res['summary'] if r['role'] == 'reported' and r['frame'] == f]
        res['checks'] = {f: dict(reported_rows=len(rep(f)),
                                 at_least_3_over_best_classical=sum(r['margin_best'] >= 3 for r in rep(f)),
                                 at_least_5_over_blur_otsu=sum(r['margin_blur_otsu'] >= 5 for r in rep(f)))
                         for f in FRAMES}
        save_json(res, results)
    results.with_suffix('.md').write_text('# Real frames as a camera records them (bench/segment_camera.py)\n\n'
                                          'Pixel IoU (%) on the held-out half; the set-up is in the JSON.\n\n'
                                          + md + '\n')


if __name__ == '__main__':
    main()
