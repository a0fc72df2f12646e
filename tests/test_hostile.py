"""Inputs from a hostile but ordinary user, for segmentation and prediction: every case ends in one line and an exit code,
runs no code from a file, writes nothing outside --out and never hangs (the caption side: test_hostile_caption.py)."""
import contextlib, json, os, signal, subprocess, zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import capseg_main
from capseg.core import claim_output
from capseg.seg_data import make_shapes, save_seg_npz


@contextlib.contextmanager
def time_limit(seconds: int):
    "Fail instead of hanging (a FIFO that is opened blocks forever)."
    def fail(*_): raise TimeoutError(f'still running after {seconds} s')
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try: yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def one_line_error(r, code: int = 2, *words) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr
    assert len(lines) == 1 and lines[0].startswith('capseg: error: '), r.stderr
    for w in words: assert w in lines[0], (w, lines[0])
    return lines[0]


class Evil:
    "A pickle that would leave a marker file if it were unpickled."
    def __init__(self, marker: Path): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


@pytest.fixture
def model(seg_small, tmp_path) -> Path:
    "A copy of the small trained model's folder."
    src = seg_small[0] / 'run'
    dst = tmp_path / 'model'
    dst.mkdir()
    for f in ('model.pt', 'metrics.json', 'checkpoint.pt'): (dst / f).write_bytes((src / f).read_bytes())
    return dst


def small_npz(path: Path, **arrays) -> Path:
    d = make_shapes(n_train=64, n_test=32, seed=5)
    np.savez(path, **{**d.arrays(), **arrays})
    return path


def test_malicious_model_and_checkpoint_do_not_run(model, tmp_path):
    marker = tmp_path / 'pwned'
    data = small_npz(tmp_path / 'd.npz')
    torch.save({'format': 'capseg.segment/1', 'x': Evil(marker)}, model / 'model.pt')
    torch.save({'epoch': 1, 'x': Evil(marker)}, model / 'checkpoint.pt')
    for args in (('predict', '--model', model, data), ('eval', '--model', model, '--data', data, '--out', tmp_path / 'e'),
                 ('train', '--data', data, '--out', model, '--epochs', 2, '--resume')):
        r = capseg_main('segment', *args)
        one_line_error(r, 2, 'refused')
        assert not marker.exists(), args


def zip_with(path: Path, members: dict) -> Path:
    "An npz written member by member, so that names can be anything."
    with zipfile.ZipFile(path, 'w') as z:
        for name, a in members.items():
            with z.open(name, 'w') as f: np.lib.format.write_array(f, a)
    return path


@pytest.mark.parametrize('member', ['../../escaped.npy', '/tmp/capseg-escaped/abs.npy'])
def test_zip_slip_npz_writes_only_under_out(model, tmp_path, member):
    work = tmp_path / 'a' / 'b'
    work.mkdir(parents=True)
    npz = zip_with(work / 'c.npz', {member: np.random.rand(2, 16, 16).astype(np.float32)})
    out = work / 'out'
    r = capseg_main('segment', 'predict', '--model', model, npz, '--out', out)
    assert r.returncode == 0, r.stderr
    written = {p for p in tmp_path.rglob('*') if p.is_file()} | set(Path('/tmp/capseg-escaped').glob('**/*'))
    outside = [p for p in written if out not in p.parents and model not in p.parents and p != npz]
    assert outside == [] and len(list((out / 'masks').rglob('*.png'))) == 2


def test_special_files_refused_in_bounded_time(model, tmp_path):
    (tmp_path / 'zero.npz').symlink_to('/dev/zero')
    os.mkfifo(tmp_path / 'fifo.npz')
    with time_limit(60):
        for name, kind in (('zero.npz', 'character device'), ('fifo.npz', 'FIFO')):
            r = capseg_main('segment', 'train', '--data', tmp_path / name, '--out', tmp_path / 'run', '--epochs', 1)
            one_line_error(r, 2, 'not a regular file', kind)
        folder = tmp_path / 'images'
        folder.mkdir()
        os.mkfifo(folder / 'fifo.png')
        (folder / 'zero.png').symlink_to('/dev/zero')
        r = capseg_main('segment', 'predict', '--model', model, folder, '--out', tmp_path / 'p')
    assert r.returncode == 1 and 'capseg: 2 of 2 inputs failed' in r.stderr
    recs = [json.loads(l) for l in (tmp_path / 'p' / 'predictions.jsonl').read_text().splitlines()]
    assert sorted(r['error'] for r in recs) == ['not a regular file (a FIFO)', 'not a regular file (a character device)']


def test_decompression_bomb_refused_before_reading(tmp_path):
    np.savez_compressed(tmp_path / 'bomb.npz', **make_shapes(n_train=64, n_test=32).arrays(),
                        extra=np.zeros((256, 1024, 1024), np.uint8))           # 256 MiB in a file of ~300 KiB
    assert (tmp_path / 'bomb.npz').stat().st_size < 2 ** 20
    r = capseg_main('segment', 'train', '--data', tmp_path / 'bomb.npz', '--out', tmp_path / 'run', '--epochs', 1,
                    '--max-npz-bytes', 2 ** 27)
    one_line_error(r, 2, 'over the limit', '--max-npz-bytes')
    with zipfile.ZipFile(tmp_path / 'forged.npz', 'w') as z, z.open('image_train.npy', 'w') as f:
        np.lib.format.write_array_header_1_0(f, {'descr': '<f4', 'fortran_order': False, 'shape': (10 ** 5, 10 ** 5)})
        f.write(bytes(16))                                                    # a header that claims 40 GB
    r = capseg_main('segment', 'train', '--data', tmp_path / 'forged.npz', '--out', tmp_path / 'run2', '--epochs', 1)
    one_line_error(r, 2, 'claims more data than the file holds')


@pytest.mark.parametrize('case', ['noise0', 'bool', 'constant'])
def test_degenerate_images_train(tmp_path, case):
    d = make_shapes(n_train=64, n_test=32, seed=1, noise=0.0)
    arrays = {'noise0': {}, 'bool': {'image_train': d.mask_train.astype(bool), 'image_test': d.mask_test.astype(bool)},
              'constant': {'image_train': np.zeros_like(d.image_train), 'image_test': np.zeros_like(d.image_test)}}[case]
    np.savez(tmp_path / 'd.npz', **{**d.arrays(), **arrays})
    r = capseg_main('segment', 'train', '--data', tmp_path / 'd.npz', '--out', tmp_path / 'run', '--epochs', 2, '--json')
    assert r.returncode == 0, r.stderr
    assert 0 <= json.loads(r.stdout.strip().splitlines()[-1])['test_iou'] <= 100


def test_overflowing_values_named(tmp_path):
    data = small_npz(tmp_path / 'd.npz', image_train=np.full((64, 32, 32), 1e38, np.float32))
    one_line_error(capseg_main('segment', 'train', '--data', data, '--out', tmp_path / 'r', '--epochs', 1), 2, 'overflow')


def test_out_is_a_file(tmp_path):
    (tmp_path / 'f').write_text('')
    one_line_error(capseg_main('segment', 'train', '--shapes', '--out', tmp_path / 'f', '--epochs', 1), 2, 'is a file')


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'capseg-test', str(path)], capture_output=True)
    if r.returncode: pytest.skip(f'cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})')
    try: yield path
    finally: subprocess.run(['umount', '-l', str(path)], capture_output=True)


@pytest.mark.parametrize('options,why', [('size=64k', 'No space left'), ('ro,size=64k', 'Read-only')])
def test_out_full_or_read_only(tmp_path, options, why):
    with tmpfs(tmp_path / 'mnt', options) as mnt:
        r = capseg_main('segment', 'train', '--shapes', '--out', mnt / 'run', '--epochs', 1)
        one_line_error(r, 2, 'cannot write there', why)
        assert not any(p.is_file() for p in mnt.rglob('*')), 'nothing half-written'


def test_second_run_on_one_out_refused(tmp_path):
    with claim_output(tmp_path / 'run'):          # a run that holds the folder
        r = capseg_main('segment', 'train', '--shapes', '--out', tmp_path / 'run', '--epochs', 1)
    one_line_error(r, 2, 'in use by another capseg run')


def test_resume_with_another_seed_refused(model, seg_small):
    data = seg_small[0] / 'small.npz'
    r = capseg_main('segment', 'train', '--data', data, '--out', model, '--epochs', 1, '--resume', '--seed', 7)
    one_line_error(r, 2, 'seed 0 (now 7)')


def test_failed_prediction_retried_on_rerun(model, tmp_path):
    from PIL import Image
    folder = tmp_path / 'in'
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / 'a.png')
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(folder / 'dot.png')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'masks').write_text('a file where the masks folder goes')
    r = capseg_main('segment', 'predict', '--model', model, folder, '--out', out)
    assert r.returncode == 1 and 'capseg: 2 of 2 inputs failed' in r.stderr
    (out / 'masks').unlink()
    r = capseg_main('segment', 'predict', '--model', model, folder, '--out', out)
    assert r.returncode == 1 and '1 predicted' in r.stdout, r.stdout + r.stderr
    recs = {Path(r['path']).name: r for r in map(json.loads, (out / 'predictions.jsonl').read_text().splitlines())}
    assert len(recs) == 2 and 'mask' in recs['a.png'] and 'at least 8×8' in recs['dot.png']['error']


def test_files_get_the_umasks_mode(seg_small):
    run = seg_small[0] / 'run'
    for f in ('model.pt', 'metrics.json', 'checkpoint.pt', 'curves.png'):
        assert (run / f).stat().st_mode & 0o777 == 0o666 & ~current_umask(), f


def current_umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def test_symlink_loop_predicts_each_image_once(model, tmp_path):
    from PIL import Image
    folder = tmp_path / 'imgs'
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / 'a.png')
    (folder / 'loop').symlink_to(folder)
    r = capseg_main('segment', 'predict', '--model', model, str(folder) + '/**', '--out', tmp_path / 'out')
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / 'out' / 'predictions.jsonl').read_text().splitlines()) == 1
