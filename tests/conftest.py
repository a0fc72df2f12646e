"""Helpers shared by the tests: the `capseg` command in a subprocess or in this process, a free port, and models
trained once per test session (shared between pytest-xdist workers through a file lock)."""
import contextlib, io, json, os, shutil, socket, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'

# This process, its xdist workers and every subprocess they start: the CPU; no spinning OpenMP threads (on a small shared
# CPU they make every step several times slower); no METEOR, whose Java start costs ~14 s a scoring -- the full default
# captioning run in test_caption.py scores with it (CAPSEG_METEOR=1), and 10_metrics checks it against pycocoevalcap.
for _k, _v in dict(CAPSEG_DEVICE='cpu', OMP_WAIT_POLICY='PASSIVE', CAPSEG_METEOR='0').items(): os.environ.setdefault(_k, _v)


def capseg_exe() -> str:
    "The installed `capseg` console script (beside this interpreter, else on PATH)."
    exe = Path(sys.executable).parent / 'capseg'
    return str(exe) if exe.exists() else shutil.which('capseg')


def run_capseg(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    """Run the installed `capseg` script; stdout/stderr captured as text. For what needs a process of its own: a kill,
    torchrun, an environment read at import time, the console script itself."""
    env = {**os.environ, **kw.pop('env', {})}   # CAPSEG_DEVICE=cpu etc. come from os.environ (set above)
    return subprocess.run([capseg_exe(), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, **kw)


def capseg_main(*args) -> subprocess.CompletedProcess:
    """`capseg ARGS` in this process, returned as `run_capseg` returns it (exit code, stdout, stderr as text), without
    the 2-5 s a new interpreter spends importing torch. Output the library writes to file descriptors directly (Java,
    DataLoader workers) is not captured; an unexpected exception propagates with its traceback."""
    from capseg.cli import main
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
            if isinstance(e.code, str): print(e.code, file=sys.stderr)
    return subprocess.CompletedProcess(['capseg', *map(str, args)], code, out.getvalue(), err.getvalue())


def free_port() -> int:
    "A TCP port no process listens on now (for a torchrun rendezvous: two at once must not share one)."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def capseg():
    return run_capseg


@pytest.fixture
def shared_dir():
    if not SHARED.exists(): pytest.skip('../shared is not beside this checkout')
    return SHARED


def build_once(tmp_path_factory, name: str, build) -> Path:
    """Folder `name`, filled by `build(folder)` once per test session: under pytest-xdist the first worker to ask builds
    it in the run's common temporary folder while the others wait on a file lock, then all of them use it."""
    from filelock import FileLock
    base = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'): base = base.parent          # pytest-N/: this run's, shared by its workers
    folder, done = base / 'once' / name, base / 'once' / f'{name}.done'
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base / 'once' / f'{name}.lock')):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope='session')
def seg_small(tmp_path_factory):
    """`capseg segment train` on a small npz (64 train + 32 test images, 1 epoch), printed for a person: (folder with
    small.npz and the run in run/, the CompletedProcess). test_cli reads its summary; predict tests use its model."""
    def build(folder):
        from capseg.seg_data import make_shapes, save_seg_npz
        save_seg_npz(make_shapes(n_train=64, n_test=32, seed=3), folder / 'small.npz')
        r = capseg_main('segment', 'train', '--data', folder / 'small.npz', '--out', folder / 'run', '--epochs', 1)
        (folder / 'result.json').write_text(json.dumps(dict(returncode=r.returncode, stdout=r.stdout, stderr=r.stderr)))
    folder = build_once(tmp_path_factory, 'seg_small', build)
    r = json.loads((folder / 'result.json').read_text())
    assert r['returncode'] == 0, r['stderr'][-2000:]
    return folder, subprocess.CompletedProcess('capseg segment train', r['returncode'], r['stdout'], r['stderr'])


@pytest.fixture(scope='session')
def caption_one_process(tmp_path_factory):
    """The tiny captioner on 64 generated images a split, 3 epochs, one process, 4 accumulated batches of 8 a step
    (test_caption_scale's reference for 2 processes; the predict tests' caption model): (folder, metrics)."""
    def build(folder):
        from capseg.caption import train
        train(shapes=True, limit=64, epochs=3, batch_size=8, accum=4, out=folder, device='cpu')
    folder = build_once(tmp_path_factory, 'caption_one_process', build)
    return folder, json.loads((folder / 'metrics.json').read_text())
