"""Tests of the data layer: image/mask decoding, the sample dataset and loaders, dataset plugins.

Every user-caused data problem must surface as one :class:`DataError` with a one-line message
that names the offending file or folder; everything that decodes must give uint8 RGB.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from uadp.contract import Sample
from uadp.data.images import read_image, read_mask
from uadp.data.loader import SampleDataset, batches, make_loader
from uadp.data.splits import gather
from uadp.errors import DataError
from uadp.registry import get_registry
from uadp_plugins.datasets.mvtec import MVTecConfig
from uadp_plugins.datasets.mvtec_reader import MVTecFolder

TINY_CLASSES = ["blobs", "checker", "dots", "stripes"]


# --------------------------------------------------------------------------- helpers


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _rgb(path: Path, size: tuple[int, int] = (40, 30), colour=(10, 120, 250)) -> Path:
    """A constant-colour RGB PNG of ``size`` = (width, height)."""
    return _save(path, Image.new("RGB", size, colour))


def _assert_one_line_naming(exc: pytest.ExceptionInfo, *needles: object) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    for needle in needles:
        assert str(needle) in message, (needle, message)
    return message


def _mvtec(root: Path) -> MVTecFolder:
    return MVTecFolder(MVTecConfig(root=str(root)))


@pytest.fixture
def tiny_copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may break."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "data"))


# --------------------------------------------------------------------------- read_image


def test_read_image_rgb_png(tmp_path: Path) -> None:
    image = read_image(_rgb(tmp_path / "a.png", (40, 30), (10, 120, 250)))
    assert image.dtype == np.uint8 and image.shape == (30, 40, 3)
    assert (image == np.array([10, 120, 250], np.uint8)).all()


def test_read_image_jpeg(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.jpg", Image.new("RGB", (32, 24), (200, 100, 50)), quality=95)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (24, 32, 3)
    assert np.abs(image.astype(int) - [200, 100, 50]).max() <= 4  # lossy, but close


def test_read_image_grey_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = np.arange(20 * 10, dtype=np.uint8).reshape(10, 20)
    image = read_image(_save(tmp_path / "g.png", Image.fromarray(grey, "L")))
    assert image.dtype == np.uint8 and image.shape == (10, 20, 3)
    for channel in range(3):
        assert np.array_equal(image[..., channel], grey)


def test_read_image_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((8, 12, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 10, 20, 30
    rgba[..., 3] = 0  # fully transparent: the colour must survive unchanged
    rgba[:4, :, 3] = 255
    image = read_image(_save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")))
    assert image.dtype == np.uint8 and image.shape == (8, 12, 3)
    assert (image == np.array([10, 20, 30], np.uint8)).all()


def test_read_image_palette(tmp_path: Path) -> None:
    indices = np.zeros((6, 9), np.uint8)
    indices[:, 4:] = 1
    palette = Image.fromarray(indices, "P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    image = read_image(_save(tmp_path / "p.png", palette))
    assert image.dtype == np.uint8 and image.shape == (6, 9, 3)
    assert (image[:, :4] == [255, 0, 0]).all()
    assert (image[:, 4:] == [0, 0, 255]).all()


def test_read_image_16bit_grey_is_scaled_to_8bit(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535], [257, 257 * 200, 32896]], np.uint16)
    source = Image.fromarray(values)
    assert source.mode.startswith("I")
    path = _save(tmp_path / "g16.png", source)
    with Image.open(path) as reopened:
        assert reopened.mode.startswith("I")  # really stored as 16-bit
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (2, 3, 3)
    assert image[..., 0].tolist() == [[0, 100, 255], [1, 200, 128]]
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_read_image_16bit_scale_does_not_depend_on_image_content(tmp_path: Path) -> None:
    dark = np.full((4, 4), 200, np.uint16)  # a dark 16-bit image: all values <= 255
    bright = dark.copy()
    bright[0, 0] = 65535
    a = read_image(_save(tmp_path / "dark.png", Image.fromarray(dark)))
    b = read_image(_save(tmp_path / "bright.png", Image.fromarray(bright)))
    assert a[1, 1, 0] == b[1, 1, 0]  # raw value 200 of 65535 -> 1, in both


def test_read_image_truncated_png_raises_data_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = _save(tmp_path / "full.png", Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    data = full.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as exc:
        read_image(cut)
    _assert_one_line_naming(exc, cut)


def test_read_image_non_image_raises_data_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(DataError) as exc:
        read_image(path)
    _assert_one_line_naming(exc, path)


def test_read_image_missing_file_raises_data_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.png"
    with pytest.raises(DataError) as exc:
        read_image(path)
    _assert_one_line_naming(exc, path)


# --------------------------------------------------------------------------- read_mask


def test_read_mask_nonzero_is_anomalous(tmp_path: Path) -> None:
    mask = np.zeros((10, 12), np.uint8)
    mask[2, 3] = 1
    mask[5, 6] = 255
    mask[7, 8] = 128
    out = read_mask(_save(tmp_path / "m.png", Image.fromarray(mask, "L")), (10, 12))
    assert out.dtype == bool and out.shape == (10, 12)
    assert np.array_equal(out, mask > 0)


def test_read_mask_of_a_folder_is_the_union_of_its_masks(tmp_path: Path) -> None:
    """MVTec LOCO AD keeps one mask per defect in a folder named after the image."""
    folder = tmp_path / "000"
    folder.mkdir()
    first, second = np.zeros((6, 8), np.uint8), np.zeros((6, 8), np.uint8)
    first[1, 1], second[4, 5] = 255, 7
    _save(folder / "000.png", Image.fromarray(first, "L"))
    _save(folder / "001.png", Image.fromarray(second, "L"))
    assert np.array_equal(read_mask(folder, (6, 8)), (first > 0) | (second > 0))
    with pytest.raises(DataError, match="mask is 8×6 but its image is 9×6"):
        read_mask(folder, (6, 9))
    empty = tmp_path / "001"
    empty.mkdir()
    with pytest.raises(DataError, match="mask folder without a mask image"):
        read_mask(empty, (6, 8))


def test_read_mask_rgb_any_channel_nonzero(tmp_path: Path) -> None:
    mask = np.zeros((5, 5, 3), np.uint8)
    mask[1, 1, 2] = 255
    out = read_mask(_save(tmp_path / "m.png", Image.fromarray(mask, "RGB")), (5, 5))
    assert out.sum() == 1 and out[1, 1]


def test_read_mask_rgba_alpha_is_not_anomaly(tmp_path: Path) -> None:
    mask = np.zeros((10, 10, 4), np.uint8)
    mask[..., 3] = 255  # opaque
    mask[2:4, 2:4, :3] = 255  # a 2×2 white defect
    out = read_mask(_save(tmp_path / "m.png", Image.fromarray(mask, "RGBA")), (10, 10))
    assert out.sum() == 4


def test_read_mask_of_another_size_names_file_and_sizes(tmp_path: Path) -> None:
    path = _save(tmp_path / "000_mask.png", Image.new("L", (50, 40)))
    with pytest.raises(DataError) as exc:
        read_mask(path, (96, 80))  # image is 80 wide, 96 high
    _assert_one_line_naming(exc, path, "50×40", "80×96")


# --------------------------------------------------------------------------- SampleDataset


def test_sample_dataset_resizes_mask_nearest_and_keeps_small_blob(tmp_path: Path) -> None:
    image = _rgb(tmp_path / "img.png", (96, 96))
    mask = np.zeros((96, 96), np.uint8)
    mask[40:46, 50:56] = 255  # a 6×6 blob: 2×2 pixels at 32 px
    mask[:, 17] = 255  # a 1-px line on a column nearest-neighbour skips at scale 3
    mask_path = _save(tmp_path / "img_mask.png", Image.fromarray(mask, "L"))
    dataset = SampleDataset(
        [Sample(str(image), "c", 1, "patch", str(mask_path))], (32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    )
    out = dataset[0]
    resized = out["mask"]
    assert resized.dtype == torch.bool and tuple(resized.shape) == (32, 32)
    expected = cv2.resize((mask > 0).astype(np.uint8), (32, 32), interpolation=cv2.INTER_NEAREST) > 0
    assert np.array_equal(resized.numpy(), expected)  # nearest: no dilation by interpolation
    assert resized[13:16, 16:19].sum() == 4  # the small blob survives, as 2×2


def test_sample_dataset_upscaled_mask_stays_binary_and_blocky(tmp_path: Path) -> None:
    image = _rgb(tmp_path / "img.png", (16, 16))
    mask = np.zeros((16, 16), np.uint8)
    mask[5:7, 9:11] = 1
    mask_path = _save(tmp_path / "img_mask.png", Image.fromarray(mask, "L"))
    dataset = SampleDataset(
        [Sample(str(image), "c", 1, "patch", str(mask_path))], (64, 64), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    )
    resized = dataset[0]["mask"].numpy()
    assert resized.sum() == 4 * 16  # every pixel became exactly a 4×4 block
    assert resized[20:28, 36:44].all()


def test_sample_dataset_normalises_and_returns_label_and_index(tmp_path: Path) -> None:
    colour = (51, 102, 153)  # 0.2, 0.4, 0.6
    paths = [_rgb(tmp_path / f"{i}.png", (48, 40), colour) for i in range(3)]
    samples = [Sample(str(paths[0]), "c", 0), Sample(str(paths[1]), "c", 1, "x", None), Sample(str(paths[2]), "c", 0)]
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.1)
    dataset = SampleDataset(samples, (32, 24), mean, std)
    for index in range(3):
        out = dataset[index]
        assert out["index"] == index and out["label"] == samples[index].label
        image = out["image"]
        assert image.dtype == torch.float32 and tuple(image.shape) == (3, 32, 24)
        expected = [(0.2 - 0.1) / 0.5, (0.4 - 0.2) / 0.25, (0.6 - 0.3) / 0.1]
        for channel in range(3):
            assert torch.allclose(image[channel], torch.full((32, 24), expected[channel]), atol=1e-5)
        assert not out["mask"].any()  # no mask path: all normal


def test_sample_dataset_without_masks(tmp_path: Path) -> None:
    dataset = SampleDataset(
        [Sample(str(_rgb(tmp_path / "a.png")), "c", 0)], (32, 32), (0, 0, 0), (1, 1, 1), with_masks=False
    )
    assert "mask" not in dataset[0]


def test_bad_file_in_worker_surfaces_as_one_clean_data_error(tmp_path: Path) -> None:
    good = [_rgb(tmp_path / f"{i}.png", (32, 32)) for i in range(5)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(good[0].read_bytes()[:40])
    samples = [Sample(str(p), "c", 0) for p in good[:3]] + [Sample(str(bad), "c", 0)] + [Sample(str(good[3]), "c", 0)]
    dataset = SampleDataset(samples, (32, 32), (0, 0, 0), (1, 1, 1), with_masks=False)
    loader = make_loader(dataset, batch_size=2, workers=2)
    seen = 0
    with pytest.raises(DataError) as exc:
        for batch in batches(loader):
            seen += len(batch["index"])
    message = _assert_one_line_naming(exc, bad)
    assert "Traceback" not in message and "DataLoader worker" not in message
    assert seen == 2  # the batches before the bad one came through


# --------------------------------------------------------------------------- mvtec plugin


def test_mvtec_finds_classes_and_samples(tiny_dataset: Path) -> None:
    dataset = _mvtec(tiny_dataset)
    assert dataset.name == "data"
    assert dataset.class_names() == TINY_CLASSES
    train = dataset.samples("dots", "train")
    assert len(train) == 16
    assert all(s.label == 0 and s.class_name == "dots" and s.mask_path is None for s in train)
    test = dataset.samples("dots", "test")
    assert len(test) == 10
    good = [s for s in test if s.label == 0]
    bad = [s for s in test if s.label == 1]
    assert len(good) == 4 and all(s.defect == "good" and s.mask_path is None for s in good)
    assert len(bad) == 6 and all(s.defect == "patch" for s in bad)
    for sample in bad:
        mask = Path(sample.mask_path)
        assert mask.is_file() and mask.parent == tiny_dataset / "dots" / "ground_truth" / "patch"
        assert mask.name == Path(sample.path).stem + "_mask.png"


def test_mvtec_through_registry(tiny_dataset: Path) -> None:
    registration = get_registry().get("datasets", "mvtec")
    dataset = registration.factory(registration.config(root=str(tiny_dataset)))
    assert dataset.class_names() == TINY_CLASSES


def test_mvtec_ignores_non_class_folders_and_non_images(tiny_copy: Path) -> None:
    (tiny_copy / "README.txt").write_text("about this data")
    (tiny_copy / "docs").mkdir()
    (tiny_copy / "dots" / "train" / "good" / "notes.txt").write_text("x")
    shutil.copy(
        tiny_copy / "dots" / "train" / "good" / "000.png", tiny_copy / "dots" / "train" / "good" / ".hidden.png"
    )
    dataset = _mvtec(tiny_copy)
    assert dataset.class_names() == TINY_CLASSES
    assert len(dataset.samples("dots", "train")) == 16


def test_gather_all_and_subset(tiny_dataset: Path) -> None:
    dataset = _mvtec(tiny_dataset)
    every = gather(dataset, None)
    assert every.classes == TINY_CLASSES and len(every.train) == 64 and len(every.test) == 40
    subset = gather(dataset, ["stripes", "dots", "stripes"])
    assert subset.classes == ["stripes", "dots"]
    assert {s.class_name for s in subset.train} == {"stripes", "dots"} and len(subset.train) == 32
    assert {s.class_name for s in subset.test} == {"stripes", "dots"} and len(subset.test) == 20


def test_mvtec_missing_root(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as exc:
        _mvtec(root)
    _assert_one_line_naming(exc, root)


def test_mvtec_root_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "file.txt"
    root.write_text("x")
    with pytest.raises(DataError) as exc:
        _mvtec(root)
    _assert_one_line_naming(exc, root)


def test_mvtec_root_without_any_class(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _rgb(root / "some" / "000.png")
    with pytest.raises(DataError) as exc:
        _mvtec(root).class_names()
    _assert_one_line_naming(exc, root, "MVTec")


def test_mvtec_class_without_training_images(tiny_copy: Path) -> None:
    for path in (tiny_copy / "stripes" / "train" / "good").iterdir():
        path.unlink()
    with pytest.raises(DataError) as exc:
        gather(_mvtec(tiny_copy), None)
    _assert_one_line_naming(exc, "'stripes'", "no training images")


def test_mvtec_class_without_training_images_names_the_folder(tiny_copy: Path) -> None:
    shutil.rmtree(tiny_copy / "stripes" / "train" / "good")
    (tiny_copy / "stripes" / "train" / "good").mkdir()
    with pytest.raises(DataError) as exc:
        gather(_mvtec(tiny_copy), None)
    _assert_one_line_naming(exc, tiny_copy / "stripes")


def test_mvtec_class_without_test_images(tiny_copy: Path) -> None:
    shutil.rmtree(tiny_copy / "dots" / "test")
    with pytest.raises(DataError) as exc:
        gather(_mvtec(tiny_copy), None)
    _assert_one_line_naming(exc, "'dots'", "no test images")


def test_mvtec_anomalous_image_without_mask(tiny_copy: Path) -> None:
    mask = tiny_copy / "checker" / "ground_truth" / "patch" / "002_mask.png"
    mask.unlink()
    with pytest.raises(DataError) as exc:
        _mvtec(tiny_copy).samples("checker", "test")
    _assert_one_line_naming(exc, tiny_copy / "checker" / "test" / "patch" / "002.png", mask)


def test_mvtec_unknown_class_suggests_closest(tiny_dataset: Path) -> None:
    with pytest.raises(DataError) as exc:
        gather(_mvtec(tiny_dataset), ["stripes", "chekcer"])
    _assert_one_line_naming(exc, "data.classes", "'chekcer'", "did you mean 'checker'")


# --------------------------------------------------------------------------- demo plugin


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory):
    registration = get_registry().get("datasets", "demo")
    cache = tmp_path_factory.mktemp("demo_cache")
    return registration.factory(registration.config(cache_dir=str(cache))), cache


def test_demo_builds_in_cache_dir_and_lists_classes(demo_dataset) -> None:
    dataset, cache = demo_dataset
    assert dataset.name == "demo"
    assert dataset.root.parent == cache and dataset.root.is_dir()
    classes = dataset.class_names()
    assert len(classes) >= 4
    assert classes == sorted(p.name for p in dataset.root.iterdir() if (p / "train" / "good").is_dir())


def test_demo_samples_carry_class_names(demo_dataset) -> None:
    dataset, _ = demo_dataset
    splits = gather(dataset, None)
    assert {s.class_name for s in splits.train} == set(splits.classes)
    assert {s.class_name for s in splits.test} == set(splits.classes)
    for sample in splits.test[:: max(1, len(splits.test) // 10)]:
        assert Path(sample.path).parts[-4] == sample.class_name
        if sample.label:
            assert sample.mask_path and Path(sample.mask_path).is_file()
    image = read_image(splits.train[0].path)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_auto_workers_leave_one_core_to_the_model(monkeypatch):
    from uadp.data.loader import worker_count

    for cores, expected in ((1, 1), (2, 1), (4, 3), (32, 8)):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert worker_count("auto") == expected
    assert worker_count(0) == 0 and worker_count(3) == 3


def test_workers_must_be_a_count_or_auto():
    from uadp.config import build_config
    from uadp.errors import ConfigError

    assert build_config(overrides={"data": {"workers": "auto"}}).data.workers == "auto"
    with pytest.raises(ConfigError, match="data.workers"):
        build_config(overrides={"data": {"workers": -1}})


# --------------------------------------------------------------------------- the check of a PNG's pixel stream


def _png(width: int, height: int, depth: int, colour: int, interlace: int, raw: bytes) -> bytes:
    """A PNG file of ``raw`` (its inflated IDAT stream: filter bytes and pixels), written by hand."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _adam7_raw(width: int, height: int, bytes_per_pixel: int) -> bytes:
    """The inflated stream of an interlaced image: each of the 7 passes, row by row, filter 0."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    rows = []
    for x0, y0, dx, dy in passes:
        columns = len(range(x0, width, dx))
        if columns:
            rows += [b"\x00" + bytes(range(7, 7 + columns * bytes_per_pixel)) for _ in range(y0, height, dy)]
    return b"".join(rows)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
def test_the_check_reads_every_kind_of_png_that_decodes(tmp_path: Path, mode: str) -> None:
    from uadp.data.images import check_decodable

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).convert("RGB")
    image = (
        image.convert(mode) if mode != "I;16" else Image.fromarray(rng.integers(0, 65535, (37, 53), dtype=np.uint16))
    )
    image.save(tmp_path / "x.png")
    assert check_decodable(tmp_path / "x.png") == (37, 53)


def test_the_check_reads_an_interlaced_png_and_refuses_a_stream_of_the_wrong_length(tmp_path: Path) -> None:
    from uadp.data.images import check_decodable
    from uadp.errors import DataError

    raw = _adam7_raw(13, 11, 3)
    (tmp_path / "interlaced.png").write_bytes(_png(13, 11, 8, 2, 1, raw))
    assert Image.open(tmp_path / "interlaced.png").convert("RGB").size == (13, 11)  # Pillow decodes it too
    assert check_decodable(tmp_path / "interlaced.png") == (11, 13)
    (tmp_path / "short.png").write_bytes(_png(13, 11, 8, 2, 1, raw[:-5]))  # a valid zlib stream, 5 bytes short
    with pytest.raises(DataError, match="damaged pixel data"):
        check_decodable(tmp_path / "short.png")
