"""Prediction at scale (capseg.predict), for both jobs: a folder with bad files and a subfolder, a rerun, a killed run
resumed, and two processes under torchrun."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import capseg_exe, capseg_main
from capseg import segment


@pytest.fixture(scope='module')
def models(seg_small, caption_one_process):
    "A segmentation model (1 epoch on 64 images) and a tiny captioner (3 epochs on 64), trained once per session in conftest (prediction does not need good ones)."
    return {'segment': seg_small[0]/'run', 'caption': caption_one_process[0]}


def grey_png(path: Path, h=32, w=32, seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope='module')
def messy(tmp_path_factory) -> Path:
    "Good images (two `a.png` in different folders, a JPEG, an odd size), a truncated JPEG, a text file named .png, a README."
    root = tmp_path_factory.mktemp('messy')
    grey_png(root/'a.png'); grey_png(root/'sub'/'a.png', seed=1); grey_png(root/'sub'/'deeper'/'odd.png', 50, 37)
    Image.open(grey_png(root/'full.png', 64, 64)).convert('RGB').save(root/'b.jpg', quality=95)
    data = (root/'b.jpg').read_bytes()
    (root/'truncated.jpg').write_bytes(data[:len(data) // 2])
    (root/'full.png').unlink()
    (root/'notes.png').write_text('not an image')
    (root/'README.txt').write_text('not an input: no image suffix')
    return root


GOOD = ['a.png', 'b.jpg', 'sub/a.png', 'sub/deeper/odd.png']
BAD = ['notes.png', 'truncated.jpg']


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out/'predictions.jsonl').read_text().splitlines()]


def by_name(recs: list[dict], root: Path) -> dict:
    names = [os.path.relpath(r['path'], root) for r in recs]
    assert len(set(names)) == len(names), 'each input once'
    return dict(zip(names, recs))


def test_segment_folder_with_bad_files_then_rerun(models, messy, tmp_path):
    out = tmp_path/'out'
    r = capseg_main('segment', 'predict', '--model', models['segment'], messy, '--out', out)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith('capseg: 2 of 6 inputs failed'), r.stderr
    recs = by_name(records(out), messy)
    assert sorted(recs) == sorted(GOOD + BAD)
    for name in BAD: assert set(recs[name]) == {'path', 'error'} and recs[name]['error']
    for name in GOOD:
        mask = np.asarray(Image.open(recs[name]['mask']))
        assert recs[name]['mask'] == str(out/'masks'/Path(name).with_suffix('.png')), 'relative paths kept'
        assert mask.shape == (recs[name]['height'], recs[name]['width']) and set(np.unique(mask)) <= {0, 255}
    assert recs['sub/deeper/odd.png']['height'] == 50 and recs['sub/deeper/odd.png']['width'] == 37
    before = (out/'predictions.jsonl').read_text()
    again = segment.predict(models['segment'], [messy], out=out, device='cpu')      # the CLI's rerun, in this process
    assert list(again) == [] and (again.done_before, again.failed_before) == (6, 2)
    assert (out/'predictions.jsonl').read_text() == before, 'a rerun adds no records'


def test_caption_folder_with_bad_files_then_rerun(models, messy, tmp_path):
    from capseg.caption import predict
    out = tmp_path/'out'
    run = predict(models['caption'], [messy], out=out, device='cpu', batch_size=2)
    recs = by_name(list(run), messy)
    assert sorted(recs) == sorted(GOOD + BAD) and (run.predicted, run.failed) == (4, 2)
    assert all(recs[n]['caption'] for n in GOOD) and all('cannot read the image' in recs[n]['error'] for n in BAD)
    assert by_name(records(out), messy) == recs
    again = predict(models['caption'], [messy], out=out, device='cpu')
    assert list(again) == [] and (again.done_before, again.failed_before) == (6, 2)
    assert len(records(out)) == 6, 'a rerun adds no records'


@pytest.fixture(scope='module')
def many(tmp_path_factory) -> Path:
    "240 images of 160x160 in 4 folders: slow enough to be killed mid-run."
    root = tmp_path_factory.mktemp('many')
    for i in range(240): grey_png(root/f"{i % 4}"/f"{i:03d}.png", 160, 160, seed=i)
    return root


def children(pid: int) -> list[int]:
    "Live child processes of `pid` (Linux /proc)."
    found = []
    for d in filter(str.isdigit, os.listdir('/proc')):
        try: state, ppid = Path(f'/proc/{d}/stat').read_text().rsplit(')', 1)[1].split()[:2]
        except OSError: continue
        if int(ppid) == pid and state != 'Z': found.append(int(d))
    return found


def alive(pid: int) -> bool:
    try: return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError: return False


@pytest.mark.slow
def test_killed_run_resumes(models, many, tmp_path):
    out = tmp_path/'out'
    cmd = [capseg_exe(), 'segment', 'predict', '--model', str(models['segment']), str(many), '--out', str(out),
           '--batch-size', '8', '--workers', '1']
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while not (out/'predictions.jsonl').exists() or (out/'predictions.jsonl').stat().st_size < 1000:
            assert p.poll() is None, p.communicate()
            assert time.time() - t0 < 120
            time.sleep(0.01)
        workers = children(p.pid)
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None: p.kill()
    done = len((out/'predictions.jsonl').read_text().splitlines())
    assert 0 < done < 240, 'killed mid-run'
    time.sleep(0.5)
    assert workers and not [w for w in workers if alive(w)], 'the DataLoader workers die with the main process'
    rerun = segment.predict(models['segment'], [many], out=out, device='cpu', batch_size=8)
    assert len(list(rerun)) == 240 - rerun.done_before and rerun.done_before >= done - 1    # a torn last line is redone
    recs = by_name(records(out), many)
    assert len(recs) == 240 and all(Path(rec['mask']).is_file() for rec in recs.values())


@pytest.mark.slow
def test_torchrun_two_processes_each_input_once(models, messy, many, tmp_path):
    out = tmp_path/'out'
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2', capseg_exe(),
                        'segment', 'predict', '--model', str(models['segment']), str(messy), str(many), '--out', str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]     # two bad files: each process exits 1
    assert '244 predicted, 2 failed, 0 done before (246 inputs, 2 processes)' in r.stdout, r.stdout + r.stderr[-3000:]
    recs = records(out)
    assert len({(rec['path'], rec.get('index')) for rec in recs}) == len(recs) == 246, 'each input exactly once'
    assert sum('error' in rec for rec in recs) == 2 and not list(out.glob('*.part*')), 'parts merged'
