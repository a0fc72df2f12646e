"""Captioning end to end: the `capseg caption` command on generated shapes, a caption folder and Flickr8k stand-ins;
bad images and models; kill + --resume; the COCO caption metrics against pycocoevalcap (real Flickr8k captions) and without Java."""
import json, os, shutil, signal, subprocess, time, zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import capseg_exe, capseg_main, run_capseg
from capseg.core import CapsegError


def last_json(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def error_line(r: subprocess.CompletedProcess) -> str:
    "The CLI's one-line error (other lines on stderr may be library warnings)."
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-2000:])
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith('capseg: error: '), r.stderr[-2000:]
    return line


def failed_line(r: subprocess.CompletedProcess) -> str:
    "`predict` of one input that failed: exit 1, the input's reason, then the count (by design, not a usage error)."
    assert r.returncode == 1 and not r.stdout.strip(), (r.stdout[-500:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == 'capseg: 1 of 1 inputs failed', r.stderr[-2000:]
    return lines[-2]


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "A small caption folder (generated shapes) with one corrupt training image and one missing test image."
    from capseg.caption_data import captioned_shapes, save_caption_folder
    root = tmp_path_factory.mktemp('folder')
    save_caption_folder(captioned_shapes(160, 20, 20, seed=5), root)
    (root/'images'/'train_00003.png').write_bytes(b'\x89PNG\r\n\x1a\n but not really')
    (root/'images'/'test_00001.png').unlink()
    return root


@pytest.fixture(scope='module')
def trained(folder, tmp_path_factory):
    "`capseg caption train --data FOLDER` with the tiny model, 2 epochs (in this process)."
    out = tmp_path_factory.mktemp('trained')
    r = capseg_main('caption', 'train', '--data', folder, '--model', 'tiny', '--out', out, '--epochs', 2, '--json')
    return out, r


@pytest.mark.slow
def test_shapes_default_kill_resume_reaches_target(tmp_path):
    """The embedded default end to end: killed after its first checkpoint, resumed, ≥ 95 % attribute accuracy. The one
    full-size captioning run of the tests, and the one that scores with METEOR (Java) end to end."""
    out = tmp_path/'run'
    env = {**os.environ, 'CAPSEG_METEOR': '1'}   # METEOR on, in this test only
    p = subprocess.Popen([capseg_exe(), 'caption', 'train', '--shapes', '--model', 'tiny', '--out', str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    state, t0 = out/'checkpoint'/'trainer_state.pt', time.time()
    while not state.exists():
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        assert time.time() - t0 < 400, 'no checkpoint after 400 s'
        time.sleep(0.5)
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (out/'metrics.json').exists()
    r = run_capseg('caption', 'train', '--shapes', '--model', 'tiny', '--out', out, '--resume', '--json', timeout=900, env=env)
    m = last_json(r)
    assert 'resuming' in r.stderr and 'epoch 1/8' not in r.stderr, r.stderr[-2000:]
    saved = json.loads((out/'metrics.json').read_text())
    assert m == {k: v for k, v in saved.items() if k != 'history'}
    assert len(saved['history']['train/loss']) == len(saved['history']['val/loss']) == m['epochs'] == 8
    assert m['n_images'] == 300 and m['skipped_images'] == 0
    assert all(0 <= m[f'bleu{i}'] <= 1 for i in range(1, 5)) and m['cider'] > 0
    assert 0 < m['meteor'] < 1 or not shutil.which('java'), 'METEOR is scored where Java is installed'
    print(f"\nshapes default: attribute accuracy {m['attribute_accuracy']:.3f}, BLEU-4 {m['bleu4']:.3f}, "
          f"CIDEr {m['cider']:.3f}, training {m['train_seconds']} s")
    assert m['attribute_accuracy'] >= 0.95
    for f in ('samples.json', 'curves.png', 'gallery.png', 'checkpoint/model.safetensors', 'checkpoint/tokenizer.json'):
        assert (out/f).is_file(), f
    assert len(json.loads((out/'samples.json').read_text())) == 300


def test_folder_skips_unreadable_images(trained):
    out, r = trained
    m = last_json(r)
    assert m['skipped_images'] == 2 and m['skipped_by_split'] == {'train': 1, 'val': 0, 'test': 1}
    assert 'skipped 1 of 160' in r.stderr and 'skipped 1 of 20' in r.stderr
    assert m['n_images'] == 19 and len(json.loads((out/'metrics.json').read_text())['history']['train/loss']) == 2
    assert {'bleu1', 'bleu2', 'bleu3', 'bleu4', 'cider', 'n_images', 'train_seconds'} <= set(m)


def test_eval_and_predict(trained, folder, tmp_path):
    out, _ = trained
    m = last_json(capseg_main('caption', 'eval', '--model', out, '--data', folder, '--out', tmp_path, '--json'))
    assert m['n_images'] == 19 and (tmp_path/'metrics.json').is_file()
    img = folder/'images'/'test_00000.png'
    r = capseg_main('caption', 'predict', '--model', out, img)
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 1 and r.stdout.strip(), r.stderr
    r = capseg_main('caption', 'predict', '--model', out, img, folder/'images'/'test_00002.png')
    assert [l.split('\t')[0] for l in r.stdout.strip().splitlines()] == [str(img), str(folder/'images'/'test_00002.png')]
    assert 'no such file or folder' in failed_line(capseg_main('caption', 'predict', '--model', out, tmp_path/'nope.png'))
    assert 'cannot read the image' in failed_line(capseg_main('caption', 'predict', '--model', out, folder/'images'/'train_00003.png'))


def test_save_pretrained_model_loads_through_model_dir(folder, tmp_path):
    from capseg.caption import load_captioner
    from capseg.caption_data import load_caption_folder
    caps = [c for it in load_caption_folder(folder)['train'] for c in it.captions]
    cap = load_captioner('tiny', caps)
    cap.save(tmp_path/'mine')
    back = load_captioner(tmp_path/'mine')
    assert all(np.array_equal(a, b) for a, b in zip(cap.model.state_dict().values(), back.model.state_dict().values()))
    r = capseg_main('caption', 'predict', '--model', tmp_path/'mine', folder/'images'/'test_00000.png')
    assert r.returncode == 0, r.stderr
    m = last_json(capseg_main('caption', 'train', '--data', folder, '--model', tmp_path/'mine', '--out', tmp_path/'ft', '--epochs', 1, '--json'))
    assert m['epochs'] == 1 and m['model'] == str(tmp_path/'mine')


def test_hub_name_offline_is_a_clear_error(folder, tmp_path, monkeypatch):
    "In a subprocess: huggingface_hub reads HF_HUB_OFFLINE and HF_HOME when it is imported."
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path/'hf'))   # an empty cache: nothing to fall back on
    r = run_capseg('caption', 'train', '--data', folder, '--model', 'nlpconnect/vit-gpt2-image-captioning', '--out', tmp_path/'o')
    line = error_line(r)
    assert 'Hugging Face hub' in line and 'Offline?' in line and 'nlpconnect/vit-gpt2-image-captioning' in line


def test_bad_model_folders(folder, tmp_path):
    assert 'no such model folder' in error_line(capseg_main('caption', 'predict', '--model', tmp_path/'a'/'b', 'x.png'))
    (tmp_path/'empty').mkdir()
    assert 'not a model folder' in error_line(capseg_main('caption', 'predict', '--model', tmp_path/'empty', 'x.png'))


def test_bad_caption_json(tmp_path):
    (tmp_path/'train.json').write_text('[{"image": "a.png"}]')
    (tmp_path/'test.json').write_text('[]')
    line = error_line(capseg_main('caption', 'train', '--data', tmp_path, '--out', tmp_path/'o'))
    assert 'train.json: entry 0 must be' in line


def test_nan_guard(tmp_path, monkeypatch):
    import torch
    import capseg.caption as C
    from capseg.caption_data import captioned_shapes
    s = captioned_shapes(64, 8, 8)
    cap = C.load_captioner('tiny', [c for it in s['train'] for c in it.captions])
    ds = C.CaptionDataset(s['train'], C.ImageTransform(cap.processor), cap.tokenizer)
    monkeypatch.setattr(C, 'batch_loss', lambda *a, **k: torch.tensor(float('nan'), requires_grad=True))
    with pytest.raises(CapsegError, match='diverged'):
        C.fit(cap, ds, None, tmp_path, C.TrainConfig(epochs=1, batch_size=16).for_model(True), device='cpu')
    assert not (tmp_path/'checkpoint').exists(), 'no checkpoint of a diverged epoch'


# --- Flickr8k: the real text files, stand-in images

def test_flickr8k_real_text_files(shared_dir, tmp_path):
    from capseg.caption_data import CaptionItem, FLICKR8K_SPLIT_FILES, parse_flickr8k_tokens, read_image_list, write_seed_json
    text = shared_dir/'data'/'flickr8k_text'
    caps = parse_flickr8k_tokens(text/'Flickr8k.token.txt')
    assert sum(len(c) for c in caps.values()) == 40460 and len(caps) == 8092
    assert {len(c) for c in caps.values()} == {5}, 'the stray "...jpg.1" entry is folded back into its image'
    assert not any(n.endswith('.1') for n in caps)
    assert caps['2258277193_586949ec62.jpg'][0] == 'people waiting for the subway'
    splits = {s: read_image_list(text/f) for s, f in FLICKR8K_SPLIT_FILES.items()}
    assert [len(v) for v in splits.values()] == [6000, 1000, 1000]
    assert all(n in caps for v in splits.values() for n in v) and not set(splits['train']) & set(splits['test'])
    write_seed_json({s: [CaptionItem(n, caps[n]) for n in v] for s, v in splits.items()}, tmp_path)
    test = json.loads((tmp_path/'test.json').read_text())
    assert len(test) == 1000 and set(test[0]) == {'image', 'captions'} and len(test[0]['captions']) == 5
    assert len(json.loads((tmp_path/'captions.json').read_text())) == 8000


def stand_in_flickr8k(shared_dir: Path, root: Path, n=(40, 8, 8)) -> Path:
    "Flickr8k's layout with the real caption file, shortened split lists and small generated JPEGs for their names."
    from capseg.caption_data import FLICKR8K_SPLIT_FILES, read_image_list
    text = shared_dir/'data'/'flickr8k_text'
    (root/'Flickr8k_text').mkdir(parents=True); (root/'Flicker8k_Dataset').mkdir()
    (root/'Flickr8k_text'/'Flickr8k.token.txt').write_text((text/'Flickr8k.token.txt').read_text())
    rng = np.random.default_rng(0)
    for (split, f), k in zip(FLICKR8K_SPLIT_FILES.items(), n):
        names = read_image_list(text/f)[:k]
        (root/'Flickr8k_text'/f).write_text('\n'.join(names) + '\n')
        for name in names:
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root/'Flicker8k_Dataset'/name)
    return root


def test_flickr8k_cli_with_stand_in_images(shared_dir, tmp_path):
    root = stand_in_flickr8k(shared_dir, tmp_path/'flickr8k')
    (root/'Flicker8k_Dataset'/read_first_test(root)).write_bytes(b'truncated')
    m = last_json(capseg_main('caption', 'train', '--flickr8k', root, '--out', tmp_path/'o', '--epochs', 1, '--json'))
    assert m['n_images'] == 7 and m['skipped_images'] == 1 and 'attribute_accuracy' not in m


def read_first_test(root: Path) -> str:
    return (root/'Flickr8k_text'/'Flickr_8k.testImages.txt').read_text().split()[0]


def test_flickr8k_download_layout_and_offline_error(tmp_path):
    "The two archives' layouts (images in Flicker8k_Dataset/, text files at the top, __MACOSX debris), from file:// URLs."
    from capseg.caption_data import FLICKR8K_SPLIT_FILES, download_flickr8k, find_flickr8k, load_flickr8k
    names = [f'{i}.jpg' for i in range(4)]
    with zipfile.ZipFile(tmp_path/'Flickr8k_Dataset.zip', 'w') as z:
        for n in names:
            Image.new('RGB', (8, 6)).save(tmp_path/n); z.write(tmp_path/n, f'Flicker8k_Dataset/{n}')
        z.writestr('__MACOSX/Flicker8k_Dataset/._0.jpg', b'')
    with zipfile.ZipFile(tmp_path/'Flickr8k_text.zip', 'w') as z:
        z.writestr('Flickr8k.token.txt', ''.join(f'{n}#{k}\tcaption {k} .\n' for n in names for k in range(5)))
        for f, part in zip(FLICKR8K_SPLIT_FILES.values(), (names[:2], names[2:3], names[3:])): z.writestr(f, '\n'.join(part))
    urls = {'Flickr8k_Dataset.zip': (tmp_path/'Flickr8k_Dataset.zip').as_uri(), 'Flickr8k_text.zip': (tmp_path/'Flickr8k_text.zip').as_uri()}
    root = download_flickr8k(tmp_path/'data', urls)
    assert find_flickr8k(root) == (root/'Flickr8k_text', root/'Flicker8k_Dataset')
    assert [len(v) for v in load_flickr8k(root, download=False).values()] == [2, 1, 1]
    with pytest.raises(CapsegError, match='could not download'):
        download_flickr8k(tmp_path/'offline', {'Flickr8k_text.zip': (tmp_path/'missing.zip').as_uri()})


def test_metrics_equal_pycocoevalcap_on_flickr8k(shared_dir):
    """The test split's 1000 images, caption 0 against the other four: BLEU, ROUGE-L, CIDEr-D as COCOEvalCap computes them
    (METEOR's equality is shown in 10_metrics: a second METEOR JVM costs 10-20 s), the seed's BLEU as nltk computes it."""
    import shutil
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from capseg.caption_data import parse_flickr8k_tokens, read_image_list
    from capseg.metrics import caption_metrics
    if shutil.which('java') is None: pytest.skip('no Java: the PTB tokenizer cannot run')
    text = shared_dir/'data'/'flickr8k_text'
    caps = parse_flickr8k_tokens(text/'Flickr8k.token.txt')
    names = read_image_list(text/'Flickr_8k.testImages.txt')
    preds, refs = [caps[n][0] for n in names], [caps[n][1:] for n in names]
    m = caption_metrics(preds, refs, meteor=False)
    gts = PTBTokenizer().tokenize({n: [{'caption': c} for c in r] for n, r in zip(names, refs)})
    res = PTBTokenizer().tokenize({n: [{'caption': p}] for n, p in zip(names, preds)})
    theirs = dict(zip(['bleu1', 'bleu2', 'bleu3', 'bleu4'], Bleu(4).compute_score(gts, res, verbose=0)[0]))
    theirs.update(rouge_l=Rouge().compute_score(gts, res)[0], cider=Cider().compute_score(gts, res)[0])
    assert {k: m[k] for k in theirs} == theirs and 'meteor' not in m
    seed = corpus_bleu([[r.lower().split() for r in rs] for rs in refs], [p.lower().split() for p in preds],
                       weights=[(1, 0, 0, 0), (.5, .5, 0, 0), (.33, .33, .33, 0), (.25, .25, .25, .25)],
                       smoothing_function=SmoothingFunction().method4)
    assert [m[f'seed_bleu{i}'] for i in range(1, 5)] == seed
    assert 0.2 < m['bleu4'] < 0.22 and 0.75 < m['cider'] < 0.8    # a human caption against four others


def test_metrics_without_java(tmp_path):
    "No java on PATH: one line on stderr, no METEOR, the rest from pycocoevalcap's scorers on nltk's tokenisation."
    import sys
    from pycocoevalcap.cider.cider import Cider
    from capseg.caption_data import captioned_shapes
    from capseg.metrics import caption_metrics, tokenize
    caps = [it.captions for it in captioned_shapes(0, 0, 30)['test']]
    preds, refs = [c[0] for c in caps], [c[1:] for c in caps]
    (tmp_path/'in.json').write_text(json.dumps([preds, refs]))
    code = ('import json, sys; from capseg.metrics import caption_metrics; '
            'print(json.dumps(caption_metrics(*json.load(open(sys.argv[1])))))')
    r = subprocess.run([sys.executable, '-c', code, tmp_path/'in.json'], capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'PATH': str(Path(sys.executable).parent)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and 'no Java' in r.stderr and 'METEOR' in r.stderr, r.stderr
    m = json.loads(r.stdout)
    assert set(m) == {'bleu1', 'bleu2', 'bleu3', 'bleu4', 'rouge_l', 'cider', 'seed_bleu1', 'seed_bleu2', 'seed_bleu3', 'seed_bleu4'}
    words = tokenize(preds + [c for rs in refs for c in rs], java=False)
    res, gts = {i: [w] for i, w in enumerate(words[:30])}, {i: words[30 + 4 * i:34 + 4 * i] for i in range(30)}
    assert m['cider'] == Cider().compute_score(gts, res)[0]
    with pytest.raises(CapsegError, match='one per image'): caption_metrics(preds, refs[:-1])
