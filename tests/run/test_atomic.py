import json

import pytest

from imgclf.run.atomic import atomic_path, remove_partial_files, write_csv, write_figure, write_json


def test_writes_replace_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "x.json"
    write_json(path, {"a": "ß"})
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    write_csv(tmp_path / "t.csv", ["h1", "h2"], [[1, "x,y"]])
    assert (tmp_path / "t.csv").read_text() == 'h1,h2\n1,"x,y"\n'
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sub", "t.csv", "x.json"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_leftovers_of_a_killed_process_are_removed(tmp_path):
    (tmp_path / ".checkpoint.npz.partial-abc.npz").write_bytes(b"half")
    (tmp_path / "keep.csv").write_text("x")
    assert [p.name for p in remove_partial_files(tmp_path)] == [".checkpoint.npz.partial-abc.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.csv"]


def test_partial_folders_of_a_killed_export_are_removed_too(tmp_path):
    (tmp_path / ".best_model_savedmodel.partial-1a2b3c4d" / "variables").mkdir(parents=True)
    (tmp_path / ".best_model.onnx.partial-99").write_bytes(b"x")
    (tmp_path / "best_model.keras").write_bytes(b"kept")
    removed = remove_partial_files(tmp_path)
    assert len(removed) == 2 and [p.name for p in tmp_path.iterdir()] == ["best_model.keras"]


def test_a_class_name_the_font_cannot_draw_writes_the_figure_without_a_warning(tmp_path):
    """A CJK class name in DejaVu Sans: boxes in the figure and no warning per glyph, which
    this suite would turn into an error; the filter is write_figure's alone, not left behind."""
    import io

    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"font.family": ["DejaVu Sans"]}):  # Matplotlib's own font, whatever the machine's rc
        figure = Figure(figsize=(2, 2))
        figure.subplots().set_title("猫 / 狗")
        write_figure(tmp_path / "cjk.png", figure, 50)
        assert (tmp_path / "cjk.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with pytest.warns(UserWarning, match="missing from font"):  # the font does lack them: not a vacuous test
            figure.savefig(io.BytesIO(), dpi=50, format="png")
