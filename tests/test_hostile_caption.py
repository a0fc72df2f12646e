"""Hostile but ordinary input to `capseg caption`: a trainer_state.pt that would run code, image paths that lead out of
the image folder, an --out that is a file, read-only or full, a write that fails during training, --resume with changed
settings. Each gets exit 2 and one line, and nothing is written where it should not be."""
import errno, json, os, pickle, shutil, subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from conftest import capseg_main

TRAIN = ('caption', 'train', '--shapes', '--limit', 16, '--epochs', 1, '--batch-size', 8)


def one_line(r: subprocess.CompletedProcess) -> str:
    "The error of a refused command, without its 'capseg: error: ' prefix: exit 2, no traceback."
    assert r.returncode == 2 and 'Traceback' not in r.stderr, (r.returncode, r.stderr[-2000:])
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith('capseg: error: '), r.stderr[-2000:]
    return line.removeprefix('capseg: error: ')


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*'))


@contextmanager
def tmpfs(where: Path, options: str):
    "A tmpfs mounted on `where` for the block; the test is skipped where mounting is not allowed."
    where.mkdir()
    if shutil.which('mount') is None or subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(where)],
                                                       capture_output=True).returncode:
        pytest.skip('cannot mount a tmpfs here (not root, or no permission)')
    try: yield where
    finally: subprocess.run(['umount', str(where)], check=True)


@pytest.fixture(scope='module')
def run(tmp_path_factory) -> Path:
    "One tiny training run (16 generated images a split, 1 epoch): checkpoint/ and best/."
    out = tmp_path_factory.mktemp('hostile')/'run'
    r = capseg_main(*TRAIN, '--out', out)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


class RunsCode:
    "Pickles to a call of os.system: loading it would create `marker`."
    def __init__(self, marker: Path): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


@pytest.mark.parametrize('writer', ['torch.save', 'pickle.dump'])
def test_malicious_trainer_state_never_runs(run, tmp_path, writer):
    out, marker = tmp_path/'run', tmp_path/'ran'
    shutil.copytree(run, out)
    state = out/'checkpoint'/'trainer_state.pt'
    with open(state, 'wb') as f:
        (torch.save if writer == 'torch.save' else pickle.dump)({'optimizer': RunsCode(marker)}, f)
    before, data = listing(out), state.read_bytes()
    r = capseg_main(*TRAIN, '--epochs', 2, '--out', out, '--resume')
    resumed = one_line(r)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    evaluate = ('caption', 'eval', '--model', out, '--shapes', '--limit', 16, '--out', tmp_path/'eval')
    evaluated = one_line(capseg_main(*evaluate))
    for line in (resumed, evaluated):
        assert line.startswith(f'{state}: refused to load: it would call '), line
    if writer == 'torch.save': assert 'system' in resumed
    assert not marker.exists(), 'the pickle ran'
    assert listing(out) == before and state.read_bytes() == data
    assert not (tmp_path/'eval').exists()


def caption_folder(root: Path, outside: str) -> Path:
    "A caption folder (8 train, 4 test images) whose test entry 1 names `outside`; `root`/secret.png is a real image."
    from capseg.caption_data import captioned_shapes, save_caption_folder
    save_caption_folder(captioned_shapes(8, 0, 4, seed=1), root/'data')
    shutil.copyfile(root/'data'/'images'/'test_00001.png', root/'secret.png')
    test = json.loads((root/'data'/'test.json').read_text())
    test[1]['image'] = outside
    (root/'data'/'test.json').write_text(json.dumps(test))
    return root/'data'


@pytest.mark.parametrize('kind', ['dotdot', 'absolute', 'link'])
def test_caption_paths_outside_the_folder(run, tmp_path, kind):
    outside = {'dotdot': '../../secret.png', 'absolute': str(tmp_path/'secret.png'), 'link': 'link.png'}[kind]
    data = caption_folder(tmp_path, outside)
    (data/'images'/'link.png').symlink_to(tmp_path/'secret.png')
    expected = (f"{data/'test.json'} entry 1: image {outside!r} lies outside {data/'images'} "
                '(pass --allow-outside to allow it)')
    assert one_line(capseg_main('caption', 'train', '--data', data, '--out', tmp_path/'o', '--epochs', 1)) == expected
    assert listing(tmp_path/'o') == [], 'nothing written'
    evaluate = ('caption', 'eval', '--model', run, '--data', data, '--out', tmp_path/'e', '--beams', 1, '--json')
    assert one_line(capseg_main(*evaluate)) == expected and not (tmp_path/'e').exists()
    r = capseg_main(*evaluate, '--allow-outside')
    assert r.returncode == 0, r.stderr[-2000:]
    samples = json.loads((tmp_path/'e'/'samples.json').read_text())
    assert [s['image'] for s in samples] == ['test_00000.png', outside, 'test_00002.png', 'test_00003.png']


@pytest.mark.parametrize('filename, filepath', [('../../secret.png', ''), ('../secret.png', '..')])
def test_karpathy_paths_outside_the_folder(tmp_path, filename, filepath):
    from capseg.caption_data import load_caption_data
    data = caption_folder(tmp_path, 'test_00001.png')
    images = [{'filename': f'{s}_{i:05d}.png', 'filepath': '', 'split': s, 'sentences': [{'raw': 'a red circle'}]}
              for s, n in (('train', 8), ('test', 4)) for i in range(n)]
    images[9].update(filename=filename, filepath=filepath)
    (tmp_path/'dataset.json').write_text(json.dumps({'images': images}))
    args = ('caption', 'train', '--karpathy', tmp_path/'dataset.json', '--images', data/'images', '--out', tmp_path/'o')
    assert one_line(capseg_main(*args)) == (f"{tmp_path/'dataset.json'} image 9: image '../../secret.png' lies outside "
                                            f"{data/'images'} (pass --allow-outside to allow it)")
    assert listing(tmp_path/'o') == []
    split = load_caption_data(karpathy=tmp_path/'dataset.json', images=data/'images', allow_outside=True)['test']
    assert split[1].path == data/'images'/'..'/'..'/'secret.png' and split[1].load().size == (48, 48)


def test_out_is_a_file(tmp_path):
    (tmp_path/'f').write_text('mine')
    assert one_line(capseg_main(*TRAIN, '--out', tmp_path/'f')) == f"--out {tmp_path/'f'} is a file, not a folder"
    assert one_line(capseg_main(*TRAIN, '--out', tmp_path/'f'/'run')) == (f"--out {tmp_path/'f'/'run'}: {tmp_path/'f'} "
                                                                          'is a file, not a folder')
    assert (tmp_path/'f').read_text() == 'mine' and listing(tmp_path) == ['f']


@contextmanager
def read_only_folder(path: Path):
    "A folder no file can be created in: chmod for a user, a read-only tmpfs for root (who ignores permissions)."
    if os.geteuid() != 0:
        path.mkdir(); path.chmod(0o555)
        try: yield path
        finally: path.chmod(0o755)
    else:
        with tmpfs(path, 'ro,size=64k') as p: yield p


def test_out_read_only(tmp_path):
    with read_only_folder(tmp_path/'ro') as ro:
        for out in (ro, ro/'run'):
            line = one_line(capseg_main(*TRAIN, '--out', out))
            assert line.startswith(f'--out {out}: cannot write there ('), line
            assert 'Read-only' in line or 'denied' in line, line
        assert listing(ro) == []


def test_out_full_disk(tmp_path):
    "A disk with 64 kB free fails before training, on the room a checkpoint takes; a full one, on the probe file."
    with tmpfs(tmp_path/'small', 'size=64k') as small:
        r = capseg_main(*TRAIN, '--out', small/'run')
        assert one_line(r).startswith(f"--out {small/'run'}: 0.1 MB free on its disk; a checkpoint and the best model "
                                      'take about'), r.stderr
        assert 'epoch 1/1' not in r.stderr and listing(small) == ['run']
        with open(small/'filler', 'wb', buffering=0) as f, pytest.raises(OSError):
            while True: f.write(bytes(4096))
        line = one_line(capseg_main(*TRAIN, '--out', small/'run'))
        assert line == f"--out {small/'run'}: cannot write there (No space left on device)", line
        assert listing(small) == ['filler', 'run']


@pytest.mark.parametrize('where', ['best', 'checkpoint'])
def test_write_failure_during_training(tmp_path, monkeypatch, where):
    "The disk fills up during training: writing best/ (an OSError) or checkpoint/ (torch.save's RuntimeError) fails."
    import capseg.caption as C
    if where == 'best':
        def save(self, path):   # a half-written folder, then the disk is full
            Path(path).mkdir(parents=True)
            raise OSError(errno.ENOSPC, 'No space left on device')
        monkeypatch.setattr(C.Captioner, 'save', save)
    else:
        def save(obj, f, *a, **k):   # what torch.save raises on a full disk
            raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534')
        monkeypatch.setattr(C.torch, 'save', save)
    out = tmp_path/'run'
    line = one_line(capseg_main(*TRAIN, '--out', out))
    assert line.startswith(f'cannot write {out/where} (') and 'MB free on its disk)' in line, line
    assert listing(out) == (['best'] + [f'best/{f}' for f in listing(out/'best')] if where == 'checkpoint' else [])


def test_resume_refuses_changed_settings(run, tmp_path):
    out = tmp_path/'run'
    shutil.copytree(run, out)
    state = (out/'checkpoint'/'trainer_state.pt').read_bytes()
    resume = (*TRAIN, '--epochs', 2, '--out', out, '--resume')
    assert one_line(capseg_main(*resume, '--seed', 1)) == ('--resume: the checkpoint was made with seed 0, not 1 '
                                                           '(resume with its settings, or use a new --out)')
    line = one_line(capseg_main(*resume, '--seed', 1, '--accum', 2, '--limit', 12))
    assert line.startswith('--resume: the checkpoint was made with seed 0, not 1; accum 1, not 2; shapes '), line
    assert '; limit 16, not 12 (' in line, line
    assert (out/'checkpoint'/'trainer_state.pt').read_bytes() == state
    r = capseg_main(*resume, '--json')   # the same settings, one more epoch: the checkpoint loads (weights_only)
    assert r.returncode == 0 and 'resuming' in r.stderr, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])['epochs'] == 2
