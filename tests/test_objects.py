"""Objects (issue: segmentation as objects): `--instances` label images, the object table and overlays from the CLI,
objects that straddle tile seams counted once, resume and torchrun shards, object metrics in `segment eval`, and the
bad inputs of object scoring."""
import csv, json, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import capseg_exe, capseg_main
from capseg import segment
from capseg.objects import label_objects, matching, touching_objects


@pytest.fixture(scope='module')
def frames(tmp_path_factory) -> tuple[Path, list]:
    "Three 16-bit TIFF frames of touching nuclei-like ellipses (and their true label images)."
    root = tmp_path_factory.mktemp('frames')
    truths = []
    for seed in range(3):
        image, labels = touching_objects(160, seed=seed)
        tifffile.imwrite(root / f'f{seed}.tif', np.clip(image * 20000 + 3000, 0, 65535).astype(np.uint16))
        tifffile.imwrite(root / f'f{seed}_mask.tif', labels.astype(np.uint16))
        truths.append(labels)
    return root, truths


@pytest.fixture(scope='module')
def model(frames, tmp_path_factory) -> Path:
    "A model trained as a microscopist would (`--images` on raw frames, no masks), briefly: objects need a mask."
    out = tmp_path_factory.mktemp('model') / 'run'
    r = capseg_main('segment', 'train', '--images', *[frames[0] / f'f{k}.tif' for k in range(3)], '--out', out,
                    '--epochs', 2, '--quiet')
    assert r.returncode == 0, r.stderr
    return out


def rows(path: Path) -> list[dict]:
    with open(path, newline='') as f: return list(csv.DictReader(f))


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / 'predictions.jsonl').read_text().splitlines()]


def test_predict_instances_writes_labels_table_overlays_and_resumes(model, frames, tmp_path):
    root, _ = frames
    (root / 'notes.tif').write_text('not an image')
    out = tmp_path / 'out'
    r = capseg_main('segment', 'predict', '--model', model, root / 'f0.tif', root / 'notes.tif', '--out', out,
                    '--instances')
    assert r.returncode == 1 and '1 of 2 inputs failed' in r.stderr, r.stderr    # an error record, as for masks
    r = capseg_main('segment', 'predict', '--model', model, root / 'f0.tif', root / 'f1.tif', root / 'notes.tif',
                    '--out', out, '--instances')                       # a rerun with one more input: only it is done
    assert '1 predicted, 0 failed, 2 done before' in r.stdout, r.stdout + r.stderr
    recs = {Path(rec['path']).name: rec for rec in records(out)}
    assert 'error' in recs['notes.tif']
    for name in ('f0.tif', 'f1.tif'):
        labels = tifffile.imread(recs[name]['labels'])
        assert labels.dtype == np.uint16 and labels.shape == (160, 160)
        assert recs[name]['objects'] == len(np.unique(labels)) - 1 > 0
        assert Path(recs[name]['overlay']).is_file()
    table = rows(out / 'objects.csv')                                   # every image's rows once, in record order
    assert [t['image'] for t in table] == ['f0'] * recs['f0.tif']['objects'] + ['f1'] * recs['f1.tif']['objects']
    assert {'area', 'centroid-0', 'bbox-3', 'equivalent_diameter_area', 'eccentricity', 'solidity', 'intensity_mean',
            'intensity_min', 'intensity_max'} <= set(table[0])
    assert float(table[0]['intensity_max']) > 255                      # the raw 16-bit counts, not normalised
    r = capseg_main('segment', 'predict', '--model', model, root / 'f0.tif', '--out', out)
    assert r.returncode == 2 and 'instances=True' in r.stderr, r.stderr    # masks alone into an --instances folder


def test_objects_across_tile_seams_are_counted_once(model, tmp_path):
    image, _ = touching_objects(400, seed=11, cover=0.45)
    image = (image * 20000 + 3000).astype(np.float32)                   # in the training frames' units
    whole = segment.predict(model, image, instances=True, tile=1024, foreground='bright')
    tiled = segment.predict(model, image, instances=True, tile=192, foreground='bright')       # seams every 96 px: objects straddle them
    assert whole.max() > 10
    m = matching(whole, tiled, 0.8)
    assert m['n_true'] == m['n_pred'] and m['f1'] > 0.97, m
    blocks = label_objects(segment.predict(model, image, tile=1024, foreground='bright'), block=96)    # labelled by blocks, numbered
    m = matching(whole, blocks, 0.99)                                              # by block: the same objects
    assert m['n_true'] == m['n_pred'] == m['tp'], m


def test_python_api_returns_label_images(model, frames):
    root, _ = frames
    stack = tifffile.imread(root / 'f0.tif')[None].repeat(2, 0)
    labels = segment.predict(model, stack, instances=True)             # N×H×W: N frames, a label image each
    assert isinstance(labels, list) and len(labels) == 2 and labels[0].dtype == np.uint16
    assert np.array_equal(labels[0], labels[1])
    loaded = segment.load_model(model)
    assert np.array_equal(segment.predict(loaded, stack[0], instances=True), labels[0])   # a loaded model
    masks = segment.predict(loaded, stack)                               # masks alone: a bool mask per frame
    assert len(masks) == 2 and masks[0].dtype == bool and np.array_equal(masks[0], segment.predict(model, stack[0]))


def test_eval_reports_object_metrics_beside_blur_otsu(model, frames, tmp_path):
    root, _ = frames
    r = capseg_main('segment', 'eval', '--model', model, '--images', *[root / f'f{k}.tif' for k in range(3)],
                    '--masks', *[root / f'f{k}_mask.tif' for k in range(3)], '--out', tmp_path / 'eval')
    assert r.returncode == 0, r.stderr
    assert 'objects ' in r.stdout and 'baseline blur + Otsu F1' in r.stdout, r.stdout
    m = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    for key in ('object_f1', 'object_precision', 'object_recall', 'object_ap', 'object_ap_mean', 'object_mean_matched_iou',
                'object_count_error', 'baseline_object_f1', 'baseline_object_ap_mean'):
        assert 0 <= m[key] <= 100 or key.endswith('count_error'), key
    assert m['objects_true'] == sum(len(np.unique(t)) - 1 for t in frames[1])
    assert len(m['overlays']) == 3 and all(Path(p).is_file() for p in m['overlays'])


@pytest.mark.parametrize('mask, message', [
    (np.zeros((80, 80), np.uint16), 'is 80×80'),
    (np.full((160, 160), 1.5, np.float32), 'holds integers'),
])
def test_eval_bad_label_images_get_one_line(model, frames, tmp_path, mask, message):
    root, _ = frames
    tifffile.imwrite(tmp_path / 'f0.tif', mask)                       # matched to the image by its name
    r = capseg_main('segment', 'eval', '--model', model, '--images', root / 'f0.tif', '--masks', tmp_path / 'f0.tif',
                    '--out', tmp_path / 'eval')
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_eval_empty_mask_is_zero_objects(model, frames, tmp_path):
    root, _ = frames
    tifffile.imwrite(tmp_path / 'f0.tif', np.zeros((160, 160), np.uint16))
    m = segment.evaluate(model=model, images=[root / 'f0.tif'], masks=[tmp_path / 'f0.tif'], out=tmp_path / 'e')
    assert m['objects_true'] == 0 and m['object_recall'] == 0 and m['object_f1'] == 0


@pytest.mark.slow
def test_torchrun_two_processes_instances(model, frames, tmp_path):
    root, _ = frames
    out = tmp_path / 'out'
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
                        capseg_exe(), 'segment', 'predict', '--model', str(model), *[str(root / f'f{k}.tif')
                        for k in range(3)], '--out', str(out), '--instances'], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = records(out)
    assert len(recs) == 3 and not list(out.glob('*.part*'))
    assert len(rows(out / 'objects.csv')) == sum(rec['objects'] for rec in recs)


def test_stacks_written_back(model, frames, tmp_path):
    "A TIFF stack's masks and label images come back as one stack each, frame k = the record of frame k."
    root, _ = frames
    stack = np.stack([tifffile.imread(root / f'f{k}.tif') for k in range(3)])
    tifffile.imwrite(tmp_path / 'zstack.tif', stack, photometric='minisblack')
    out = tmp_path / 'out'
    r = capseg_main('segment', 'predict', '--model', model, tmp_path / 'zstack.tif', root / 'f0.tif', '--out', out,
                    '--instances')
    assert r.returncode == 0, r.stderr
    recs = [rec for rec in records(out) if 'index' in rec]
    masks, labels = (tifffile.imread(out / 'stacks' / kind / tmp_path.name / 'zstack.tif')
                     for kind in ('masks', 'labels'))
    assert masks.shape == labels.shape == (3, 160, 160) and masks.dtype == np.uint8
    for rec in recs:
        assert np.array_equal(masks[rec['index']], np.asarray(Image.open(rec['mask'])))
        assert np.array_equal(labels[rec['index']], tifffile.imread(rec['labels']))
    assert len(list((out / 'stacks').rglob('*.tif'))) == 2           # a single frame is no stack
