"""imgclf check-data: planted exact and near-duplicates, a class of one image, broken files
and a train/test leak are all found; the check fails only on what would break training."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from imgclf.data.check import check_data, format_check, quick_check

from conftest import run_main


def pattern(rng, size=64):
    """A smooth random image: an 8x8 colour pattern upsampled (perceptual hashes are stable
    under re-encoding, and differ between patterns)."""
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BILINEAR)


def make_folder(root, counts, seed=0):
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pattern(rng).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def planted(tmp_path):
    root = make_folder(tmp_path / "data", {"cat": 12, "dog": 10, "emu": 1})
    shutil.copy(root / "cat" / "0.png", root / "cat" / "copy.png")  # identical, same class
    shutil.copy(root / "cat" / "1.png", root / "dog" / "mislabelled.png")  # identical, other class
    Image.open(root / "cat" / "2.png").save(root / "cat" / "2-again.jpg", quality=90)  # near-duplicate
    (root / "dog" / "notes.jpg").write_text("not an image")
    data = (root / "dog" / "3.png").read_bytes()
    (root / "dog" / "cut.png").write_bytes(data[: len(data) // 2])
    return root


def test_finds_duplicates_broken_files_and_a_class_of_one(planted):
    check = check_data(planted)
    assert check.per_class["train"] == {"cat": 14, "dog": 11, "emu": 1}
    assert sorted(p.split("/")[-1] for p, _ in check.undecodable) == ["cut.png", "notes.jpg"]
    groups = sorted(sorted(p.split("data/")[1] for p in g["paths"]) for g in check.exact_duplicates)
    assert groups == [["cat/0.png", "cat/copy.png"], ["cat/1.png", "dog/mislabelled.png"]]
    near = [sorted(p.split("data/")[1] for p in pair["paths"]) for pair in check.near_duplicates]
    assert near == [["cat/2-again.jpg", "cat/2.png"]]  # and no false pair among 26 random patterns
    assert check.imbalance == 14.0
    assert any("emu (1)" in p for p in check.problems)
    assert any("different labels" in w for w in check.warnings)
    assert any("imbalanced" in w for w in check.warnings)
    text = format_check(check)
    assert "FAIL" in text and "emu" in text and "notes.jpg" in text
    assert check.modes == {"RGB": 26} and check.formats == {"PNG": 25, "JPEG": 1}


def test_cli_exit_status_table_and_json(planted, tmp_path):
    result = run_main("check-data", planted, "--json", tmp_path / "check.json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "problem: classes with fewer than 2 usable images" in result.stdout
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["per_class"]["train"]["emu"] == 1 and len(report["exact_duplicates"]) == 2
    shutil.rmtree(planted / "emu")
    result = run_main("check-data", planted)
    assert result.returncode == 0 and "result: ok" in result.stdout, result.stdout[-2000:]
    assert run_main("check-data", tmp_path / "missing").returncode != 0


def test_identical_files_across_train_and_test(tmp_path):
    root = tmp_path / "split"
    make_folder(root / "train", {"a": 3, "b": 3}, seed=1)
    make_folder(root / "test", {"a": 2, "b": 2}, seed=2)
    shutil.copy(root / "train" / "a" / "0.png", root / "test" / "a" / "leak.png")
    check = check_data(root)
    (group,) = check.exact_duplicates
    assert sorted(group["splits"]) == ["test", "train"]
    assert any("both train/ and test/" in w for w in check.warnings) and not check.problems


def test_csv_source(tmp_path):
    root = make_folder(tmp_path / "imgs", {"x": 2, "y": 2})
    rows = [f"{name}/{i}.png,{name}" for name in ("x", "y") for i in range(2)]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "labels.csv").rename(root / "labels.csv")
    check = check_data(root / "labels.csv")
    assert check.per_class == {"train": {"x": 2, "y": 2}} and not check.problems and not check.warnings


def test_quick_check_before_training_warns_on_leaks_and_imbalance(tmp_path, capsys):
    from imgclf.data.labelled import Images

    root = make_folder(tmp_path / "q", {"a": 30, "b": 2})
    shutil.copy(root / "a" / "0.png", root / "a" / "zz.png")
    train_paths = [str(p) for p in sorted((root / "a").iterdir()) if p.name != "zz.png"]
    train_paths += [str(p) for p in sorted((root / "b").iterdir())]
    train = Images(np.array([0] * 30 + [1] * 2, np.int32), ["a", "b"], paths=train_paths)
    val = Images(np.array([0], np.int32), ["a", "b"], paths=[str(root / "a" / "zz.png")])
    notes = quick_check(train, val)
    assert len(notes) == 2 and "imbalanced" in notes[0] and "1 validation image(s)" in notes[1]
    assert capsys.readouterr().err.count("warning:") == 2
    balanced = Images(np.array([0, 1], np.int32), ["a", "b"], paths=train_paths[:1] + train_paths[-1:])
    assert quick_check(balanced, Images(np.array([1], np.int32), ["a", "b"], paths=train_paths[-2:-1])) == []
