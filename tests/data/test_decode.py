import numpy as np
import pytest
from PIL import Image

from imgclf.data.decode import BadImage, decode_image, decode_paths

SIZE = (16, 16)


def save(path, image, **kwargs):
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
