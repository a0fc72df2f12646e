"""Rough edges a user meets (issue 27): `segment eval`'s output folder, a full disk while `predict` closes its records,
wrong argument types in the Python API, overflowing values in `eval`, a rerun of `train` over a finished model, and the
help a person reads (`help(capseg.segment)`, docstrings, every CLI flag)."""
import argparse, builtins, contextlib, inspect, os, pydoc, re, shutil, subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import capseg_main
from capseg.core import CapsegError


def one_line_error(r, *words) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith('capseg: error: '), r.stderr[-2000:]
    for w in words: assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture
def model(seg_small, tmp_path) -> Path:
    "A copy of the small trained model's folder."
    dst = tmp_path / 'model'
    shutil.copytree(seg_small[0] / 'run', dst)
    return dst


@contextlib.contextmanager
def read_only(path: Path, model: Path | None = None):
    """Folder `path` (holding a copy of folder `model`'s files, if given) where nothing can be written: chmod for a
    user, a tmpfs remounted read-only for root, who ignores permissions."""
    if os.geteuid() != 0:
        shutil.copytree(model, path) if model else path.mkdir()
        path.chmod(0o555)
        try: yield path
        finally: path.chmod(0o755)
        return
    path.mkdir()
    mount = lambda *o: subprocess.run(['mount', *o], capture_output=True)
    r = mount('-t', 'tmpfs', '-o', 'size=8m', 'capseg-test', str(path))
    if r.returncode: pytest.skip(f'cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})')
    try:
        if model: shutil.copytree(model, path, dirs_exist_ok=True)
        assert mount('-o', 'remount,ro', str(path)).returncode == 0
        yield path
    finally: subprocess.run(['umount', '-l', str(path)], capture_output=True)


# 1. `segment eval`: where metrics.json goes is claimed first, as `train` and `predict` claim --out

def test_eval_out_file_or_read_only(model, seg_small, tmp_path):
    data = seg_small[0] / 'small.npz'
    (tmp_path / 'f').write_text('mine')
    eval_ = lambda *a: capseg_main('segment', 'eval', '--data', data, *a)
    one_line_error(eval_('--model', model, '--out', tmp_path / 'f'), f"--out {tmp_path / 'f'} is a file, not a folder")
    assert (tmp_path / 'f').read_text() == 'mine'
    with read_only(tmp_path / 'ro') as ro:
        one_line_error(eval_('--model', model, '--out', ro), f'--out {ro}: cannot write there (')
        one_line_error(eval_('--model', model, '--out', ro / 'ev'), f"--out {ro / 'ev'}: cannot write there (")
    with read_only(tmp_path / 'ro_model', model) as ro_model:
        line = one_line_error(eval_('--model', ro_model),
                              f'--model {ro_model} (where metrics.json goes without --out): cannot write there (')
        assert 'Read-only' in line or 'denied' in line, line
    r = eval_('--model', model / 'model.pt', '--json')          # a model.pt path: metrics.json goes beside it
    assert r.returncode == 0 and 'eval' in (model / 'metrics.json').read_text(), r.stderr[-2000:]


# 2. A full disk while `predict` closes predictions.jsonl: capseg's own line, not the close's OSError

def test_predict_disk_full_keeps_its_message(model, tmp_path, monkeypatch):
    if not os.path.exists('/dev/full'): pytest.skip('no /dev/full here')
    import capseg.predict
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32), np.uint8)).save(tmp_path / f'{i}.png')
    real_open = builtins.open
    def full_disk(path, *args, **kwargs):         # the records file on a disk with no room left (ENOSPC on each write)
        return real_open('/dev/full' if str(path).endswith('predictions.jsonl') else path, *args, **kwargs)
    monkeypatch.setattr(capseg.predict, 'open', full_disk, raising=False)
    r = capseg_main('segment', 'predict', '--model', model, *[tmp_path / f'{i}.png' for i in range(3)],
                    '--out', tmp_path / 'pred', '--workers', 0)
    one_line_error(r, 'cannot write the predictions (No space left on device)', 'run the same command again')


# 3. The Python API: a wrong argument is one line naming it

X = np.random.default_rng(0).random((4, 32, 32), np.float32)

@pytest.mark.parametrize('call, words', [
    (lambda seg, out: seg.predict(3, X[0]), 'model must be a path'),
    (lambda seg, out: seg.evaluate('x.npz', model=3), 'model must be a path'),
    (lambda seg, out: seg.train(images=X, out=out, epochs='two'), "--epochs must be a whole number ≥ 1, not 'two'"),
    (lambda seg, out: seg.train(images=X, out=out, lr='fast'), "--lr must be a number > 0, not 'fast'"),
    (lambda seg, out: seg.train(images=X, out=out, seed=-1), '--seed must be a whole number ≥ 0'),
    (lambda seg, out: seg.train(shapes=True, out=out, noise='high'), '--noise must be a number'),
    (lambda seg, out: seg.train(images=np.zeros((0, 32, 32)), out=out),
     'images= is an empty ndarray of shape (0, 32, 32)'),
    (lambda seg, out: seg.train(images=[], out=out), 'images= is an empty list: give at least one image'),
    (lambda seg, out: seg.train(3, out=out), 'data= takes an npz path, a SegData or arrays'),
    (lambda seg, out: seg.train(shapes=True, out=3), 'out must be a path'),
    (lambda seg, out: seg.train(images=X, out=out, device='gpu'), "device must be a torch device such as 'cpu'"),
], ids=['predict-model', 'evaluate-model', 'epochs', 'lr', 'seed', 'noise', 'empty-array', 'empty-list', 'data', 'out',
        'device'])
def test_api_arguments_named(call, words, tmp_path):
    from capseg import segment
    with pytest.raises(CapsegError) as e: call(segment, tmp_path / 'run')
    assert words in str(e.value) and '\n' not in str(e.value), str(e.value)
    assert not (tmp_path / 'run' / 'model.pt').exists()


def test_predict_arguments_named(model):
    from capseg import segment
    x = np.zeros((32, 32), np.float32)
    for kwargs, words in ((dict(tile='big'), "tile must be a whole number ≥ 1, not 'big'"),
                          (dict(channel='red'), "--channel must be a whole number ≥ 0, not 'red'"),
                          (dict(batch_size=0.5), '--batch-size must be a whole number ≥ 1, not 0.5')):
        with pytest.raises(CapsegError, match=words): list(segment.predict(model, [model / 'model.pt'], **kwargs))
        if 'batch_size' not in kwargs:
            with pytest.raises(CapsegError, match=words): segment.predict(model, x, **kwargs)


def test_train_takes_arrays_as_data(tmp_path):
    "`train(x)` with an N×H×W array trains on those images, as `train(images=x)` does."
    from capseg import segment
    x = np.random.default_rng(0).random((8, 32, 32), np.float32)
    m = segment.train(x, out=tmp_path / 'run', epochs=1, figures=False, quiet=True)
    assert m['n_train'] == 8 and m['data'] == 'arrays' and (tmp_path / 'run' / 'model.pt').is_file()


# 4. `segment eval` (and predict) on values near float32's limit: refused, as training refuses them

def test_eval_and_predict_refuse_overflowing_values(model, tmp_path):
    from capseg import segment
    from capseg.seg_data import make_shapes
    d = make_shapes(n_train=8, n_test=8, seed=2).arrays()
    big = np.where(d['mask_test'] > 0, np.float32(1e38), np.float32(0))
    np.savez(tmp_path / 'big.npz', **{**d, 'image_test': big})
    one_line_error(capseg_main('segment', 'eval', '--model', model, '--data', tmp_path / 'big.npz', '--out',
                               tmp_path / 'ev'), 'image values up to 1e+38 overflow 32-bit arithmetic', 'rescale')
    assert not (tmp_path / 'ev' / 'metrics.json').exists()
    with pytest.raises(CapsegError, match='overflow 32-bit arithmetic'): segment.predict(model, big[0])


# 5. A rerun of `train` over a finished model: refused at once, unless --resume or --overwrite

def test_segment_rerun_refused_unless_resume_or_overwrite(model, seg_small, tmp_path):
    from capseg import segment
    data, before = seg_small[0] / 'small.npz', (model / 'model.pt').read_bytes()
    train = ('segment', 'train', '--data', data, '--out', model, '--epochs', 1)
    one_line_error(capseg_main(*train), f'--out {model} already holds a trained model (model.pt); give --overwrite',
                   '--resume')
    with pytest.raises(CapsegError, match='already holds a trained model'): segment.train(data, out=model, epochs=1)
    assert (model / 'model.pt').read_bytes() == before, 'untouched'
    for flag in ('--overwrite', '--resume'):
        r = capseg_main(*train, flag, '--json')
        assert r.returncode == 0, (flag, r.stderr[-2000:])


def test_caption_rerun_refused_unless_resume_or_overwrite(tmp_path, monkeypatch):
    "A caption run's folder (checkpoint/ and metrics.json) is refused before anything is loaded."
    import capseg.caption
    from capseg import caption
    out = tmp_path / 'run'
    (out / 'checkpoint').mkdir(parents=True)
    (out / 'metrics.json').write_text('{}')
    train = ('caption', 'train', '--shapes', '--limit', 8, '--epochs', 1, '--out', out)
    one_line_error(capseg_main(*train), f'--out {out} already holds a trained model (checkpoint and metrics.json)')
    with pytest.raises(CapsegError, match='already holds a trained model'): caption.train(shapes=True, out=out)
    def reached(*args, **kwargs): raise CapsegError('past the refusal')
    monkeypatch.setattr(capseg.caption, 'load_caption_data', reached)
    for flag in ('--overwrite', '--resume'):   # past the refusal (--resume: after a warning, no checkpoint/ to load)
        r = capseg_main(*train, flag)
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == 'capseg: error: past the refusal', r.stderr
    assert sorted(p.name for p in out.iterdir()) == ['checkpoint', 'metrics.json']


def test_demo_reruns(monkeypatch, tmp_path):
    "`capseg demo` replaces an earlier demo: both of its runs train with overwrite."
    import capseg.cli
    calls = []
    monkeypatch.setattr(capseg.cli, '_call', lambda module, func, **kw: calls.append((module, kw)) or {})
    capseg.cli.demo(tmp_path)
    assert [(m, kw['overwrite']) for m, kw in calls] == [('segment', True), ('caption', True)]


# 6. What a person reads: help(capseg.segment), the parameters in each docstring, every CLI flag's help

def test_help_lists_train():
    import capseg.segment
    text = pydoc.render_doc(capseg.segment, renderer=pydoc.plaintext)
    functions = text.split('FUNCTIONS', 1)[1]
    assert '\n    train(' in functions and '\n    predict(' in functions


def test_public_functions_describe_their_parameters():
    import capseg.caption, capseg.segment
    missing = []
    for module in (capseg.segment, capseg.caption):
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)): continue
            doc = inspect.getdoc(obj) or ''
            missing += [f'{module.__name__}.{name}: {p}' for p in inspect.signature(obj).parameters
                        if p not in ('self', 'args', 'kwargs') and not re.search(rf'`{p}\b', doc)]   # `out`, `out/x`
            assert 'see the notebook' not in doc and 'see below' not in doc, name
    assert not missing, missing


def test_every_cli_flag_has_help():
    from capseg.cli import build_parser
    def options(parser, path='capseg'):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for choice in a._choices_actions: yield f'{path} {choice.dest}', choice
                for name, sub in a.choices.items(): yield from options(sub, f'{path} {name}')
            else: yield path, a
    undocumented = [(cmd, a.option_strings or a.dest) for cmd, a in options(build_parser())
                    if not (a.help or '').strip()]
    assert not undocumented, undocumented
