"""Image files of every format the reader takes (capseg.images), written with tifffile and Pillow and read back: dtype
range kept, shape, exact values, stacks, the RGB rule, crops, refusals; and captioning's `load_image` on 16-bit and
float TIFFs."""
import os, struct, threading, zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

import capseg.images
from capseg.caption_data import load_image
from capseg.core import CapsegError
from capseg.images import (LUMA, frame_count, frame_shape, percentile_normalize, read_frame, read_image, read_region,
                           read_rgb8)

RNG = np.random.default_rng(0)
GREY8 = RNG.integers(0, 256, (9, 11), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (9, 11), dtype=np.uint16)
RGB8 = RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)
RGBA8 = RNG.integers(0, 256, (9, 11, 4), dtype=np.uint8)
RGB16 = RNG.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
UNIT = RNG.random((9, 11)).astype(np.float32)
MASK = RNG.random((9, 11)) > 0.5
STACK = RNG.integers(0, 65536, (5, 9, 11), dtype=np.uint16)


def pil(pixels, **kw): return lambda path: Image.fromarray(pixels).save(path, **kw)
def tiff(pixels, **kw): return lambda path: tifffile.imwrite(path, pixels, **kw)


def pages(stack):
    "Each plane written as a page of its own."
    def write(path):
        with tifffile.TiffWriter(path) as w:
            for plane in stack: w.write(plane, photometric='minisblack')
    return write


def luma(rgb): return sum(rgb[..., k].astype(np.float32) * np.float32(w) for k, w in enumerate(LUMA))
def grey(pixels): return luma(pixels) if pixels.ndim == 3 else pixels.astype(np.float32)


# name, writer, stored frames (what read_frame gives, frame by frame), dtype
FORMATS = [
    ('grey8.png', pil(GREY8), [GREY8], np.uint8),
    ('grey16.png', pil(GREY16), [GREY16], np.uint16),
    ('rgb8.png', pil(RGB8), [RGB8], np.uint8),
    ('rgba8.png', pil(RGBA8), [RGBA8], np.uint8),
    ('mask.png', pil(MASK), [MASK], bool),
    ('grey8.bmp', pil(GREY8), [GREY8], np.uint8),
    ('rgb8.webp', pil(RGB8, lossless=True), [RGB8], np.uint8),
    ('grey8.tif', tiff(GREY8), [GREY8], np.uint8),
    ('grey16.tif', tiff(GREY16), [GREY16], np.uint16),
    ('unit.tif', tiff(UNIT), [UNIT], np.float32),
    ('mask.tif', tiff(MASK), [MASK], bool),
    ('rgb8.tif', tiff(RGB8), [RGB8], np.uint8),
    ('rgb16.tif', tiff(RGB16), [RGB16], np.uint16),
    ('planar.tif', tiff(RGB16.transpose(2, 0, 1), photometric='rgb', planarconfig='separate'), [RGB16], np.uint16),
    ('stack3d.tif', tiff(STACK), list(STACK), np.uint16),
    ('pages.tif', pages(STACK), list(STACK), np.uint16),
    ('imagej.tif', tiff(STACK[:, None], imagej=True, metadata={'axes': 'ZCYX'}), list(STACK), np.uint16),
    ('deflate.tif', tiff(STACK, compression='zlib'), list(STACK), np.uint16),
    ('lzw.tif', tiff(RGB16, compression='lzw'), [RGB16], np.uint16),
    ('zstd.tif', tiff(STACK, compression='zstd'), list(STACK), np.uint16),
    ('bigtiff.tif', tiff(GREY16, bigtiff=True), [GREY16], np.uint16),
    ('bigendian.tif', tiff(GREY16, byteorder='>'), [GREY16], np.uint16),
    ('pil_lzw.tif', pil(RGB8, compression='tiff_lzw'), [RGB8], np.uint8),
]


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('formats')
    for name, write, *_ in FORMATS: write(root/name)
    return root


@pytest.mark.parametrize('name,frames,dtype', [(n, f, d) for n, _, f, d in FORMATS], ids=[f[0] for f in FORMATS])
def test_format(folder, name, frames, dtype):
    path = folder/name
    assert frame_count(path) == len(frames)
    for i, expected in enumerate(frames):
        frame = read_frame(path, i)
        assert (frame.dtype, frame.shape) == (np.dtype(dtype), expected.shape)
        np.testing.assert_array_equal(frame, expected)
        image = read_image(path, i)
        assert image.dtype == np.float32 and image.shape == expected.shape[:2] == frame_shape(path, i)
        np.testing.assert_array_equal(image, grey(expected))
        np.testing.assert_array_equal(read_region(path, i, 2, 3, 4, 50), image[2:6, 3:])


def test_jpeg(tmp_path):
    Image.fromarray(RGB8).save(tmp_path/'photo.jpg', quality=95)
    image = read_image(tmp_path/'photo.jpg')
    assert image.dtype == np.float32 and image.shape == (9, 11)
    assert np.abs(image - luma(RGB8)).mean() < 8
    assert np.allclose(luma(RGB8), RGB8 @ np.array(LUMA), atol=1e-3)     # the BT.601 rule itself


def test_ranges_kept(folder):
    assert read_image(folder/'grey16.tif').max() == GREY16.max() > 255
    assert read_image(folder/'grey16.png').max() == GREY16.max()
    assert 0 <= read_image(folder/'unit.tif').min() and read_image(folder/'unit.tif').max() <= 1
    assert set(np.unique(read_image(folder/'mask.tif'))) == {0.0, 1.0}


def test_channel(folder):
    np.testing.assert_array_equal(read_image(folder/'rgb16.tif', channel=1), RGB16[..., 1])
    np.testing.assert_array_equal(read_region(folder/'planar.tif', 0, 1, 1, 3, 3, channel=2), RGB16[1:4, 1:4, 2])
    with pytest.raises(CapsegError, match=r'rgba8.png: channel 4 asked for, but the image has 4 channels \(0–3\)'):
        read_image(folder/'rgba8.png', channel=4)
    with pytest.raises(CapsegError, match='no image 5'): read_image(folder/'stack3d.tif', 5)


def test_region_memory_mapped(tmp_path, monkeypatch):
    "An uncompressed frame is cropped through a memory map: the frame is never decoded whole."
    big = RNG.integers(0, 65536, (3, 600, 700), dtype=np.uint16)
    tifffile.imwrite(tmp_path/'big.tif', big, photometric='minisblack')
    monkeypatch.setattr(capseg.images, 'read_frame', None)   # the whole-frame reader is not called
    np.testing.assert_array_equal(read_region(tmp_path/'big.tif', 2, 500, 650, 64, 64), big[2, 500:564, 650:])


@pytest.mark.parametrize('make,kind', [(os.mkfifo, 'a FIFO'), (os.mkdir, 'a folder'),
                                       (lambda p: os.symlink('/dev/zero', p), 'a character device')])
@pytest.mark.parametrize('reader', [read_image, frame_count, read_rgb8, load_image])
def test_not_a_regular_file(tmp_path, make, kind, reader):
    path = tmp_path/'x.png'
    make(path)
    errors = []
    def read():
        try: reader(path)
        except CapsegError as e: errors.append(str(e))
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), 'hangs'
    assert errors == [f'{path}: not a regular file ({kind})']


def png_header(width: int, height: int) -> bytes:
    "A PNG whose header says width × height, with almost no pixel data: a huge image that costs nothing to write."
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(b'\0' * 16)) + chunk(b'IEND', b''))


def test_too_large(tmp_path):
    "The size is checked from the header, before any pixel is decoded."
    (tmp_path/'huge.png').write_bytes(png_header(40_000, 40_000))
    assert frame_shape(tmp_path/'huge.png') == (40_000, 40_000)
    with pytest.raises(CapsegError, match='40000×40000 = 1,600,000,000 pixels, more than max_pixels = 1,073,741,824'):
        read_image(tmp_path/'huge.png')
    (tmp_path/'bomb.png').write_bytes(png_header(100_000, 100_000))   # above Pillow's own limit, twice MAX_PIXELS
    with pytest.raises(CapsegError, match='bomb.png: cannot read the image \\(DecompressionBombError'):
        read_image(tmp_path/'bomb.png')
    Image.fromarray(GREY8).save(tmp_path/'a.png')
    tifffile.imwrite(tmp_path/'a.tif', STACK)
    for name in ('a.png', 'a.tif'):
        with pytest.raises(CapsegError, match=r'9×11 = 99 pixels, more than max_pixels = 98'):
            read_image(tmp_path/name, max_pixels=98)
        assert read_image(tmp_path/name, max_pixels=99).shape == (9, 11)


def test_normalize():
    image = percentile_normalize(GREY16, 0, 100)
    assert image.dtype == np.float32 and image.min() == 0 and image.max() == 1
    assert not percentile_normalize(np.zeros((5, 5), np.uint16)).any()


@pytest.mark.parametrize('name', ['grey16.tif', 'grey16.png', 'unit.tif', 'rgb16.tif', 'lzw.tif'])
def test_caption_load_image_not_clipped(folder, name):
    "A 16-bit or float TIFF is neither all white (clipped) nor all black (truncated) for the captioner."
    shown = np.asarray(load_image(folder/name))
    assert shown.dtype == np.uint8 and shown.shape == (9, 11, 3)
    assert 20 < shown.mean() < 235 and shown.std() > 20


@pytest.mark.parametrize('name', ['grey8.png', 'rgb8.png', 'rgba8.png', 'mask.png', 'grey8.bmp'])
def test_caption_load_image_8bit_unchanged(folder, name):
    "8-bit files look to the captioner exactly as before: Pillow's own convert('RGB')."
    with Image.open(folder/name) as im: before = np.asarray(im.convert('RGB'))
    np.testing.assert_array_equal(np.asarray(load_image(folder/name)), before)
