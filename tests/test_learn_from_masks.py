"""`segment train --learn-from-masks` (issue 25): the masks of some frames train beside the Chan–Vese loss; without the
flag nothing changes; frames whose masks trained are never scored; bad label sets are one line."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import capseg_main
from capseg.core import CapsegError
from capseg.objects import touching_objects
from capseg.segment import infer, iou_per_image, load_model, train

FAST = dict(epochs=1, widths=(8, 16), device='cpu', quiet=True, figures=False)


def _frames(folder, n=3, size=48, masks=(0,), mask_size=None):
    "`n` PNG frames of touching ellipses in `folder/images`, label images for frames `masks` in `folder/masks`."
    (folder / 'images').mkdir(parents=True); (folder / 'masks').mkdir()
    for i in range(n):
        x, lab = touching_objects(size, seed=i, noise=0.05)
        Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).save(folder / 'images' / f'f{i}.png')
        if i in masks:
            lab = lab if mask_size is None else np.zeros((mask_size, mask_size), np.int32)
            Image.fromarray(lab.astype(np.uint16)).save(folder / 'masks' / f'f{i}.png')
    return folder / 'images', folder / 'masks'


def test_flag_trains_on_the_masks_and_records_them(tmp_path):
    images, masks = _frames(tmp_path)
    r = capseg_main('segment', 'train', '--images', images, '--masks', masks, '--learn-from-masks',
                    '--out', tmp_path / 'run', '--epochs', '1', '--json', '--quiet')
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert (m['learn_from_masks'], m['labelled_frames'], m['labelled_pixels']) == (True, 1, 48 * 48)
    assert m['foreground'] == 'p > 0.5' and not load_model(tmp_path / 'run', 'cpu')[1]['flip']
    assert not any('train_iou' in k for k in m)              # the labelled frame trained it: never scored
    assert 'heldout_iou' not in m                             # under 5 frames every frame trains: none held out


def test_held_out_masks_are_scored_apart(tmp_path):
    """6 frames, 5 labelled: the hold-out for the risk (frame 4 at seed 0) is drawn from all frames; its mask does not
    train and scores as heldout_iou."""
    images, masks = _frames(tmp_path, n=6, size=40, masks=range(5))
    m = train(images=[images], masks=[masks], learn_from_masks=True, out=tmp_path / 'run', **FAST)
    assert (m['labelled_frames'], m['heldout_masks']) == (4, 1)
    assert m['labelled_pixels'] == 4 * 40 * 40 and 0 <= m['heldout_iou'] <= 100


def test_all_labelled_hold_nothing_out(tmp_path):
    "Every frame labelled: the loss has no Chan–Vese term, so no frame is held out for its risk; the last epoch is kept."
    images, masks = _frames(tmp_path, n=6, size=40, masks=range(6))
    m = train(images=[images], masks=[masks], learn_from_masks=True, out=tmp_path / 'run', **{**FAST, 'epochs': 2})
    assert (m['labelled_frames'], m['holdout_images'], m['holdout_risk'], m['epochs']) == (6, 0, None, 2)
    assert 'heldout_iou' not in m


def test_npz_with_mask_train(tmp_path):
    "An npz's mask_train labels every training image; the test split scores `p > 0.5` (no flip)."
    from capseg.seg_data import make_shapes
    m = train(make_shapes(n_train=24, n_test=8, seed=3), learn_from_masks=True, out=tmp_path, **FAST)
    assert m['labelled_frames'] == 24 - m['holdout_images'] and m['labelled_pixels'] == m['labelled_frames'] * 32 * 32
    assert m['test_flipped_batches'] == 0 and 'train_iou' not in m and m['refine'] is None


def test_without_the_flag_nothing_changes(tmp_path):
    images, masks = _frames(tmp_path)
    m = train(images=[images], masks=[masks], out=tmp_path / 'run', **FAST)
    assert 'train_iou' in m and m['n_masks'] == 1
    assert not {'learn_from_masks', 'labelled_frames', 'labelled_pixels', 'heldout_iou'} & set(m)


@pytest.mark.parametrize('case, message', [
    ('no masks', '--learn-from-masks needs --masks'),
    ('no match', 'no mask matches an image'),
    ('extra mask', 'elsewhere.png: matches no image'),
    ('other size', 'a mask must have its frame'),
])
def test_bad_label_sets_are_one_line(tmp_path, case, message):
    images, masks = _frames(tmp_path, mask_size=32 if case == 'other size' else None)
    if case == 'no match': (masks / 'f0.png').rename(masks / 'elsewhere.png')
    if case == 'extra mask': (masks / 'elsewhere.png').write_bytes((masks / 'f0.png').read_bytes())
    args = ['--images', images] + ([] if case == 'no masks' else ['--masks', masks])
    r = capseg_main('segment', 'train', *args, '--learn-from-masks', '--out', tmp_path / 'run', '--epochs', '1')
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_arrays_without_any_mask_say_so(tmp_path):
    x = [touching_objects(40, seed=s)[0] for s in range(3)]
    with pytest.raises(CapsegError, match='needs --masks'):
        train(images=x, masks=[None] * 3, learn_from_masks=True, out=tmp_path, **FAST)
    with pytest.raises(CapsegError, match='one per image'):
        train(images=x, masks=[None, None], learn_from_masks=True, out=tmp_path, **FAST)
    with pytest.raises(CapsegError, match='choose one'):
        train(images=x, masks=[touching_objects(40, seed=0)[1], None, None], learn_from_masks=True, supervised=True,
              out=tmp_path, **FAST)


def _unseen_iou(out, frames) -> float:
    "IoU in % of the model's foreground (by its recorded polarity) on `frames` it never saw, mean over frames."
    net, rec = load_model(out, 'cpu')
    ious = []
    for x, lab in frames:
        p = infer(net, torch.from_numpy((x - rec['norm']['mean']) / rec['norm']['std']).float()[None, None])[0]
        ious.append(iou_per_image((p < 0.5) if rec['flip'] else (p > 0.5), torch.from_numpy(lab != 0)[None]).item())
    return 100 * float(np.mean(ious))


def test_two_labelled_frames_beat_the_unsupervised_run(tmp_path):
    """Ellipses of very different brightness (0.1-1): two region means put the dim ones in the background; two labelled
    frames of 8 teach the network they are objects. The same epochs and network; a margin well under the one
    measured (76.6 -> 86.0)."""
    draw = lambda s: touching_objects(64, seed=s, brightness=(0.1, 1.0), noise=0.08)
    train_frames, unseen = [draw(s) for s in range(8)], [draw(100 + s) for s in range(4)]
    masks = [train_frames[0][1], train_frames[1][1]] + [None] * 6
    ious = {}
    for learn in (False, True):
        train(images=[x for x, _ in train_frames], masks=masks, learn_from_masks=learn, out=tmp_path / str(learn),
              epochs=4, widths=(8, 16, 32), device='cpu', quiet=True, figures=False)
        ious[learn] = _unseen_iou(tmp_path / str(learn), unseen)
    assert ious[True] > ious[False] + 3, ious


def test_a_run_that_learns_from_masks_trains_the_label_net(tmp_path):
    "Without arch or widths the flag trains LABEL_NET (a UNet), which loads and predicts a frame of any size."
    from capseg.segment import LABEL_NET, predict
    images, masks = _frames(tmp_path, n=3, size=40)
    m = train(images=[images], masks=[masks], learn_from_masks=True, out=tmp_path / 'run', epochs=1, device='cpu',
              quiet=True, figures=False)
    rec = load_model(tmp_path / 'run', 'cpu')[1]
    assert (rec['arch_net'], tuple(rec['widths'])) == LABEL_NET and m['widths'] == list(LABEL_NET[1])
    assert predict(tmp_path / 'run', np.random.rand(50, 70).astype(np.float32)).shape == (50, 70)
    m = train(images=[images], masks=[masks], out=tmp_path / 'plain', epochs=1, device='cpu', quiet=True, figures=False)
    assert load_model(tmp_path / 'plain', 'cpu')[1]['arch_net'] == 'CVNet'          # without the flag: as before


def test_some_frames_unlabelled_train_twice(tmp_path):
    """1 of 3 frames labelled: the first pass (out/first_pass) masks the other two, the second learns from all three
    and is the model; a resume after the first pass does not train it again."""
    images, masks = _frames(tmp_path)
    out = tmp_path / 'run'
    m = train(images=[images], masks=[masks], learn_from_masks=True, out=out, **FAST)
    first = out / 'first_pass'
    assert (first / 'model.pt').is_file() and sorted(p.name for p in (first / 'masks').iterdir()) == [
        '00001.tif', '00002.tif']
    assert m['first_pass']['masks_made'] == 2 and (m['labelled_frames'], m['holdout_images']) == (1, 0)
    assert m['train_seconds'] > m['first_pass']['train_seconds']
    made = (first / 'model.pt').stat().st_mtime_ns
    for name in ('model.pt', 'metrics.json', 'checkpoint.pt'): (out / name).unlink()   # killed in the second pass
    m = train(images=[images], masks=[masks], learn_from_masks=True, out=out, resume=True, **FAST)
    assert (first / 'model.pt').stat().st_mtime_ns == made and m['first_pass']['masks_made'] == 2
