import numpy as np
import pytest
from PIL import Image

from imgclf.data.decode import BadImage, decode_image, decode_paths, resize_array

from conftest import make_hostile_entries

SIZE = (16, 16)


def save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return str(path)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb_uint8(tmp_path, mode):
    image = Image.new("RGB", (40, 30), (120, 60, 200)).convert(mode)
    ext = {"CMYK": "jpg", "F": "tiff", "I": "tiff", "I;16": "png"}.get(mode, "png")
    pixels = decode_image(save(tmp_path / f"x.{ext}", image), SIZE)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.full((8, 8), 32768, np.uint16)  # half of the 16-bit range
    pixels = decode_image(save(tmp_path / "x.png", Image.fromarray(values)), SIZE)
    assert 120 <= pixels.mean() <= 135


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    pixels = decode_image(str(path), SIZE)
    assert pixels[..., 0].mean() > 200 and pixels[..., 2].mean() < 50


def test_wrong_extension_still_decodes(tmp_path):
    path = save(tmp_path / "really_png.jpg", Image.new("RGB", (5, 5), (0, 255, 0)), format="PNG")
    assert decode_image(path, SIZE)[..., 1].mean() > 200


@pytest.mark.parametrize("content", [b"", b"hello, I am text", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_non_images_raise_bad_image(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImage):
        decode_image(str(path), SIZE)


def test_truncated_jpeg_raises_bad_image(tmp_path):
    full = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:300])
    with pytest.raises(BadImage):
        decode_image(str(cut), SIZE)


def test_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(path)  # 81 Mpx, a few KB on disk
    with pytest.raises(BadImage, match="too large"):
        decode_image(str(path), SIZE)


def test_missing_file_raises_bad_image(tmp_path):
    (tmp_path / "link.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(BadImage, match="missing"):
        decode_image(str(tmp_path / "link.png"), SIZE)


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    from imgclf.data import decode

    path = save(tmp_path / "x.png", Image.new("RGB", (30, 20)))
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 599)
    with pytest.raises(BadImage, match="too large"):
        decode_image(path, SIZE)
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 600)
    assert decode_image(path, SIZE).shape == (16, 16, 3)


def test_decode_paths_keeps_order_skips_and_names_bad_files(tmp_path, capsys):
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0)]):
        paths.append(save(tmp_path / f"{i}.png", Image.new("RGB", (8, 8), colour)))
    (tmp_path / "bad.jpg").write_text("text")
    paths.insert(1, str(tmp_path / "bad.jpg"))
    decoded = decode_paths(paths, SIZE)
    assert decoded.kept.tolist() == [0, 2]
    assert decoded.pixels.shape == (2, 16, 16, 3)
    assert decoded.pixels[0, 0, 0].tolist() == [255, 0, 0] and decoded.pixels[1, 0, 0].tolist() == [0, 255, 0]
    assert decoded.skipped == [(str(tmp_path / "bad.jpg"), "not an image")]
    assert capsys.readouterr().err.count("warning: skipped 1 unusable file(s)") == 1
    assert decode_paths(paths, SIZE, keep_pixels=False).pixels is None


def test_decode_paths_with_nothing_usable_is_a_data_error(tmp_path):
    from imgclf import DataError

    (tmp_path / "a.jpg").write_text("text")
    with pytest.raises(DataError, match="none of the 1 file"):
        decode_paths([str(tmp_path / "a.jpg")], SIZE)


def stripes(tmp_path):
    """60x20 (width x height): red | green | blue vertical stripes of 20 pixels."""
    pixels = np.zeros((20, 60, 3), np.uint8)
    pixels[:, :20, 0] = pixels[:, 20:40, 1] = pixels[:, 40:, 2] = 255
    path = tmp_path / "stripes.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def test_resize_modes_squash_crop_and_pad(tmp_path):
    path, pixels = stripes(tmp_path)
    squashed = decode_image(str(path), (30, 30), resize="squash")
    assert squashed[:, 2, 0].min() > 200 and squashed[:, -3, 2].min() > 200  # every stripe, full height
    cropped = decode_image(str(path), (10, 10), resize="crop")
    assert cropped[..., 1].min() > 200 and cropped[..., [0, 2]].max() < 60  # the centre: green only
    padded = decode_image(str(path), (30, 30), resize="pad")
    assert padded[:9].max() == 0 and padded[-9:].max() == 0  # black borders above and below
    assert padded[15, 2, 0] > 200 and padded[15, 15, 1] > 200 and padded[15, -3, 2] > 200
    # arrays (built-in datasets) are resized the same way
    for mode, size in (("squash", (30, 30)), ("crop", (10, 10)), ("pad", (30, 30))):
        from_file = decode_image(str(path), size, resize=mode).astype(int)
        from_array = resize_array(pixels[None], size, mode)[0].astype(int)
        assert from_array.shape == (*size, 3)
        assert np.mean(np.abs(from_file - from_array)) < 12, mode  # Pillow and Keras interpolate alike


def test_unknown_resize_mode_is_refused(tmp_path):
    path, _ = stripes(tmp_path)
    with pytest.raises(ValueError, match="unknown resize mode"):
        decode_image(str(path), (8, 8), resize="stretch")


def test_only_regular_files_are_read(tmp_path):
    from imgclf.data.decode import read_user_file

    reasons = {}
    for path in make_hostile_entries(tmp_path / "odd"):
        with pytest.raises(BadImage) as caught:
            read_user_file(path)  # a FIFO would block here for ever if it were opened for reading
        reasons[path.name] = str(caught.value)
    assert reasons == {"pipe.jpg": "not a regular file: a named pipe", "zero.jpg": "not a regular file: a character "
                       "device", "urandom.png": "not a regular file: a character device", "loop.jpg": "link loop",
                       "socket.png": "not a regular file: a socket", "folder.jpg": "not a regular file: a folder"}
    (tmp_path / "real.png").write_bytes(b"x" * 100)
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")  # links to regular files are followed
    assert read_user_file(tmp_path / "link.png") == b"x" * 100
    with pytest.raises(BadImage, match="larger than the file size limit"):
        read_user_file(tmp_path / "link.png", max_bytes=99)


def test_hostile_entries_in_a_folder_are_listed_skipped_and_named(tmp_path, capsys):
    from imgclf.data.sources import walk_files

    hostile = make_hostile_entries(tmp_path / "odd")
    good = save(tmp_path / "odd" / "good.png", Image.new("RGB", (8, 8), (255, 0, 0)))
    listed = walk_files(tmp_path / "odd")
    assert sorted(listed) == sorted([good, *map(str, hostile)])  # the folder named like an image is not searched
    decoded = decode_paths(listed, SIZE)
    assert [listed[i] for i in decoded.kept] == [good]
    err = capsys.readouterr().err
    assert err.count("warning: skipped 6 unusable file(s)") == 1 and all(str(p) in err for p in hostile)


def test_decoding_warnings_are_captured_per_thread_and_filters_untouched(tmp_path):
    """Pillow warns on a palette image with byte transparency; decoding in many threads at once
    must neither leak nor lose warnings nor change the process's filters (catch_warnings did)."""
    import threading
    import warnings

    from imgclf.data.check import check_data
    from imgclf.data.decode import captured_warnings

    image = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    for i in range(12):  # palette images with transparency as bytes: Pillow warns on some conversions
        save(tmp_path / "data" / ("a" if i % 2 else "b") / f"{i}.png", image, transparency=b"\0\x80" + b"\xff" * 62)
    filters = list(warnings.filters)  # pytest's "error" filter: any warning that escaped would raise
    check = check_data(tmp_path / "data", perceptual=True)  # eight threads
    assert not check.undecodable and check.per_class["train"] == {"a": 6, "b": 6}
    assert decode_paths(sorted(map(str, (tmp_path / "data").rglob("*.png"))), SIZE).pixels.shape == (12, 16, 16, 3)
    assert warnings.filters == filters

    found, barrier = {}, threading.Barrier(8)

    def work(i):
        with captured_warnings() as mine:
            barrier.wait()
            for _ in range(50):
                warnings.warn(f"thread {i}", UserWarning, stacklevel=1)
        found[i] = {str(w.message) for w in mine}

    with warnings.catch_warnings():  # the main thread alone changes filters, around the threads
        warnings.simplefilter("always")
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert found == {i: {f"thread {i}"} for i in range(8)}
    assert warnings.filters == filters
