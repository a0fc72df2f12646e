import os, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'


def capseg_exe() -> str:
    "The installed `capseg` console script (beside this interpreter, else on PATH)."
    exe = Path(sys.executable).parent / 'capseg'
    return str(exe) if exe.exists() else shutil.which('capseg')


def run_capseg(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    "Run the installed `capseg` script; stdout/stderr captured as text."
    env = {**os.environ, 'CAPSEG_DEVICE': os.environ.get('CAPSEG_DEVICE', 'cpu')}
    return subprocess.run([capseg_exe(), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, **kw)


@pytest.fixture
def capseg():
    return run_capseg


@pytest.fixture
def shared_dir():
    if not SHARED.exists(): pytest.skip('../shared is not beside this checkout')
    return SHARED
