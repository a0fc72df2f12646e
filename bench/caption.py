"""Captioning speed: the seed's pipeline vs capseg's, on the full-size ViT-GPT2 architecture, same machine, same run.

The architecture is nlpconnect/vit-gpt2-image-captioning's -- ViT-base/16-224 (`ViTConfig()`) + GPT-2 124M with
cross-attention (`GPT2Config(add_cross_attention=True)`) -- built from configs with random weights, so nothing is
downloaded. GPT-2's vocabulary cannot be downloaded either: a byte-level BPE tokenizer is trained on the real Flickr8k
captions (../shared/data/flickr8k_text) with GPT-2's vocabulary size as its target; the model keeps GPT-2's 50257-row
embedding whatever the tokenizer's size, so every matrix has the full-size shape. Images are stand-ins at Flickr8k's
usual 500x375 (JPEG), captioned with real Flickr8k captions.

Training (images/s, after warm-up steps):
  seed    ViTImageProcessor per item in __getitem__, GPT-2 tokenizer padded to a fixed max_length, first caption only,
          pad = EOS with pad positions -100, batch 4, torch.optim.AdamW(lr=5e-5) with its defaults.
  capseg  pixels cached once (CaptionDataset), a random reference caption, dynamic padding with EOS kept in the labels,
          batch 8, fused AdamW, gradient clipping, and capseg's default precision (`resolve_amp`: bf16 autocast on CUDA,
          and on a CPU with native bf16 for a model this size); also fp32, and the default with a frozen encoder.
Generation (images/s): seed = one image at a time (processor per image, beam 5, 30 new tokens); capseg = batches of
`--gen-batch` cached images with the same beam search, default precision and fp32. Random weights never emit EOS, so both write all 30 tokens.

Writes bench/results/caption.json.  Run: .venv/bin/python bench/caption.py  (about 5 minutes on 2 CPU cores)
"""
import os
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')   # before torch: spinning OpenMP threads starve a shared small CPU

import argparse, json, platform, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from capseg.caption import (CaptionDataset, Captioner, ImageTransform, amp_context, batch_loss, collate_captions,
                            generate_captions, make_optimizer, optimizer_step, resolve_amp, set_special_ids)
from capseg.caption_data import CaptionItem, parse_flickr8k_tokens, read_image_list
from capseg.core import get_device, save_json

TEXT = ROOT.parent/'shared'/'data'/'flickr8k_text'
SEED_MAX_LENGTH = 64     # the seed's fixed padding length (assumed: the seed notebook pads every caption to it)
SEED_BATCH, CAPSEG_BATCH = 4, 8


def bpe_tokenizer(captions, vocab_size=50257):
    "A GPT-2 style byte-level BPE tokenizer trained on `captions`, with <|endoftext|> as BOS/EOS/UNK."
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(captions, vocab_size=vocab_size, min_frequency=2, special_tokens=['<|endoftext|>'], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token='<|endoftext|>', eos_token='<|endoftext|>',
                                   unk_token='<|endoftext|>')


def full_size_model(tokenizer, seed=0):
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel
    torch.manual_seed(seed)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(), GPT2Config(add_cross_attention=True))
    return set_special_ids(VisionEncoderDecoderModel(config=cfg), tokenizer)


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
    "The seed's dataset: the processor runs on every access; the first caption, padded to a fixed length."
    def __init__(self, items, processor, tokenizer):
        self.items, self.processor, self.tokenizer = items, processor, tokenizer
    def __len__(self): return len(self.items)
    def __getitem__(self, i):
        it = self.items[i]
        px = self.processor(images=Image.open(it.path).convert('RGB'), return_tensors='pt').pixel_values[0]
        ids = self.tokenizer(it.captions[0], padding='max_length', max_length=SEED_MAX_LENGTH, truncation=True).input_ids
        labels = torch.tensor([t if t != self.tokenizer.pad_token_id else -100 for t in ids])   # EOS masked too (the bug)
        return {'pixel_values': px, 'labels': labels}


def timed_steps(step, batches, warmup):
    "Run `step` on each batch; seconds spent on the batches after the first `warmup` (data loading included)."
    it, t = iter(batches), None
    for k in range(warmup): step(next(it))
    t = time.perf_counter()
    n = 0
    for b in it: step(b); n += 1
    return time.perf_counter() - t, n


def seed_train(model, items, processor, tokenizer, steps, warmup, device):
    model.train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    dl = torch.utils.data.DataLoader(SeedDataset(items, processor, tokenizer), batch_size=SEED_BATCH, shuffle=True)
    batches = (b for _, b in zip(range(warmup + steps), dl))
    def step(b):
        loss = model(pixel_values=b['pixel_values'].to(device), labels=b['labels'].to(device)).loss
        loss.backward(); opt.step(); opt.zero_grad()
    secs, n = timed_steps(step, batches, warmup)
    del opt
    return {'images_per_s': SEED_BATCH * n / secs, 'seconds_per_step': secs / n, 'batch': SEED_BATCH, 'timed_steps': n,
            'padded_length': SEED_MAX_LENGTH}


def capseg_train(model, ds, tf, tokenizer, steps, warmup, device, amp):
    model.train().to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, 5e-5, device=device)
    autocast, scaler = amp_context(device, amp)
    collate = lambda b: collate_captions(b, tf, tokenizer.eos_token_id)
    dl = torch.utils.data.DataLoader(ds, batch_size=CAPSEG_BATCH, shuffle=True, collate_fn=collate)
    lengths = []
    batches = (b for _, b in zip(range(warmup + steps), dl))
    def step(b):
        lengths.append(b['labels'].shape[1])
        loss = batch_loss(model, b, device, autocast)
        (scaler.scale(loss) if scaler else loss).backward()
        optimizer_step(opt, params, scaler)
    secs, n = timed_steps(step, batches, warmup)
    del opt
    return {'images_per_s': CAPSEG_BATCH * n / secs, 'seconds_per_step': secs / n, 'batch': CAPSEG_BATCH, 'timed_steps': n,
            'amp': amp, 'mean_padded_length': float(np.mean(lengths))}


@torch.no_grad()
def seed_generate(model, items, processor, tokenizer, device):
    model.eval().to(device)
    t = time.perf_counter()
    for it in items:
        px = processor(images=Image.open(it.path).convert('RGB'), return_tensors='pt').pixel_values.to(device)
        ids = model.generate(px, num_beams=5, max_new_tokens=30)
        tokenizer.decode(ids[0], skip_special_tokens=True)
    return len(items) / (time.perf_counter() - t)


def capseg_generate(cap, pixels, batch, device, amp):
    t = time.perf_counter()
    generate_captions(cap, pixels, batch_size=batch, num_beams=5, max_new_tokens=30, no_repeat_ngram_size=0,
                      device=device, amp=amp)
    return len(pixels) / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=4, help='timed training steps per pipeline (after --warmup)')
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--gen-images', type=int, default=16, help='images captioned per generation measurement')
    ap.add_argument('--gen-batch', type=int, default=16)
    ap.add_argument('--device', default=None)
    ap.add_argument('--out', type=Path, default=ROOT/'bench'/'results'/'caption.json')
    a = ap.parse_args(argv)
    device = get_device(a.device)
    t_all, load0 = time.perf_counter(), round(os.getloadavg()[0], 2)
    from transformers import ViTImageProcessor
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()

    caps = parse_flickr8k_tokens(TEXT/'Flickr8k.token.txt')
    names = read_image_list(TEXT/'Flickr_8k.trainImages.txt')
    n_img = max(SEED_BATCH, CAPSEG_BATCH) * (a.warmup + a.steps) + a.gen_images
    tokenizer = bpe_tokenizer([c for cs in caps.values() for c in cs])
    tokenizer.pad_token = tokenizer.eos_token   # as the seed (and GPT-2 checkpoints): no pad token of its own
    processor = ViTImageProcessor()    # 224x224, mean = std = 0.5: nlpconnect's settings
    tmp = Path(tempfile.mkdtemp(prefix='capseg-bench-'))
    stand_in_images(names[:n_img], tmp)
    items = [CaptionItem(n, caps[n], path=tmp/n) for n in names[:n_img]]
    model = full_size_model(tokenizer)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())
    res = {'device': str(device), 'cpu': platform.processor() or platform.machine(), 'torch_threads': torch.get_num_threads(),
           'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'), 'torch': torch.__version__,
           'architecture': 'ViT-base/16-224 + GPT-2 124M with cross-attention (from configs, random weights)',
           'parameters_millions': round(n_params / 1e6, 1), 'tokenizer_vocab': len(tokenizer),
           'model_vocab': model.config.decoder.vocab_size, 'images': 'stand-ins 500x375 JPEG, real Flickr8k captions',
           'seed_max_length_assumed': SEED_MAX_LENGTH, 'warmup_steps': a.warmup}
    if device.type == 'cuda': res['gpu'] = torch.cuda.get_device_name()
    print(json.dumps({k: res[k] for k in ('device', 'parameters_millions', 'tokenizer_vocab', 'torch_threads')}), flush=True)

    # --- training
    train = {'seed': seed_train(model, items, processor, tokenizer, a.steps, a.warmup, device)}
    print('seed train', train['seed'], flush=True)
    tf = ImageTransform(processor)
    t = time.perf_counter()
    ds = CaptionDataset(items[:n_img - a.gen_images], tf, tokenizer, desc='bench')
    cache_s = (time.perf_counter() - t) / len(ds)
    default_amp = resolve_amp(device, 'auto', n_params)
    runs = {'capseg_default': (default_amp, False), 'capseg_fp32': ('off', False),
            'capseg_default_frozen_encoder': (default_amp, True)}
    if default_amp == 'off': del runs['capseg_fp32']
    for name, (amp, frozen) in runs.items():
        model.load_state_dict(init)
        for p in model.encoder.parameters(): p.requires_grad_(not frozen)
        r = capseg_train(model, ds, tf, tokenizer, a.steps, a.warmup, device, amp)
        r.update(pixel_cache_seconds_per_image_once=round(cache_s, 4), frozen_encoder=frozen)
        train[name] = r
        print(name, r, flush=True)
    for p in model.parameters(): p.requires_grad_(True)
    for k, r in train.items():
        if k != 'seed': r['speedup_vs_seed'] = round(r['images_per_s'] / train['seed']['images_per_s'], 2)
    res['train'] = train

    # --- generation
    model.load_state_dict(init)
    gen_items = items[-a.gen_images:]
    gen = {'seed_per_image': {'images_per_s': seed_generate(model, gen_items, processor, tokenizer, device)}}
    print('seed generate', gen['seed_per_image'], flush=True)
    cap = Captioner(model, tokenizer, processor, 'bench')
    pixels = torch.stack([tf(it.load()) for it in gen_items])
    for name, amp in (('capseg_batched_default', default_amp), ('capseg_batched_fp32', 'off')):
        if name.endswith('fp32') and default_amp == 'off': continue
        r = gen[name] = {'images_per_s': capseg_generate(cap, pixels, a.gen_batch, device, amp), 'batch': a.gen_batch, 'amp': amp}
        r['speedup_vs_seed'] = round(r['images_per_s'] / gen['seed_per_image']['images_per_s'], 2)
        print(name, r, flush=True)
    res['generate'] = gen
    res['targets'] = {'train_speedup': 1.5, 'generate_speedup': 3.0}
    res['met'] = {'train': train['capseg_default']['speedup_vs_seed'] >= 1.5,
                  'generate': gen['capseg_batched_default']['speedup_vs_seed'] >= 3.0}
    res['bench_seconds'] = round(time.perf_counter() - t_all, 1)
    res['load_average_1min'] = {'start': load0, 'end': round(os.getloadavg()[0], 2)}   # other processes on the machine
    for v in list(train.values()) + list(gen.values()):
        for k in v:
            if isinstance(v[k], float): v[k] = round(v[k], 4)
    save_json(res, a.out)
    print(json.dumps(res))
    return res


if __name__ == '__main__':
    main()
