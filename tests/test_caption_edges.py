"""The captioner as a library user meets it: 16-bit and float PIL images read as their files are, NaN refused, model
files with the umask's mode, the run's model in plain transformers, and a hub name offline failing fast."""
import os, time

import numpy as np
import pytest
from PIL import Image

from conftest import capseg_main, run_capseg
from capseg.core import CapsegError


@pytest.fixture
def fed(monkeypatch):
    "The uint8 pixels `caption.predict` passes to the model, call by call."
    import capseg.caption as caption
    seen, generate = [], caption.generate_captions
    def spy(cap, pixels, *args, **kw):
        seen.append(pixels.clone())
        return generate(cap, pixels, *args, **kw)
    monkeypatch.setattr(caption, 'generate_captions', spy)
    return seen


@pytest.mark.parametrize('dtype', [np.uint16, np.float32])
def test_pil_image_read_as_its_file(caption_one_process, tmp_path, fed, dtype):
    "`Image.open('grey16.png')` (mode I;16) and a float image: the pixels and caption of the file, not clipped."
    from capseg.caption import predict
    folder, rng = caption_one_process[0], np.random.default_rng(1)
    pixels = (rng.integers(0, 65536, (48, 48)) if dtype == np.uint16 else rng.random((48, 48))).astype(dtype)
    path = tmp_path / ('grey16.png' if dtype == np.uint16 else 'unit.tif')
    if dtype == np.uint16: Image.fromarray(pixels).save(path)
    else: import tifffile; tifffile.imwrite(path, pixels)
    with Image.open(path) as im:
        assert im.mode == ('I;16' if dtype == np.uint16 else 'F')
        from_pil = predict(folder, im, device='cpu')
    from_file = list(predict(folder, [path], device='cpu'))[0]['caption']
    assert np.array_equal(fed[0], fed[1]) and from_pil == from_file
    assert 64 < fed[0].float().mean() < 192, 'scaled, not clipped to white or black'


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_array_refused(caption_one_process, bad):
    from capseg.caption import predict
    image = np.full((48, 48), 0.5, np.float32)
    image[3, 4] = bad
    for given in (image, Image.fromarray(image), [image[..., None].repeat(3, -1)]):
        with pytest.raises(CapsegError, match='NaN or infinite values'): predict(caption_one_process[0], given)


def test_model_files_get_the_umask_mode(caption_one_process, tmp_path):
    "safetensors writes 0600; capseg's model folders are as readable as the rest of its output."
    from capseg.caption import load_captioner
    folder = caption_one_process[0]
    for d in ('best', 'checkpoint'):
        modes = {p.name: p.stat().st_mode & 0o777 for p in (folder / d).iterdir()}
        assert modes['model.safetensors'] == modes['config.json'] == (folder / 'metrics.json').stat().st_mode & 0o777
    old = os.umask(0o027)
    try: load_captioner(folder).save(tmp_path / 'mine')
    finally: os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / 'mine').iterdir()}['model.safetensors'] == 0o640


def test_run_loads_in_plain_transformers(caption_one_process, tmp_path):
    "What the README shows: `best/` of a run is a transformers model folder and pipeline, captioning as capseg does."
    from transformers import VisionEncoderDecoderModel, pipeline
    from capseg.caption import predict
    best = caption_one_process[0] / 'best'
    model = VisionEncoderDecoderModel.from_pretrained(best, local_files_only=True)
    assert model.config.decoder.add_cross_attention
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    captioner = pipeline('image-text-to-text', model=str(best), device='cpu')
    assert captioner(images=image, text='')[0]['generated_text'] == predict(best, image, device='cpu')


@pytest.mark.parametrize('endpoint', [None, 'http://127.0.0.1:9'])
def test_hub_name_offline_fails_fast(tmp_path, monkeypatch, capfd, endpoint):
    """No network (the default endpoint; skipped where the hub answers) or nothing listening: one line within seconds,
    not the hub client's five retries over half a minute. In this process, so that the time is capseg's alone."""
    import huggingface_hub.constants as hf
    if endpoint: monkeypatch.setattr(hf, 'ENDPOINT', endpoint)
    else:
        from capseg.caption_model import hub_reachable
        if hub_reachable(): pytest.skip('the Hugging Face hub answers from here')
    monkeypatch.setattr(hf, 'HF_HUB_OFFLINE', False)
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel   # imported off the clock
    t0 = time.time()
    r = capseg_main('caption', 'predict', '--model', 'capseg-tests/no-such-model', tmp_path / 'x.png')
    seconds, lines = time.time() - t0, (r.stderr + capfd.readouterr().err).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith('capseg: error: --model capseg-tests/no-such-model: ') and 'Offline?' in lines[0]
    assert seconds < 10, f'{seconds:.0f} s'   # at most 3 s waiting for the hub


def test_hub_name_in_the_cache_loads_offline(caption_one_process, tmp_path):
    "Offline, a hub model downloaded before still loads, from the cache (the hub's own layout), without a retry."
    import shutil
    cache = tmp_path / 'hf' / 'hub' / 'models--someone--tiny-captioner'
    shutil.copytree(caption_one_process[0] / 'best', cache / 'snapshots' / ('0' * 40))
    (cache / 'refs').mkdir()
    (cache / 'refs' / 'main').write_text('0' * 40)
    image = tmp_path / 'x.png'
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(image)
    env = {'HF_HOME': str(tmp_path / 'hf'), 'HF_ENDPOINT': 'http://127.0.0.1:9', 'HF_HUB_OFFLINE': '0'}
    r = run_capseg('caption', 'predict', '--model', 'someone/tiny-captioner', image, env=env)
    assert r.returncode == 0 and r.stdout.strip() and not r.stderr.strip(), r.stderr
