"`capseg segment` end to end: train on the shapes and on an npz, bad input, kill + resume, eval, predict."
import json, signal, subprocess, time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import build_once, capseg_exe, capseg_main
from capseg.core import load_weights
from capseg.seg_data import make_shapes, save_seg_npz
from capseg.segment import chan_vese_loss, flip_invariant_iou

SERIES = [f'{s}/{q}' for s in ('train', 'test') for q in ('loss', 'fidelity', 'regularization', 'iou')]


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def check_run(out: Path, metrics: dict, epochs: int):
    for f in ('model.pt', 'metrics.json', 'curves.png', 'results_train.png', 'results_test.png', 'checkpoint.pt'):
        assert (out / f).stat().st_size > 0, f
    saved = json.loads((out / 'metrics.json').read_text())
    assert saved['test_iou'] == metrics['test_iou'] and 'history' not in metrics, '--json leaves the history in the file'
    assert 0 <= metrics['test_iou'] <= 100 and metrics['train_seconds'] > 0 and metrics['epochs'] == epochs
    assert set(saved['history']) - set(SERIES) <= {'holdout/risk'} and set(SERIES) <= set(saved['history'])
    assert all(len(v) == epochs and all(len(e) == 2 for e in v) for v in saved['history'].values())


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A default model trained 3 epochs on the embedded shapes (in this process; once per session, shared by xdist workers)."
    def build(folder):
        r = capseg_main('segment', 'train', '--shapes', '--out', folder / 'run', '--epochs', 3, '--json')
        assert r.returncode == 0, r.stderr
        (folder / 'stdout.txt').write_text(r.stdout)
    folder = build_once(tmp_path_factory, 'segment_trained', build)
    return folder / 'run', last_json((folder / 'stdout.txt').read_text())


def test_train_shapes(trained):
    out, metrics = trained
    check_run(out, metrics, 3)
    assert metrics['test_iou'] > 60, 'three epochs already segment the shapes'
    assert metrics['test_iou_per_image'] >= metrics['test_iou'] - 1e-9
    rec = load_weights(out / 'model.pt')
    assert rec['arch'] == 'default' and {'mean', 'std'} <= set(rec['norm']) and rec['widths']
    assert rec['refine'] == metrics['refine'] and metrics['refine']['steps'] == 10, 'images held whole: refined'
    assert metrics['refine']['alpha'] > metrics['alpha'] > 0, 'at the MAP weight 2.2 σ², above training\'s 0.5 σ²'


@pytest.mark.parametrize('arch,size', [('default', (30, 30)), ('default', (64, 64)), ('seed', (50, 40))])
def test_train_npz_any_size(tmp_path, arch, size):
    "Sides that are not multiples of 8 are padded inside the network and cropped back: train, then predict."
    from PIL import Image
    data, (h, w) = tmp_path / 'x.npz', size
    d = make_shapes(n_train=96, n_test=40, size=max(size), seed=4)
    save_seg_npz({k: a[:, :h, :w] for k, a in d.arrays().items()}, data)
    r = capseg_main('segment', 'train', '--data', data, '--out', tmp_path / 'run', '--epochs', 2, '--arch', arch, '--json')
    assert r.returncode == 0, r.stderr
    metrics = last_json(r.stdout)
    check_run(tmp_path / 'run', metrics, 2)
    assert metrics['arch'] == arch and metrics['n_train'] == 96 and metrics['n_test'] == 40
    Image.fromarray((np.clip(d.image_test[0, :h, :w], 0, 1) * 255).astype(np.uint8)).save(tmp_path / 'a.png')
    r = capseg_main('segment', 'predict', '--model', tmp_path / 'run', tmp_path / 'a.png', '--out', tmp_path / 'masks')
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(next((tmp_path / 'masks').rglob('*.png')))).shape == (h, w)


def test_alpha_auto_grows_with_noise(tmp_path):
    "The same shapes, noisier: `--alpha auto` picks a larger TV weight (it follows the estimated noise variance)."
    alphas = {}
    for noise in (0.3, 0.9):
        save_seg_npz(make_shapes(n_train=64, n_test=16, noise=noise, seed=6), tmp_path / f'{noise}.npz')
        r = capseg_main('segment', 'train', '--data', tmp_path / f'{noise}.npz', '--out', tmp_path / f'r{noise}',
                       '--epochs', 1, '--alpha', 'auto', '--json')
        m = last_json(r.stdout)
        assert m['recipe']['alpha'] == 'auto' and m['alpha_rule'].startswith('kappa'), m
        alphas[noise] = m['alpha']
        assert abs(m['noise_sigma'] - noise) < 0.1 * noise, 'the noise level is estimated from the images alone'
    assert alphas[0.9] > 1.5 * alphas[0.3], alphas     # (in standardised units: the images' spread grows with σ too)


def test_cli_flags_reach_the_recipe(tmp_path):
    data = tmp_path / 'x.npz'
    save_seg_npz(make_shapes(n_train=64, n_test=16, seed=2), data)
    r = capseg_main('segment', 'train', '--data', data, '--out', tmp_path / 'run', '--epochs', 2, '--alpha', 0.2,
                   '--lr', 0.003, '--batch-size', 16, '--augment', 'none', '--json')
    m = last_json(r.stdout)
    assert {k: m['recipe'][k] for k in ('alpha', 'lr', 'batch_size', 'augment', 'epochs')} == dict(
        alpha=0.2, lr=0.003, batch_size=16, augment='none', epochs=2)
    assert m['alpha'] == 0.2 and m['alpha_rule'] == 'given'
    r = capseg_main('segment', 'train', '--data', data, '--out', tmp_path / 'bad', '--alpha', 'much')
    assert r.returncode == 2 and '--alpha' in r.stderr


def bad_npzs(tmp: Path) -> dict:
    good = make_shapes(n_train=8, n_test=8).arrays()
    cases = {'missing-key': {k: v for k, v in good.items() if k != 'image_train'},   # masks alone: nothing to train on
             'nan': {**good, 'image_test': np.full((8, 32, 32), np.nan, np.float32)},
             'shape': {**good, 'mask_test': good['mask_test'][:, :16]},
             'not-binary': {**good, 'mask_train': good['mask_train'] * 7},
             '1d': {**good, 'image_train': np.zeros(5)}}
    paths = {}
    for name, arrays in cases.items():
        np.savez(paths.setdefault(name, tmp / f'{name}.npz'), **arrays)
    (tmp / 'text.npz').write_text('not a zip')
    return {**paths, 'not-npz': tmp / 'text.npz', 'missing-file': tmp / 'absent.npz'}


def test_bad_npz_one_line(tmp_path):
    for name, path in bad_npzs(tmp_path).items():
        r = capseg_main('segment', 'train', '--data', path, '--out', tmp_path / name, '--epochs', 1)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.stderr)
        assert len(lines) == 1 and lines[0].startswith('capseg: error: ') and str(path) in lines[0], (name, r.stderr)


def start_training(out: Path, epochs: int, *flags) -> subprocess.Popen:
    return subprocess.Popen([capseg_exe(), 'segment', 'train', '--shapes', '--out', str(out), '--epochs', str(epochs), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # as in a terminal, even
                                                                     # where this runs in a background job (SIGINT ignored)


def wait_for_epoch(out: Path, proc: subprocess.Popen, epoch: int, timeout: float = 300) -> int:
    "Wait until the checkpoint holds at least `epoch` epochs; return how many it holds."
    end = time.time() + timeout
    while time.time() < end:
        if (out / 'checkpoint.pt').exists():
            done = load_weights(out / 'checkpoint.pt')['epoch']
            if done >= epoch: return done
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise TimeoutError


@pytest.mark.slow
def test_kill_then_resume(tmp_path):
    "One run stopped twice: by SIGINT (Ctrl-C) after epoch 2, resumed, then by SIGKILL after epoch 4, resumed to the end."
    out, epochs = tmp_path / 'run', 8
    for sig, epoch, flags in ((signal.SIGINT, 2, ()), (signal.SIGKILL, 4, ('--resume',))):
        proc = start_training(out, epochs, *flags)
        try:
            done = wait_for_epoch(out, proc, epoch)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None: proc.kill()
        assert done < epochs, 'stopped mid-training'
        if sig == signal.SIGINT: assert proc.returncode == 130 and '--resume' in err, err
        else: assert proc.returncode == -signal.SIGKILL
        assert not (out / 'metrics.json').exists()
        kept = load_weights(out / 'checkpoint.pt')['epoch']
        assert epoch <= kept < epochs
    r = capseg_main('segment', 'train', '--shapes', '--out', out, '--epochs', epochs, '--resume', '--json')
    assert r.returncode == 0, r.stderr
    metrics = last_json(r.stdout)
    check_run(out, metrics, epochs)


def test_resume_needs_same_epochs(trained, tmp_path):
    out, _ = trained
    r = capseg_main('segment', 'train', '--shapes', '--out', out, '--epochs', 5, '--resume')
    assert r.returncode == 2 and '--epochs' in r.stderr


def test_eval(trained, tmp_path):
    out, metrics = trained
    data = tmp_path / 'shapes.npz'
    save_seg_npz(make_shapes(), data)                       # the same data as --shapes: the same test score
    r = capseg_main('segment', 'eval', '--data', data, '--model', out, '--out', tmp_path / 'ev', '--json')
    assert r.returncode == 0, r.stderr
    ev = last_json(r.stdout)
    assert abs(ev['test_iou'] - metrics['test_iou']) < 1e-6 and (tmp_path / 'ev' / 'metrics.json').exists()


def test_predict(trained, tmp_path):
    from PIL import Image
    out, _ = trained
    d = make_shapes(n_train=4, n_test=4, seed=9)
    Image.fromarray((np.clip(d.image_test[0], 0, 1) * 255).astype(np.uint8)).save(tmp_path / 'a.png')
    Image.fromarray((np.clip(d.image_test[1], 0, 1) * 255).astype(np.uint8)).convert('RGB').save(tmp_path / 'b.jpg')
    Image.fromarray((np.clip(np.tile(d.image_test[2], (2, 2))[:50, :37], 0, 1) * 255).astype(np.uint8)).save(
        tmp_path / 'odd.png')                                # a size that is not a multiple of 8
    np.savez(tmp_path / 'c.npz', images=d.image_test)
    r = capseg_main('segment', 'predict', '--model', out, tmp_path / 'a.png', tmp_path / 'b.jpg', tmp_path / 'odd.png',
                   tmp_path / 'c.npz', '--out', tmp_path / 'masks')
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / 'masks' / 'predictions.jsonl').read_text().splitlines()]
    assert [Path(row['path']).name for row in rows[:3]] == ['a.png', 'b.jpg', 'odd.png'] and len(rows) == 3 + 4
    assert [row.get('index') for row in rows] == [None] * 3 + [0, 1, 2, 3]
    for row in rows:
        mask = np.asarray(Image.open(row['mask']))
        assert mask.shape == (row['height'], row['width']) and set(np.unique(mask)) <= {0, 255}
        assert abs((mask > 0).mean() - row['foreground_fraction']) < 1e-6
    assert (rows[2]['height'], rows[2]['width']) == (50, 37)
    (tmp_path / 'bad.png').write_bytes(b'not an image')
    r = capseg_main('segment', 'predict', '--model', out, tmp_path / 'bad.png')     # a bad file: exit 1, by design
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and lines[-1] == 'capseg: 1 of 1 inputs failed' and 'bad.png' in lines[0] and not r.stdout


def test_loss_and_iou_formulas():
    "The loss against the formula evaluated directly in NumPy; the IoU's two flip choices."
    rng = np.random.default_rng(1)
    I, p, alpha = rng.normal(size=(3, 6, 5)) * [[[1]], [[4]], [[0.2]]] + [[[0]], [[9]], [[-3]]], rng.uniform(size=(3, 6, 5)), 0.3
    a = (I * p).sum((1, 2)) / p.sum((1, 2))
    b = (I * (1 - p)).sum((1, 2)) / (1 - p).sum((1, 2))
    fid = (p * (I - a[:, None, None]) ** 2 + (1 - p) * (I - b[:, None, None]) ** 2).mean((1, 2))
    dx = np.concatenate([np.diff(p, axis=2), np.zeros((3, 6, 1))], 2)
    dy = np.concatenate([np.diff(p, axis=1), np.zeros((3, 1, 5))], 1)
    reg = (np.abs(dx) + np.abs(dy)).mean((1, 2))
    total, f, r = chan_vese_loss(torch.tensor(I), torch.tensor(p), alpha)
    np.testing.assert_allclose(f.numpy(), fid, rtol=1e-12)
    np.testing.assert_allclose(r.numpy(), reg, rtol=1e-12)
    np.testing.assert_allclose(total.item(), (fid + alpha * reg).mean(), rtol=1e-12)
    m = torch.zeros(2, 4, 4); m[:, 1:3, 1:3] = 1
    q = torch.stack([m[0], 1 - m[1]])
    assert flip_invariant_iou(q, m) == 50 and flip_invariant_iou(q, m, per_image=True) == 100


def test_augmentation_moves_image_and_mask_together():
    from torchvision import tv_tensors
    from capseg.segment import SegDataset, seg_transforms
    torch.manual_seed(0)
    imgs = torch.rand(40, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2).numpy()   # 4×4 blocks of one value
    for kind in ('seed', 'dihedral'):
        ds = SegDataset(imgs, imgs > 0.5, seg_transforms(kind, (16, 16)))
        moved = 0
        for i in range(len(ds)):
            x, m = ds[i]
            assert isinstance(x, tv_tensors.Image) and isinstance(m, tv_tensors.Mask)
            agree = (m[0].bool() == (x[0] > 0.5)).float().mean()
            assert agree == 1 if kind == 'dihedral' else agree > 0.85, (kind, agree)
            moved += not torch.equal(x[0], ds.images[i, 0])
        assert moved > 20, kind
