"""Slide sources: reader chosen by content, MPP from the file (valid / invalid / absent), lazy
tile-by-tile reading from the nearest pyramid level, OME-TIFF, OpenSlide, the global working
grid (same pixels as the one resampler), on pyramidal JPEG slides built from real H&E."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from conftest import load_monuseg
from segtme.errors import InputError
from segtme.resample import resample, resample_region
from segtme.io.image import read_image
from segtme.io.source import ArraySource, open_source
from segtme.io.synthetic import write_slide


@pytest.fixture(scope="module")
def he():
    return [rgb for rgb, _, _ in load_monuseg(2)]


@pytest.fixture(scope="module")
def svs(tmp_path_factory, he):
    p = tmp_path_factory.mktemp("svs") / "slide.svs"
    write_slide(p, (9000, 7000), [(1000, 1200, he[0]), (5000, 4000, he[1])], 0.25, min_level_px=600, quality=92)
    return p


def test_svs_levels_mpp_and_pixels(svs, he):
    src = open_source(svs)
    assert type(src).__name__ == "TiffSource"
    assert (src.mpp, src.mpp_source, src.size) == (0.25, "aperio", (9000, 7000))
    assert src.level_sizes[:3] == [(9000, 7000), (2250, 1750), (563, 438)]
    assert src.best_level(0.25) == 0 and src.best_level(0.5) == 0 and src.best_level(1.0) == 1 and src.best_level(5.0) == 2
    # level 0 pixels are the real H&E patch (JPEG q92, 4:2:0 chroma)
    r = src.read_region((1000, 1200, 1000, 1000), 0.25)
    assert r.shape == (1000, 1000, 3) and np.abs(r.astype(int) - he[0]).mean() < 6
    # outside the slide: white; partly outside: the inside part is real
    edge = src.read_region((8900, 6900, 200, 200), 0.25)
    assert edge.shape == (200, 200, 3) and (edge[100:, :] == 255).all() and (edge[:, 100:] == 255).all()
    assert edge[:100, :100].max() < 255
    src.close()


def test_reads_only_the_tiles_it_needs(svs, monkeypatch):
    src = open_source(svs)
    seen = []
    orig = type(src)._segment

    def spy(self, k, idx):
        seen.append((k, idx))
        return orig(self, k, idx)

    monkeypatch.setattr(type(src), "_segment", spy)
    src._cache.clear()
    src.read_region((2000, 2000, 300, 300), 0.25)  # inside tiles (7..9) x (7..9) of 256 px
    assert set(seen) <= {(0, ty * 36 + tx) for ty in range(7, 10) for tx in range(7, 10)} and len(seen) <= 9
    seen.clear()
    src.read_region((0, 0, 9000, 7000), 2.0)  # 2 µm/px: from level 1 (1 µm/px, 2250 px wide), never level 0
    assert seen and all(k == 1 for k, _ in seen)


def test_working_grid_matches_the_one_resampler():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (301, 257, 3), dtype=np.uint8)
    src = ArraySource(a, 0.25)
    for m in (0.25, 0.5, 0.37):
        s = 0.25 / m
        ref = a if s == 1 else resample(a, s)
        assert np.array_equal(src.read_region((0, 0, 257, 301), m), ref)
        win = src.read_working((10, 20, 90, 70), m)
        exp = a[20:70, 10:90] if s == 1 else resample_region(a, s, (10, 20, 90, 70))
        assert np.abs(win.astype(int) - exp).max() <= 1  # Pillow fixed-point rounding only
    assert src.working_box((100, 60, 40, 20), 0.5) == (50, 30, 70, 40)


def test_ome_tiff_physical_size_and_subifd_pyramid(tmp_path, he):
    p = tmp_path / "x.ome.tif"
    write_slide(p, (6000, 4000), [(2000, 1000, he[0])], 0.2528, flavour="ome", min_level_px=500)
    src = open_source(p)
    assert src.mpp == pytest.approx(0.2528) and src.mpp_source == "ome"
    assert len(src.level_sizes) == 3 and src.level_sizes[1] == (1500, 1000)
    r = src.read_region((2000, 1000, 1000, 1000), 0.2528)
    assert np.abs(r.astype(int) - he[0]).mean() < 6


def test_ome_units_are_converted(tmp_path, he):
    p = tmp_path / "nm.ome.tif"
    tifffile.imwrite(p, he[0][:256, :256], ome=True, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 500.0, "PhysicalSizeXUnit": "nm"})
    assert open_source(p).mpp == pytest.approx(0.5)


@pytest.mark.parametrize("raw", ["nan", "-0.5", "1e-", "0"])
def test_invalid_aperio_mpp_is_reported_as_invalid(tmp_path, he, raw):
    p = tmp_path / f"bad{raw}.svs"
    tifffile.imwrite(p, he[0][:256, :256], photometric="rgb", tile=(128, 128), compression="jpeg",
                     description=f"Aperio Image Library v12|AppMag = 40|MPP = {raw}|Date = 01/01/26")
    with pytest.raises(InputError, match=f"MPP {raw} in the Aperio description is not valid.*pass --mpp"):
        open_source(p)
    # the whole-image reader says the same
    img = read_image(p)
    assert img.mpp is None and "is not valid" in img.missing_mpp_message()
    # --mpp overrides
    src = open_source(p, mpp=0.25)
    assert src.mpp == 0.25 and src.mpp_source == "user"


def test_missing_mpp_says_missing(tmp_path, he):
    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, he[0][:128, :128], photometric="rgb")
    with pytest.raises(InputError, match="no resolution information.*--mpp"):
        open_source(p)
    with pytest.raises(InputError, match="needs its microns per pixel"):
        open_source(he[0])


def test_reader_chosen_by_content_not_name(tmp_path, he):
    png_as_tif = tmp_path / "really_a_png.tif"
    PILImage.fromarray(he[0][:100, :120]).save(png_as_tif, format="PNG")
    img = read_image(png_as_tif)
    assert img.rgb.shape == (100, 120, 3) and np.array_equal(img.rgb, he[0][:100, :120])
    src = open_source(png_as_tif, mpp=0.5)
    assert isinstance(src, ArraySource) and src.size == (120, 100)
    tif_as_png = tmp_path / "really_a_tiff.png"
    tifffile.imwrite(tif_as_png, he[0][:64, :64], photometric="rgb", resolution=(40000, 40000), resolutionunit="CENTIMETER")
    assert open_source(tif_as_png).mpp == pytest.approx(0.25)


@pytest.mark.parametrize("content", [b"", b"not an image at all" * 10, b"II*\x00" + b"\x00" * 40])
def test_corrupt_files_are_one_line_errors(tmp_path, content):
    p = tmp_path / "x.svs"
    p.write_bytes(content)
    with pytest.raises(InputError) as e:
        open_source(p, mpp=0.25)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize("reader", ["tifffile", "openslide"])
def test_a_reader_failing_at_open_closes_its_file(tmp_path, svs, reader, monkeypatch):
    """Both pyramid readers share one open-time rule (``levels.closed_on_failure``): any failure
    after the file is open closes it; an InputError passes as it is, anything else becomes one
    line naming the file."""
    import segtme.io.levels as lv

    if reader == "openslide":
        pytest.importorskip("openslide")
    closed = []
    orig = lv.closed_on_failure

    def spy(handle, what):
        closed.append(handle)
        return orig(handle, what)

    mod = __import__("segtme.io.tiff" if reader == "tifffile" else "segtme.io.openslide_source", fromlist=["x"])
    monkeypatch.setattr(mod, "closed_on_failure", spy)
    monkeypatch.setattr(mod, "resolve_mpp", lambda *a: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.raises(InputError) as e:
        open_source(svs, reader=reader)
    assert str(svs) in str(e.value) and str(e.value).endswith(": boom") and "\n" not in str(e.value)
    monkeypatch.setattr(mod, "resolve_mpp", lambda *a: (_ for _ in ()).throw(InputError("no mpp here")))
    with pytest.raises(InputError, match="^no mpp here$"):
        open_source(svs, reader=reader)
    assert len(closed) == 2
    h = closed[0]
    if reader == "tifffile":
        assert h.filehandle.closed
    else:
        with pytest.raises(Exception):
            h.dimensions  # a closed OpenSlide refuses every call


def test_truncated_slide_is_refused_up_front(tmp_path, svs):
    data = svs.read_bytes()
    p = tmp_path / "trunc.svs"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="trunc.svs"):
        src = open_source(p)
        src.read_region((0, 0, 9000, 7000), 8.0)


def test_openslide_reads_the_same_slide(svs):
    pytest.importorskip("openslide")
    a = open_source(svs)
    b = open_source(svs, reader="openslide")
    assert type(b).__name__ == "OpenSlideSource" and b.mpp == 0.25 and b.size == a.size
    ra, rb = a.read_region((900, 1100, 600, 500), 0.5), b.read_region((900, 1100, 600, 500), 0.5)
    assert ra.shape == rb.shape and np.abs(ra.astype(int) - rb).mean() < 1.0


def test_huge_slide_opens_and_reads_lazily(tmp_path, he):
    """A 100 000² px JPEG pyramid (mostly glass): opening, a thumbnail and a region never decode
    more than a few tiles of level 0 (the process would need 30 GB otherwise)."""
    p = tmp_path / "huge.svs"
    write_slide(p, (100_000, 100_000), [(50_000, 50_000, he[0])], 0.25)
    src = open_source(p)
    assert src.size == (100_000, 100_000) and len(src.level_sizes) >= 4
    th = src.thumbnail(16.0)
    assert th.shape == (1563, 1563, 3)
    r = src.read_region((50_000, 50_000, 1000, 1000), 0.5)
    assert r.shape == (500, 500, 3) and r.mean() < 230  # tissue, not glass
    assert src._cache_bytes < 64 * 2**20
