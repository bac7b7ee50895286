"""Image reading, conversions, MPP from TIFF tags, and one clear InputError per bad input."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from segtme.errors import InputError
from segtme.inference.imageio import image_from_array, read_image, validate_mpp


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)


def test_png_jpeg_roundtrip(tmp_path, rgb):
    PILImage.fromarray(rgb).save(tmp_path / "a.png")
    im = read_image(tmp_path / "a.png")
    assert im.rgb.dtype == np.uint8 and im.rgb.shape == (40, 50, 3) and (im.rgb == rgb).all()
    assert im.mpp is None and im.notes == []
    PILImage.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    assert read_image(tmp_path / "a.jpg").rgb.shape == (40, 50, 3)


@pytest.mark.parametrize("unit,res,expected", [("CENTIMETER", 1e4 / 0.25, 0.25), ("INCH", 25400 / 0.5, 0.5)])
def test_tiff_resolution_tags_give_mpp(tmp_path, rgb, unit, res, expected):
    tifffile.imwrite(tmp_path / "a.tif", rgb, photometric="rgb", resolution=(res, res), resolutionunit=unit)
    im = read_image(tmp_path / "a.tif")
    assert im.mpp == pytest.approx(expected, rel=1e-6)
    assert (im.rgb == rgb).all()


def test_tiff_default_72dpi_is_unknown_and_aperio_mpp(tmp_path, rgb):
    tifffile.imwrite(tmp_path / "dpi.tif", rgb, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    assert read_image(tmp_path / "dpi.tif").mpp is None  # 352 µm/px is not a real scan resolution
    tifffile.imwrite(tmp_path / "svs.tif", rgb, photometric="rgb", description="Aperio Image Library |AppMag = 40|MPP = 0.2527")
    assert read_image(tmp_path / "svs.tif").mpp == pytest.approx(0.2527)


def test_tiff_planar_and_16bit(tmp_path, rgb):
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert (read_image(tmp_path / "p.tif").rgb == rgb).all()
    tifffile.imwrite(tmp_path / "w.tif", rgb.astype(np.uint16) * 257, photometric="rgb")
    im = read_image(tmp_path / "w.tif")
    assert (im.rgb == rgb).all() and any("16-bit" in n for n in im.notes)


def test_rgba_composited_on_white(tmp_path, rgb):
    a = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    a[0, 0, 3] = 0  # fully transparent -> white
    a[0, 1, 3] = 128
    PILImage.fromarray(a, "RGBA").save(tmp_path / "a.png")
    im = read_image(tmp_path / "a.png")
    assert (im.rgb[0, 0] == 255).all()
    assert (im.rgb[1:] == rgb[1:]).all()
    expect = np.round(rgb[0, 1].astype(float) * 128 / 255 + 255 * (1 - 128 / 255))
    np.testing.assert_allclose(im.rgb[0, 1], expect, atol=1)
    assert any("alpha" in n for n in im.notes)


def test_greyscale_8_and_16_bit(tmp_path, rgb):
    g = rgb[:, :, 0]
    PILImage.fromarray(g, "L").save(tmp_path / "g.png")
    im = read_image(tmp_path / "g.png")
    assert im.rgb.shape == (40, 50, 3) and (im.rgb[:, :, 2] == g).all()
    assert any("greyscale" in n for n in im.notes)
    PILImage.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    im = read_image(tmp_path / "g16.png")
    assert (im.rgb[:, :, 1] == g).all() and any("16-bit" in n for n in im.notes)


def test_refused_layouts(tmp_path):
    with pytest.raises(InputError, match="channels"):
        image_from_array(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(InputError, match="pixel type"):
        image_from_array(np.zeros((4, 4, 3), np.float32))
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((8, 8, 3), np.float32), photometric="rgb")
    with pytest.raises(InputError, match="floating-point"):
        read_image(tmp_path / "f.tif")
    # 2-channel data is neither grey, grey+alpha-as-file nor RGB(A) in a TIFF page: refused
    tifffile.imwrite(tmp_path / "c2.tif", np.zeros((8, 8, 6), np.uint8), photometric="minisblack", planarconfig="contig")
    with pytest.raises(InputError, match="channels"):
        read_image(tmp_path / "c2.tif")
    # a multi-page stack: the first page is used, with a note
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    im = read_image(tmp_path / "z.tif")
    assert im.rgb.shape == (8, 8, 3) and any("first" in n for n in im.notes)


def test_missing_empty_and_zero_size(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "e.png")
    with pytest.raises(InputError, match="zero size"):
        image_from_array(np.zeros((0, 5, 3), np.uint8))
    tifffile.imwrite(tmp_path / "z0.tif", np.zeros((0, 5), np.uint8))
    with pytest.raises(InputError):
        read_image(tmp_path / "z0.tif")


def test_corrupt_and_truncated(tmp_path, rgb):
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(InputError, match="(not a readable|corrupt)"):
        read_image(tmp_path / "c.png")
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="PNG")
    (tmp_path / "t.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match="(corrupt|truncated)"):
        read_image(tmp_path / "t.png")
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match="(corrupt|truncated)"):
        read_image(tmp_path / "t.jpg")
    tifffile.imwrite(tmp_path / "t.tif", rgb, photometric="rgb")
    data = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(data[:200])
    with pytest.raises(InputError, match="TIFF"):
        read_image(tmp_path / "t.tif")
    (tmp_path / "x.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError):
        read_image(tmp_path / "x.tif")


def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch):
    # a 12000 x 12000 greyscale PNG compresses to ~150 kB: the header alone must be enough
    big = PILImage.new("L", (12000, 12000))
    big.save(tmp_path / "bomb.png", optimize=False, compress_level=9)
    with pytest.raises(InputError, match="decompression-bomb"):
        read_image(tmp_path / "bomb.png", max_pixels=10_000 * 10_000)
    monkeypatch.setenv("SEGTME_MAX_PIXELS", "1000")
    PILImage.new("RGB", (40, 40)).save(tmp_path / "small.png")
    with pytest.raises(InputError, match="exceeds the limit"):
        read_image(tmp_path / "small.png")
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((40, 40, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="exceeds the limit"):
        read_image(tmp_path / "big.tif")


@pytest.mark.parametrize("bad", [float("nan"), -0.25, 0.0, float("inf"), "abc", None, 1e-4, 500.0])
def test_bad_mpp(bad):
    with pytest.raises(InputError):
        validate_mpp(bad)


def test_good_mpp():
    assert validate_mpp("0.25") == 0.25 and math.isclose(validate_mpp(0.2527), 0.2527)


@pytest.mark.parametrize("raw", ["nan", "-0.5", "1e-"])
def test_cli_says_an_invalid_aperio_mpp_is_invalid_not_missing(tmp_path, rgb, raw, capsys):
    from segtme.cli import main

    p = tmp_path / "bad.svs"
    tifffile.imwrite(p, rgb, photometric="rgb", description=f"Aperio Image Library v12|AppMag = 40|MPP = {raw}")
    img = read_image(p)
    assert img.mpp is None and img.mpp_problem == f"MPP {raw} in the Aperio description is not valid (need a number of µm/px within 0.05-20)"
    assert main(["analyze", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"MPP {raw} in the Aperio description is not valid" in err and "--mpp" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_png_named_tif_is_read_by_content(tmp_path, rgb):
    p = tmp_path / "scan.tif"
    PILImage.fromarray(rgb).save(p, format="PNG")
    im = read_image(p)
    assert (im.rgb == rgb).all() and im.mpp is None and im.mpp_problem is None


def test_read_image_of_a_file_object_is_one_line_without_object_repr():
    """Issue #13.9: a file object instead of a path is a one-line InputError naming its type,
    never a bare TypeError or an ``<_io.BytesIO object at 0x…>`` repr."""
    import io as _io

    from segtme.errors import InputError
    from segtme.inference.imageio import read_image

    with pytest.raises(InputError) as e:
        read_image(_io.BytesIO(b"\x89PNG"))
    msg = str(e.value)
    assert "BytesIO" in msg and " at 0x" not in msg and "\n" not in msg
