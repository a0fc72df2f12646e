"""capseg under a real Jupyter kernel, as a library user meets it: progress bars as text when ipywidgets is missing
(the kernel's stderr is not a TTY), none in a pipe; the caption tutorial executed straight through offline."""
import os, subprocess, sys
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def execute(nb, cwd: Path, timeout: int = 600):
    "Run notebook `nb` (nbformat) in a fresh python3 kernel with `cwd` as its working folder; returns it executed."
    from nbclient import NotebookClient
    NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(cwd)}}).execute()
    return nb


def stream(cell, name: str) -> str:
    return ''.join(o['text'] for o in cell.outputs if o['output_type'] == 'stream' and o['name'] == name)


BAR = """
import time
from capseg.core import progress, say
for _ in progress(range(4), desc='epoch 1/1'): time.sleep(0.15)
say('epoch 1/1: train loss 0.5')
"""

@pytest.mark.skipif(find_spec('ipywidgets') is not None, reason='with ipywidgets the bars are widgets')
def test_progress_is_text_in_jupyter_without_ipywidgets(tmp_path):
    import nbformat
    nb = execute(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(BAR)]), tmp_path, timeout=120)
    err = stream(nb.cells[0], 'stderr')
    assert '\repoch 1/1:   0%|' in err and '4/4' in err, err           # a text bar, redrawn in place by \r
    assert err.rstrip().endswith('epoch 1/1: train loss 0.5'), err  # and the epoch's line


def test_no_progress_in_a_pipe():
    "stderr to a pipe (CI, a log file): the epoch's line, no bar."
    r = subprocess.run([sys.executable, '-c', BAR], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == 'epoch 1/1: train loss 0.5\n', r.stderr
