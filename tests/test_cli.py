import json, os, re, subprocess

import pytest

from conftest import capseg_exe, capseg_main, run_capseg


def test_console_script_installed():
    assert capseg_exe(), 'the capseg console script is installed'


def test_help_lists_commands():
    "The console script itself, in a subprocess (the other CLI tests call `capseg.cli.main` in this process)."
    r = run_capseg('--help')
    assert r.returncode == 0, r.stderr
    for cmd in ('segment', 'caption', 'demo'): assert cmd in r.stdout


def test_subcommand_help():
    for args in (('segment', 'train', '--help'), ('caption', 'train', '--help'), ('segment', 'predict', '--help')):
        r = capseg_main(*args)
        assert r.returncode == 0 and '--out' in r.stdout + ('--out' if 'predict' in args else ''), r.stderr


def test_bad_usage_exits_nonzero():
    r = capseg_main('segment', 'train', '--out', 'x')   # neither --data nor --shapes
    assert r.returncode == 2 and 'required' in r.stderr


# --- output for people (no history, a few lines) and for scripts (--json) ---

@pytest.fixture(scope='module')
def small_run(seg_small):
    "One epoch on a small npz, printed for a person (the default output; trained once per session, in conftest)."
    return seg_small


def test_train_prints_a_summary(small_run):
    tmp, r = small_run
    lines = r.stdout.strip().splitlines()
    assert 3 <= len(lines) <= 20 and 'history' not in r.stdout and len(r.stdout) < 2000, r.stdout
    assert lines[0] == f"capseg segment train on {tmp/'small.npz'}"
    text = '\n'.join(lines)
    assert '64 train + 32 test images' in text and re.search(r'test IoU \d+\.\d %', text)
    assert re.search(r'baseline blur \+ Otsu \d+\.\d % \([+-]\d+\.\d points\)', text) and ' s training' in text
    assert str(tmp/'run'/'metrics.json') in text and str(tmp/'run'/'results_test.png') in text
    assert f"capseg segment predict --model {tmp/'run'}" in text


def test_json_output_parses(small_run, capsys, tmp_path):
    "In this process (no second interpreter start): `main` with --json prints one JSON document and nothing else."
    from capseg.cli import main
    tmp, _ = small_run
    main(['segment', 'eval', '--data', str(tmp/'small.npz'), '--model', str(tmp/'run'), '--out', str(tmp_path/'eval'), '--json'])
    metrics = json.loads(capsys.readouterr().out)
    assert 'history' not in metrics and 0 <= metrics['test_iou'] <= 100 and metrics['n_test'] == 32


def test_summary_reads_what_is_there(tmp_path):
    "Keys come and go between versions (alpha selection, METEOR, world_size ...): shown when there, never a crash."
    from capseg.cli import demo_table, summary
    assert summary({}) == ''
    seg = summary({'test_iou': 90.04, 'baseline_test_iou': 83.6, 'alpha': 0.2, 'alpha_rule': 'kappa 0.5 × noise variance',
                   'widths': [8, 16, 32], 'selection': {'chosen': [8, 16, 32], 'candidates': [{}, {}]},
                   'epochs': 1, 'train_seconds': 3.0, 'history': {'x': [[1, 2]] * 100}})
    assert 'test IoU 90.0 %' in seg and '(+6.4 points)' in seg and 'alpha 0.2 (kappa 0.5 × noise variance)' in seg
    assert '1 epoch,' in seg and 'network 8/16/32, the lowest held-out risk of 2' in seg
    assert 'history' not in seg and '[1, 2]' not in seg
    cap = summary({'bleu4': 0.2512, 'cider': 0.61, 'meteor': 0.2, 'rouge_l': None, 'world_size': 2, 'best_epoch': 3,
                   'n_images': 1000, 'attribute_accuracy': 0.998})
    assert 'BLEU-4 0.251 · CIDEr 0.610 · METEOR 0.200' in cap and 'ROUGE-L' not in cap
    assert '2 processes' in cap and 'best epoch 3' in cap and '1000 test images' in cap and 'attributes 99.8 %' in cap
    for odd in ({'test_iou': None}, {'test_iou': 'n/a', 'baseline_test_iou': 80}, {'selection': 3, 'alpha': 'auto', 'widths': 'x'}, {'widths': [8], 'selection': {'candidates': 2}},
                {'world_size': '2', 'epochs': None, 'skipped_images': 0}):
        summary(odd, tmp_path, 'title')
    for job in ('segment', 'caption'): (tmp_path/job).mkdir()
    (tmp_path/'segment'/'results_test.png').write_bytes(b'')
    table = demo_table({'segment': {'test_iou': 91.0, 'baseline_test_iou': 83.6, 'train_seconds': 20.4},
                        'caption': {'bleu4': 0.5, 'cider': 1.25}}, tmp_path).splitlines()
    assert len(table) == 5 and table[1].split()[:4] == ['job', 'result', 'baseline', 'training']
    assert 'blur + Otsu 83.6 %' in table[2] and f"{tmp_path/'segment'}/: results_test.png" in table[2]
    assert 'BLEU-4 0.500 · CIDEr 1.250' in table[3] and str(tmp_path/'metrics.json') in table[4]


# --- a missing or broken dependency is named, with the pip command that fixes it ---

def run_without(tmp_path, missing: str = '', broken: str = ''):
    """`capseg segment train` in a subprocess where package `missing` cannot be imported (a sitecustomize on PYTHONPATH
    blocks it) or package `broken` fails on import the way a torchvision built for another torch does."""
    (tmp_path/'sitecustomize.py').write_text(f'import sys\nif {missing!r}: sys.modules[{missing!r}] = None\n')
    if broken:
        (tmp_path/broken).mkdir()
        (tmp_path/broken/'__init__.py').write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    env = {**os.environ, 'PYTHONPATH': str(tmp_path)}
    return subprocess.run([capseg_exe(), 'segment', 'train', '--data', 'x.npz', '--out', tmp_path / 'out'],
                          capture_output=True, text=True, timeout=300, env=env)


def test_missing_package_is_named(tmp_path):
    r = run_without(tmp_path, missing='skimage')
    line, = r.stderr.strip().splitlines()
    assert r.returncode == 2 and line.startswith('capseg: error: capseg segment needs the Python package scikit-image')
    assert "pip install 'scikit-image>=" in line and 'not available' not in line


def test_broken_package_is_named(tmp_path):
    r = run_without(tmp_path, broken='torchvision')
    line, = r.stderr.strip().splitlines()
    assert r.returncode == 2 and 'could not import torchvision (RuntimeError: operator torchvision::nms' in line
    assert "pip install --force-reinstall 'torchvision>=" in line and "must match torch's" in line
