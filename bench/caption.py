"""Captioning speed: the seed's pipeline vs capseg's, on the full-size ViT-GPT2 architecture, same machine, same run.

The architecture is nlpconnect/vit-gpt2-image-captioning's -- ViT-base/16-224 (`ViTConfig()`) + GPT-2 124M with
cross-attention (`GPT2Config(add_cross_attention=True)`) -- built from configs with random weights, so nothing is
downloaded. GPT-2's vocabulary cannot be downloaded either: a byte-level BPE tokenizer is trained on the real Flickr8k
captions (../shared/data/flickr8k_text) with GPT-2's vocabulary size as its target; the model keeps GPT-2's 50257-row
embedding whatever the tokenizer's size, so every matrix has the full-size shape. Images are stand-ins at Flickr8k's
usual 500x375 (JPEG), captioned with real Flickr8k captions.

The seed side uses the settings of ../shared/SEED_FACTS.md (SEED below; they are written into the JSON):
  training    ViTImageProcessor per item in __getitem__, the first caption only, GPT-2 tokenizer with pad = EOS,
              padding="max_length", truncation=True, max_length=30, pad positions -100 in the labels; batch 4,
              torch.optim.AdamW(lr=5e-5) with its defaults, no scheduler, no clipping, no AMP.
  generation  one image per `generate` call (processor per image): max_new_tokens=30, num_beams=5,
              repetition_penalty=2.5, no_repeat_ngram_size=3, early_stopping=True.
The capseg side is capseg's own code with its defaults: pixels cached once (CaptionDataset), a random reference
caption, dynamic padding with EOS kept in the labels, batch 8, fused AdamW, gradient clipping, capseg's default
precision (`resolve_amp`: bf16 only on CUDA or a CPU with native bf16, else fp32); generation batched
(`generate_captions`: beam 5, 30 new tokens, no repeated trigram, the cross-attention cache left in place by beam
search). Also measured, to show where the time goes: capseg generating with `generate`'s full cache reorder, capseg
training with a frozen encoder, and fp32 where the default is bf16.
Random weights never emit EOS, so every caption is 30 tokens on both sides.

Every measurement runs in its own process (nothing one leaves behind -- memory, threads, caches -- helps or hurts the
next), one after the other, in alternating order, `--repeats` times; the JSON has each repeat, the median and the range,
wall and CPU time per image, and the load average: the machine may be shared.

Writes bench/results/caption.json.  Run: .venv/bin/python bench/caption.py  (about 30 minutes on 2 busy CPU cores)
"""
import os
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')   # before torch: spinning OpenMP threads starve a shared small CPU

import argparse, json, platform, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import capseg.caption as C
from capseg.caption_data import CaptionItem, parse_flickr8k_tokens, read_image_list
from capseg.core import get_device, save_json

TEXT = ROOT.parent/'shared'/'data'/'flickr8k_text'
SEED = {'max_length': 30, 'truncation': True, 'padding': 'max_length', 'captions': 'the first of each image',
        'processor': 'per item, in __getitem__', 'labels': 'input ids, pad (= EOS) positions -100', 'batch': 4,
        'optimizer': 'torch.optim.AdamW(lr=5e-5), defaults', 'scheduler': None, 'grad_clip': None, 'amp': None,
        'generate': {'max_new_tokens': 30, 'num_beams': 5, 'repetition_penalty': 2.5, 'no_repeat_ngram_size': 3,
                     'early_stopping': True},
        'generate_images_per_call': 1}
CAPSEG_BATCH = 8
TRAIN_JOBS = ('seed', 'capseg', 'capseg_frozen_encoder', 'capseg_fp32')
GEN_JOBS = ('seed', 'capseg', 'capseg_full_cache_reorder', 'capseg_fp32')


def bpe_tokenizer(captions, vocab_size=50257):
    "A GPT-2 style byte-level BPE tokenizer trained on `captions`, with <|endoftext|> as BOS/EOS/UNK and pad = EOS."
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(captions, vocab_size=vocab_size, min_frequency=2, special_tokens=['<|endoftext|>'], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token='<|endoftext|>', eos_token='<|endoftext|>',
                                  unk_token='<|endoftext|>')
    tok.pad_token = tok.eos_token   # as the seed (and GPT-2 checkpoints): no pad token of its own
    return tok


def full_size_model(tokenizer, seed=0):
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel
    torch.manual_seed(seed)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(), GPT2Config(add_cross_attention=True))
    return C.set_special_ids(VisionEncoderDecoderModel(config=cfg), tokenizer)


def stand_in_images(names, folder, seed=0):
    "500x375 JPEGs: a smooth random background with a few filled shapes (decoding and resizing cost like a photo's)."
    rng = np.random.default_rng(seed)
    for n in names:
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        d = ImageDraw.Draw(im)
        for _ in range(4):
            x, y, r = rng.integers(0, 500), rng.integers(0, 375), rng.integers(20, 90)
            d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        im.save(folder/n, quality=90)


class SeedDataset(torch.utils.data.Dataset):
    "The seed's dataset: the processor runs on every access; the first caption, padded and truncated to 30 tokens."
    def __init__(self, items, processor, tokenizer):
        self.items, self.processor, self.tokenizer = items, processor, tokenizer
    def __len__(self): return len(self.items)
    def __getitem__(self, i):
        it = self.items[i]
        px = self.processor(images=Image.open(it.path).convert('RGB'), return_tensors='pt').pixel_values[0]
        ids = self.tokenizer(it.captions[0], padding=SEED['padding'], max_length=SEED['max_length'],
                             truncation=SEED['truncation']).input_ids
        labels = torch.tensor([t if t != self.tokenizer.pad_token_id else -100 for t in ids])   # EOS masked too (the bug)
        return {'pixel_values': px, 'labels': labels}


def timed_steps(step, loader, warmup, steps, batch):
    "Run `step` on `warmup + steps` batches; per image: wall and CPU seconds of the timed ones, and where the wall time went."
    it = iter(loader)
    for _ in range(warmup): step(next(it))
    parts, n = {'data': 0.0}, 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        t = time.perf_counter(); b = next(it); parts['data'] += time.perf_counter() - t
        for k, v in step(b).items(): parts[k] = parts.get(k, 0.0) + v
        n += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {'images_per_s': batch * n / wall, 'cpu_seconds_per_image': cpu / (batch * n), 'batch': batch, 'timed_steps': n,
            'seconds_per_step': {k: v / n for k, v in {'total': wall, **parts}.items()}}


def seed_train(model, items, processor, tokenizer, a, device):
    model.train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    dl = torch.utils.data.DataLoader(SeedDataset(items, processor, tokenizer), batch_size=SEED['batch'], shuffle=True)
    def step(b):
        t = time.perf_counter()
        model(pixel_values=b['pixel_values'].to(device), labels=b['labels'].to(device)).loss.backward()
        t1 = time.perf_counter()
        opt.step(); opt.zero_grad()
        return {'forward_backward': t1 - t, 'optimizer': time.perf_counter() - t1}
    return {**timed_steps(step, dl, a.warmup, a.steps, SEED['batch']), 'padded_length': SEED['max_length']}


def capseg_train(model, items, processor, tokenizer, a, device, amp, frozen):
    tf = C.ImageTransform(processor)
    t = time.perf_counter()
    ds = C.CaptionDataset(items, tf, tokenizer, desc='bench')
    cache_s = (time.perf_counter() - t) / len(ds)
    model.train().to(device)
    for p in model.encoder.parameters(): p.requires_grad_(not frozen)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = C.make_optimizer(params, 5e-5, device=device)
    autocast, scaler = C.amp_context(device, amp, C.n_params(model))
    dl = torch.utils.data.DataLoader(ds, batch_size=CAPSEG_BATCH, shuffle=True,
                                     collate_fn=lambda b: C.collate_captions(b, tf, tokenizer.eos_token_id))
    lengths = []
    def step(b):
        lengths.append(b['labels'].shape[1])
        t = time.perf_counter()
        loss = C.batch_loss(model, b, device, autocast)
        (scaler.scale(loss) if scaler else loss).backward()
        t1 = time.perf_counter()
        C.optimizer_step(opt, params, scaler)
        return {'forward_backward': t1 - t, 'optimizer': time.perf_counter() - t1}
    r = timed_steps(step, dl, a.warmup, a.steps, CAPSEG_BATCH)
    return {**r, 'amp': C.resolve_amp(device, amp, C.n_params(model)), 'frozen_encoder': frozen, 'mean_padded_length': float(np.mean(lengths[a.warmup:])),
            'pixel_cache_seconds_per_image_once': cache_s}


@torch.no_grad()
def seed_generate(model, items, processor, tokenizer, device):
    model.eval().to(device)
    px = processor(images=Image.open(items[0].path).convert('RGB'), return_tensors='pt').pixel_values.to(device)
    model.generate(px, **{**SEED['generate'], 'max_new_tokens': 2})   # warm-up
    tokens, wall, cpu = [], time.perf_counter(), time.process_time()
    for it in items:
        px = processor(images=Image.open(it.path).convert('RGB'), return_tensors='pt').pixel_values.to(device)
        ids = model.generate(px, **SEED['generate'])
        tokenizer.decode(ids[0], skip_special_tokens=True)
        tokens.append(ids.shape[1] - 1)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {'images_per_s': len(items) / wall, 'cpu_seconds_per_image': cpu / len(items), 'batch': 1,
            'mean_new_tokens': float(np.mean(tokens))}


def capseg_generate(model, items, processor, tokenizer, a, device, amp):
    cap, tf = C.Captioner(model, tokenizer, processor, 'bench', False), C.ImageTransform(processor)
    pixels = torch.stack([tf(it.load()) for it in items])
    C.generate_captions(cap, pixels[:1], generation=C.generation_config(max_new_tokens=2), device=device, amp=amp)   # warm-up
    tokens, generate = [], model.generate
    def counted(*args, **kw):
        ids = generate(*args, **kw); tokens.append(ids.shape[1] - 1); return ids
    model.generate = counted
    wall, cpu = time.perf_counter(), time.process_time()
    C.generate_captions(cap, pixels, batch_size=a.gen_batch, generation=C.generation_config(), device=device, amp=amp)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {'images_per_s': len(items) / wall, 'cpu_seconds_per_image': cpu / len(items), 'batch': a.gen_batch,
            'amp': C.resolve_amp(device, amp, C.n_params(model)), 'mean_new_tokens': float(np.mean(tokens))}


def worker(a):
    "One measurement (`--job train:NAME` or `generate:NAME`) in this process; prints its JSON."
    from transformers import AutoTokenizer, ViTImageProcessor
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
    kind, name = a.job.split(':')
    setup = json.loads((a.work/'setup.json').read_text())
    tokenizer = AutoTokenizer.from_pretrained(a.work/'tokenizer')
    processor = ViTImageProcessor()    # 224x224, mean = std = 0.5: nlpconnect's settings
    caps = parse_flickr8k_tokens(TEXT/'Flickr8k.token.txt')
    items = [CaptionItem(n, caps[n], path=a.work/n) for n in setup['names']]
    device = get_device(a.device)
    if name == 'capseg_full_cache_reorder': C._beam_cache = lambda model: {}   # beam search reorders all caches, as before
    amp = 'off' if name == 'capseg_fp32' else 'auto'
    model = full_size_model(tokenizer)
    n_train = setup['n_train']
    if kind == 'train':
        if name == 'seed': r = seed_train(model, items[:n_train], processor, tokenizer, a, device)
        else: r = capseg_train(model, items[:n_train], processor, tokenizer, a, device, amp, name == 'capseg_frozen_encoder')
    elif name == 'seed': r = seed_generate(model, items[n_train:], processor, tokenizer, device)
    else: r = capseg_generate(model, items[n_train:], processor, tokenizer, a, device, amp)
    r['peak_rss_gb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    r['load_average_1min_end'] = os.getloadavg()[0]
    print(json.dumps(r))


def run_job(a, job: str) -> dict:
    cmd = [sys.executable, __file__, '--job', job, '--work', str(a.work), '--steps', str(a.steps), '--warmup', str(a.warmup),
           '--gen-batch', str(a.gen_batch)] + (['--device', a.device] if a.device else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode: sys.exit(f'{job} failed:\n{p.stderr[-3000:]}')
    r = json.loads(p.stdout.strip().splitlines()[-1])
    print(job, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != 'seconds_per_step'}, flush=True)
    return r


def summarise(runs: list[dict], seed_runs: list[dict]) -> dict:
    "Each repeat's result, and the median and range of images/s and of the speed-up over the seed's run of the same repeat."
    def stats(xs): return {'median': statistics.median(xs), 'min': min(xs), 'max': max(xs)}
    out = {'images_per_s': stats([r['images_per_s'] for r in runs]),
           'cpu_seconds_per_image': stats([r['cpu_seconds_per_image'] for r in runs])}
    if runs is not seed_runs:
        out['speedup_vs_seed'] = stats([r['images_per_s'] / s['images_per_s'] for r, s in zip(runs, seed_runs)])
        out['cpu_speedup_vs_seed'] = stats([s['cpu_seconds_per_image'] / r['cpu_seconds_per_image'] for r, s in zip(runs, seed_runs)])
    keep = ('batch', 'amp', 'frozen_encoder', 'padded_length')
    return {**{k: runs[0][k] for k in keep if k in runs[0]}, **out, 'repeats': runs}


def rounded(x, nd=4):
    if isinstance(x, float): return round(x, nd)
    if isinstance(x, dict): return {k: rounded(v, nd) for k, v in x.items()}
    if isinstance(x, list): return [rounded(v, nd) for v in x]
    return x


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=3, help='timed training steps per measurement (after --warmup)')
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--repeats', type=int, default=3, help='measurements of each pipeline, in alternating order')
    ap.add_argument('--gen-images', type=int, default=16, help='images captioned per generation measurement')
    ap.add_argument('--gen-batch', type=int, default=16)
    ap.add_argument('--device', default=None)
    ap.add_argument('--out', type=Path, default=ROOT/'bench'/'results'/'caption.json')
    ap.add_argument('--job', help=argparse.SUPPRESS)
    ap.add_argument('--work', type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.job: return worker(a)

    t_all, load0 = time.perf_counter(), os.getloadavg()[0]
    caps = parse_flickr8k_tokens(TEXT/'Flickr8k.token.txt')
    n_train = max(SEED['batch'], CAPSEG_BATCH) * (a.warmup + a.steps)
    names = read_image_list(TEXT/'Flickr_8k.trainImages.txt')[:n_train + a.gen_images]
    a.work = Path(tempfile.mkdtemp(prefix='capseg-bench-'))
    tokenizer = bpe_tokenizer([c for cs in caps.values() for c in cs])
    tokenizer.save_pretrained(a.work/'tokenizer')
    stand_in_images(names, a.work)
    (a.work/'setup.json').write_text(json.dumps({'names': names, 'n_train': n_train}))
    device = get_device(a.device)
    model = full_size_model(tokenizer)
    n_params = C.n_params(model)
    default_amp = C.resolve_amp(device, 'auto', n_params)
    res = {'device': str(device), 'cpu': platform.processor() or platform.machine(), 'cpus': os.cpu_count(),
           'cpu_native_bf16': C._native_cpu_bf16(), 'torch_threads': torch.get_num_threads(),
           'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'), 'torch': torch.__version__,
           'transformers': __import__('transformers').__version__,
           'attention': {'encoder': model.encoder.config._attn_implementation, 'decoder': model.decoder.config._attn_implementation},
           'architecture': 'ViT-base/16-224 + GPT-2 124M with cross-attention (from configs, random weights)',
           'parameters_millions': round(n_params / 1e6, 1), 'tokenizer_vocab': len(tokenizer),
           'model_vocab': model.config.decoder.vocab_size, 'images': 'stand-ins 500x375 JPEG, real Flickr8k captions',
           'seed_max_length': SEED['max_length'], 'seed_settings': SEED, 'capseg_batch': CAPSEG_BATCH,
           'capseg_default_amp': default_amp, 'warmup_steps': a.warmup, 'timed_steps': a.steps, 'repeats': a.repeats,
           'gen_images': a.gen_images}
    del model
    if device.type == 'cuda': res['gpu'] = torch.cuda.get_device_name()
    print(json.dumps({k: res[k] for k in ('device', 'parameters_millions', 'tokenizer_vocab', 'capseg_default_amp')}), flush=True)

    train_jobs = [j for j in TRAIN_JOBS if not (j == 'capseg_fp32' and default_amp == 'off')]
    gen_jobs = [j for j in GEN_JOBS if not (j == 'capseg_fp32' and default_amp == 'off')]
    runs, loads = {}, []
    for rep in range(a.repeats):
        order = [f'train:{j}' for j in train_jobs] + [f'generate:{j}' for j in gen_jobs]
        if rep % 2: order = order[::-1]
        loads.append(os.getloadavg()[0])
        for job in order: runs.setdefault(job, []).append(run_job(a, job))
    res['train'] = {j: summarise(runs[f'train:{j}'], runs['train:seed']) for j in train_jobs}
    res['generate'] = {j: summarise(runs[f'generate:{j}'], runs['generate:seed']) for j in gen_jobs}
    res['targets'] = {'train_speedup': 1.5, 'generate_speedup': 3.0}
    res['met'] = {'train': res['train']['capseg']['speedup_vs_seed']['median'] >= 1.5,
                  'generate': res['generate']['capseg']['speedup_vs_seed']['median'] >= 3.0}
    res['bench_seconds'] = round(time.perf_counter() - t_all, 1)
    res['load_average_1min'] = {'start': load0, 'each_repeat_start': loads, 'end': os.getloadavg()[0]}   # other processes
    res = rounded(res)
    save_json(res, a.out)
    print(json.dumps({k: res[k] for k in ('met', 'bench_seconds', 'load_average_1min')}))
    return res


if __name__ == '__main__':
    main()
