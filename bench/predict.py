"""Prediction at scale: folder prediction (capseg's DataLoader pipeline) against a per-image loop, for both jobs, and the
peak memory of whole runs over 1,000 and 10,000 images.

segment    the default recipe (CVNet), trained for a few seconds on the noisy shapes (the speed does not depend on how
           well it is trained); 32x32 grey PNG files in subfolders of 1,000; a PNG mask written per image.
caption    the tiny model, trained briefly on captioned shapes; 48x48 RGB PNG files; beam search 5, 30 new tokens.
full-size  ViT-base/16-224 + GPT-2 124M with cross-attention built from configs with random weights (as bench/caption.py
           builds it; random weights never emit EOS, so every caption is 30 tokens); a few 500x375 JPEG files.

folder:         `capseg.JOB.predict(model, [folder], out=DIR)` iterated to the end: DataLoader workers read and
                decode, the main process predicts, writes masks and appends predictions.jsonl (the CLI's path).
per-image loop: for each file, the same library pieces one image at a time: read, predict, write.
images/s counts from the first image to the last record (model loading excluded); cpu_ms_per_image is the CPU time
of the run's processes (main and workers) per image, which depends less on the load than the wall time. Each run of the
folder pipeline is a fresh process: the peak RSS of its main process (VmHWM) and the peak, sampled every 50 ms, of the
summed proportional set size (PSS) of the process and its DataLoader workers (their RSS would count shared pages twice).

The machine is shared: every measurement carries the 1-minute load average before it; repeats report each value and
the median. Writes bench/results/predict.json.
Run: .venv/bin/python bench/predict.py [--repeats 3] [--sizes 1000 10000] [--full-images 8]  (~10 min on 2 CPU cores)
"""
import os
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')   # before torch: spinning OpenMP threads starve a shared small CPU

import argparse, importlib.util, json, platform, resource, shutil, statistics, subprocess, sys, tempfile, threading, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from capseg.core import get_device, save_json

RESULTS = ROOT / 'bench' / 'results' / 'predict.json'
TARGETS = {'segment_folder_images_per_s': 2000, 'caption_tiny_speedup_vs_loop': 3.0, 'peak_memory_ratio_10k_vs_1k': 1.2}


def load() -> float: return round(os.getloadavg()[0], 2)


# --- data and models

def segment_files(root: Path, n: int, per_folder: int = 1000) -> Path:
    "n noisy-shape 32x32 grey PNG files in subfolders of `per_folder`."
    from capseg.seg_data import make_shapes_split
    ims, _, _ = make_shapes_split(n, noise=0.5, seed=11)
    for i, a in enumerate((np.clip(ims, 0, 1) * 255).astype(np.uint8)):
        d = root / f'{i // per_folder:03d}'
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(d / f'{i:05d}.png')
    return root


def caption_files(root: Path, n: int, per_folder: int = 1000) -> Path:
    "n captioned-shapes 48x48 RGB PNG files (the tiny model's own input size) in subfolders of `per_folder`."
    from capseg.caption_data import captioned_shapes
    for i, it in enumerate(captioned_shapes(0, 0, n, seed=11)['test']):
        d = root / f'{i // per_folder:03d}'
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(it.pixels).save(d / f'{i:05d}.png')
    return root


def train_models(tmp: Path) -> dict:
    from capseg import caption, segment
    from capseg.seg_data import make_shapes
    seg = tmp / 'segment-model'
    segment.train(make_shapes(n_train=256, n_test=64, seed=1), out=seg, epochs=3, figures=False, device='cpu')
    cap = tmp / 'caption-model'
    caption.train(shapes=True, model='tiny', out=cap, epochs=3, device='cpu',
                  shapes_kw=dict(n_train=1500, n_val=50, n_test=50))
    return {'segment': seg, 'caption': cap}


def files_in(folder: Path) -> list[Path]: return sorted(folder.rglob('*.png'))


# --- one folder run in a fresh process: speed and peak memory

def _descendants(pid: int) -> list[int]:
    parents = {}
    for d in os.listdir('/proc'):
        if d.isdigit():
            try: parents[int(d)] = int(open(f'/proc/{d}/stat').read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError): pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids; todo += kids
    return out


def _pss_kb(pid: int) -> int:
    try:
        for line in open(f'/proc/{pid}/smaps_rollup'):
            if line.startswith('Pss:'): return int(line.split()[1])
    except OSError: pass
    return 0


def _status_kb(field: str, pid='self') -> int:
    for line in open(f'/proc/{pid}/status'):
        if line.startswith(field + ':'): return int(line.split()[1])
    return 0


def _cpu_seconds() -> float:
    "CPU time of this process and its reaped children (the DataLoader workers, once the run is over)."
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def child(job: str, model: str, folder: str, out: str, batch_size: int | None):
    "Run one folder prediction in this process; print speed and peak memory as JSON."
    import importlib
    predict = importlib.import_module(f'capseg.{job}').predict
    me, peak, running = os.getpid(), [0], [True]
    def sample():
        while running[0]:
            peak[0] = max(peak[0], sum(_pss_kb(p) for p in [me] + _descendants(me)))
            time.sleep(0.05)
    kw = {} if batch_size is None else {'batch_size': batch_size}
    preds = predict(model, [folder], out=out, device='cpu', **kw)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t, cpu = time.perf_counter(), _cpu_seconds()
    n = sum(1 for _ in preds)
    seconds, cpu = time.perf_counter() - t, _cpu_seconds() - cpu
    running[0] = False
    sampler.join()
    print(json.dumps({'images': n, 'failed': preds.failed, 'seconds': round(seconds, 3), 'images_per_s': round(n / seconds, 1),
                      'cpu_ms_per_image': round(1000 * cpu / n, 3),
                      'peak_rss_mb': round(_status_kb('VmHWM') / 1024, 1),
                      'peak_tree_pss_mb': round(peak[0] / 1024, 1), 'workers': preds.workers, 'batch_size': preds.batch_size}))


def folder_run(job: str, model: Path, folder: Path, out: Path, batch_size: int | None = None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    before = load()
    r = subprocess.run([sys.executable, __file__, '--child', job, str(model), str(folder), str(out), str(batch_size or 0)],
                       capture_output=True, text=True, env={**os.environ, 'CAPSEG_DEVICE': 'cpu'})
    if r.returncode: raise RuntimeError(r.stderr[-3000:])
    res = {**json.loads(r.stdout.strip().splitlines()[-1]), 'load_before': before}
    lines = (out / 'predictions.jsonl').read_text().splitlines()
    assert len(lines) == res['images'] and res['failed'] == 0, 'every image has its record'
    shutil.rmtree(out, ignore_errors=True)
    return res


# --- per-image loops: the same library pieces, one image at a time

def segment_loop(model: Path, files: list[Path], out: Path) -> dict:
    from capseg.segment import cpu_threads, infer, load_model, normalize, read_grey
    net, rec = load_model(model, 'cpu')
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    before, t, cpu = load(), time.perf_counter(), time.process_time()
    with cpu_threads(rec['recipe'].get('threads')):
        for f in files:
            im = read_grey(f)
            p = infer(net, normalize(im[None], rec['norm']))[0, 0]      # the network pads and crops any size itself
            fg = (p < 0.5) if rec.get('flip') else (p > 0.5)
            Image.fromarray(fg.numpy().astype(np.uint8) * 255).save(out / f.name)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    shutil.rmtree(out, ignore_errors=True)
    return {'images': len(files), 'seconds': round(seconds, 3), 'images_per_s': round(len(files) / seconds, 1),
            'cpu_ms_per_image': round(1000 * cpu / len(files), 3), 'load_before': before}


def caption_loop(cap, files: list[Path]) -> dict:
    from capseg.caption import ImageTransform, generate_captions, generation_config
    from capseg.caption_data import load_image
    tf = ImageTransform(cap.processor)
    before, t = load(), time.perf_counter()
    for f in files: generate_captions(cap, tf(load_image(f))[None], batch_size=1, generation=generation_config(), device='cpu',
                                      bar=False)
    seconds = time.perf_counter() - t
    return {'images': len(files), 'seconds': round(seconds, 3), 'images_per_s': round(len(files) / seconds, 3),
            'load_before': before}


def caption_folder_in_process(cap, folder: Path, out: Path, batch_size: int) -> dict:
    from capseg.caption import generation_config, predict
    shutil.rmtree(out, ignore_errors=True)
    preds = predict(cap, [folder], out=out, device='cpu', batch_size=batch_size, generation=generation_config())
    before, t = load(), time.perf_counter()
    n = sum(1 for _ in preds)
    seconds = time.perf_counter() - t
    assert n and preds.failed == 0
    shutil.rmtree(out, ignore_errors=True)
    return {'images': n, 'seconds': round(seconds, 3), 'images_per_s': round(n / seconds, 3), 'batch_size': batch_size,
            'load_before': before}


def full_size_captioner():
    "The full-size architecture with random weights, its BPE tokenizer and nlpconnect's processor (bench/caption.py's)."
    spec = importlib.util.spec_from_file_location('bench_caption', ROOT / 'bench' / 'caption.py')
    bc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bc)
    from transformers import ViTImageProcessor
    from transformers.utils import logging as hf_logging
    from capseg.caption import Captioner
    from capseg.caption_data import captioned_shapes
    hf_logging.set_verbosity_error()
    if bc.TEXT.exists(): captions = [c for cs in bc.parse_flickr8k_tokens(bc.TEXT / 'Flickr8k.token.txt').values() for c in cs]
    else: captions = [c for it in captioned_shapes(2000, 0, 0)['train'] for c in it.captions]
    tokenizer = bc.bpe_tokenizer(captions)              # pad = EOS, as the seed
    return Captioner(bc.full_size_model(tokenizer), tokenizer, ViTImageProcessor(), 'full-size (random weights)', False), bc


def median(runs: list[dict], key: str = 'images_per_s') -> float: return statistics.median(r[key] for r in runs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeats', type=int, default=3, help='repeats of each speed measurement')
    ap.add_argument('--sizes', type=int, nargs='+', default=[1000, 10000], help='folder sizes of the memory measurement')
    ap.add_argument('--loop-images', type=int, default=1000, help='images of the segmentation per-image loop')
    ap.add_argument('--caption-images', type=int, default=500, help='images of the captioning speed measurement')
    ap.add_argument('--caption-loop-images', type=int, default=100)
    ap.add_argument('--full-images', type=int, default=8, help='images of the full-size measurement (0: skip it)')
    ap.add_argument('--out', type=Path, default=RESULTS)
    ap.add_argument('--child', nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        job, model, folder, out, bs = a.child
        return child(job, model, folder, out, int(bs) or None)
    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix='capseg-bench-predict-'))
    res = {'machine': {'cpu': platform.processor() or platform.machine(), 'cores': os.cpu_count(), 'torch': torch.__version__,
                       'torch_threads': torch.get_num_threads(), 'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'),
                       'device': str(get_device('cpu')), 'load_average_start': list(np.round(os.getloadavg(), 2))},
           'targets': TARGETS}
    try:
        print('training the models...', flush=True)
        models = train_models(tmp)
        big = max(a.sizes)
        seg_root = segment_files(tmp / 'seg', big)
        cap_root = caption_files(tmp / 'cap', big)
        folder = lambda root, n: root if n == big else _subset(root, n, tmp / f'{root.name}-{n}')

        # segmentation: speed (folder vs loop), then memory at each size
        seg_1k = folder(seg_root, min(a.sizes))
        seg = res['segment'] = {'files': '32x32 grey PNG, noisy shapes', 'folder': [], 'per_image_loop': []}
        for _ in range(a.repeats):
            seg['folder'].append(folder_run('segment', models['segment'], seg_1k, tmp / 'out'))
            print('segment folder', seg['folder'][-1], flush=True)
            seg['per_image_loop'].append(segment_loop(models['segment'], files_in(seg_1k)[:a.loop_images], tmp / 'loop'))
            print('segment loop', seg['per_image_loop'][-1], flush=True)
        seg['memory'] = {}
        for n in a.sizes:
            r = seg['memory'][str(n)] = folder_run('segment', models['segment'], folder(seg_root, n), tmp / 'out')
            print(f'segment memory {n}', r, flush=True)

        # captioning with the tiny model
        from capseg.caption import load_captioner
        tiny = load_captioner(models['caption'])
        cap_speed = folder(cap_root, a.caption_images)
        cap = res['caption_tiny'] = {'files': '48x48 RGB PNG, captioned shapes', 'folder': [], 'per_image_loop': []}
        for _ in range(a.repeats):
            cap['folder'].append(folder_run('caption', models['caption'], cap_speed, tmp / 'out'))
            print('caption folder', cap['folder'][-1], flush=True)
            cap['per_image_loop'].append(caption_loop(tiny, files_in(cap_speed)[:a.caption_loop_images]))
            print('caption loop', cap['per_image_loop'][-1], flush=True)
        cap['memory'] = {}
        for n in a.sizes:
            r = cap['memory'][str(n)] = folder_run('caption', models['caption'], folder(cap_root, n), tmp / 'out')
            print(f'caption memory {n}', r, flush=True)

        # full-size ViT-GPT2, random weights: a few images, batched vs one at a time
        if a.full_images:
            full, bc = full_size_captioner()
            jpgs = tmp / 'jpg'
            jpgs.mkdir()
            bc.stand_in_images([f'{i:03d}.jpg' for i in range(a.full_images)], jpgs)
            files = sorted(jpgs.glob('*.jpg'))
            res['caption_full_size'] = {
                'files': f'{a.full_images} stand-in 500x375 JPEG', 'parameters_millions': round(sum(p.numel() for p in full.model.parameters()) / 1e6, 1),
                'folder': caption_folder_in_process(full, jpgs, tmp / 'out', batch_size=a.full_images),
                'per_image_loop': caption_loop(full, files[:max(2, a.full_images // 2)])}
            print('full size', res['caption_full_size'], flush=True)

        s = res['summary'] = {
            'segment_folder_images_per_s': median(seg['folder']), 'segment_loop_images_per_s': median(seg['per_image_loop']),
            'caption_tiny_folder_images_per_s': median(cap['folder']),
            'caption_tiny_loop_images_per_s': median(cap['per_image_loop'])}
        s['segment_folder_cpu_ms_per_image'] = median(seg['folder'], 'cpu_ms_per_image')
        s['segment_folder_images_per_s_10k'] = seg['memory'][str(big)]['images_per_s']
        s['segment_speedup_vs_loop'] = round(s['segment_folder_images_per_s'] / s['segment_loop_images_per_s'], 2)
        s['caption_tiny_speedup_vs_loop'] = round(s['caption_tiny_folder_images_per_s'] / s['caption_tiny_loop_images_per_s'], 2)
        if a.full_images:
            f = res['caption_full_size']
            s['caption_full_size_speedup_vs_loop'] = round(f['folder']['images_per_s'] / f['per_image_loop']['images_per_s'], 2)
        lo, hi = str(min(a.sizes)), str(max(a.sizes))
        for job, r in (('segment', seg), ('caption_tiny', cap)):
            for k in ('peak_rss_mb', 'peak_tree_pss_mb'):
                s[f'{job}_{k}'] = {n: r['memory'][n][k] for n in (lo, hi)}
                s[f'{job}_{k}_ratio_{hi}_vs_{lo}'] = round(r['memory'][hi][k] / r['memory'][lo][k], 3)
        ratios = [v for k, v in s.items() if '_ratio_' in k]
        s['met'] = {'segment_folder_images_per_s': s['segment_folder_images_per_s'] >= TARGETS['segment_folder_images_per_s'],
                    'caption_tiny_speedup_vs_loop': s['caption_tiny_speedup_vs_loop'] >= TARGETS['caption_tiny_speedup_vs_loop'],
                    'peak_memory_ratio_10k_vs_1k': max(ratios) <= TARGETS['peak_memory_ratio_10k_vs_1k']}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res['machine']['load_average_end'] = list(np.round(os.getloadavg(), 2))
    res['bench_seconds'] = round(time.perf_counter() - t_all, 1)
    save_json(res, a.out)
    print(json.dumps(res['summary'], indent=1))
    return res


def _subset(root: Path, n: int, dest: Path) -> Path:
    "The first n files of `root` (subfolders kept), hard-linked into `dest` (once)."
    if dest.exists(): return dest
    for f in files_in(root)[:n]:
        (dest / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        os.link(f, dest / f.relative_to(root))
    return dest


if __name__ == '__main__':
    main()
