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


BAR = """
import time
from capseg.core import progress, say
for _ in progress(range(4), desc='epoch 1/1'): time.sleep(0.15)
say('epoch 1/1: train loss 0.5')
for _ in progress(range(3), desc='scoring', leave=True): time.sleep(0.15)
"""

@pytest.mark.skipif(find_spec('ipywidgets') is not None, reason='with ipywidgets the bars are widgets')
def test_progress_is_text_in_jupyter_without_ipywidgets(tmp_path):
    """Each bar is one output of the cell, redrawn in place (what a saved notebook keeps: its last state, not every
    redraw); `leave=False` clears it, as in a terminal; the epoch's line goes to stderr between them."""
    import nbformat
    nb = execute(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(BAR)]), tmp_path, timeout=120)
    outs = [(o['output_type'], o.get('name') or o['data']['text/plain']) for o in nb.cells[0].outputs]
    assert [kind for kind, _ in outs] == ['display_data', 'stream', 'display_data'], outs
    assert outs[0][1] == '' and nb.cells[0].outputs[1]['text'] == 'epoch 1/1: train loss 0.5\n', outs
    assert outs[2][1].startswith('scoring: 100%|') and '3/3' in outs[2][1], outs


def test_no_progress_in_a_pipe():
    "stderr to a pipe (CI, a log file): the epoch's line, no bar."
    r = subprocess.run([sys.executable, '-c', BAR], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == 'epoch 1/1: train loss 0.5\n', r.stderr


@pytest.mark.slow
def test_caption_tutorial_runs_straight_through_offline(tmp_path, monkeypatch):
    """The caption tutorial in a real kernel, as `jupyter nbconvert --execute` runs it, asked to go online
    (`CAPSEG_ONLINE=1`) with no GPU or no hub: the cells that need them say so and are skipped, the rest runs on
    captioned shapes (240 training images: `IN_TEST`, as under nbdev-test), the training cell showing its bars."""
    import nbformat
    for k, v in dict(CAPSEG_ONLINE='1', HF_HUB_OFFLINE='1', IN_TEST='1', TMPDIR=str(tmp_path)).items():
        monkeypatch.setenv(k, v)
    nb = execute(nbformat.read(ROOT / 'nbs/tutorials/caption_flickr8k.ipynb', as_version=4), tmp_path)
    cells = {c.id: c for c in nb.cells}
    printed = lambda cid: ''.join(o.get('text', '') for o in cells[cid].outputs if o['output_type'] == 'stream')
    assert 'the offline version instead' in printed('0d270d63'), cells['0d270d63'].outputs
    assert printed('7d8d7860').startswith('Skipped: Flickr8k and ViT-GPT2 need the internet and a GPU')
    assert any(o['output_type'] == 'display_data' for o in cells['55cd757e'].outputs), 'no progress bars'
    assert 'epoch 8/8: train loss' in printed('55cd757e')
