import numpy as np
import pytest

from imgclf import ImgclfError, TrainConfig
from imgclf.errors import CheckpointError
from imgclf.run.folder import CHECKPOINT, HISTORY_COLUMNS, RunFolder


def test_new_run_folders_never_reuse_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = RunFolder.create(TrainConfig(name="exp"))
    second = RunFolder.create(TrainConfig(name="exp"))
    assert first.path.name == "exp" and second.path.name == "exp-2" and second.path.is_dir()
    assert RunFolder.create(TrainConfig(out=str(tmp_path / "here"))).path == tmp_path / "here"


def test_config_round_trip_and_non_runs_are_refused(tmp_path):
    with pytest.raises(ImgclfError, match="not a run folder"):
        RunFolder.existing(tmp_path)
    config = TrainConfig(data_dir="x", epochs=3, precision="float32")
    RunFolder(tmp_path).write_config(config)
    assert RunFolder.existing(tmp_path).read_config() == config


def test_history_is_written_with_fixed_columns_first_and_read_back(tmp_path):
    run = RunFolder(tmp_path)
    rows = [{"epoch": e, "loss": 1.0 / e, "val_loss": None, "val_f1[cat]": 0.5, "seconds": 2.0} for e in (1, 2)]
    run.write_history(rows)
    header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
    assert header == HISTORY_COLUMNS + ["val_f1[cat]"]
    history = run.read_history()
    assert history["loss"].tolist() == [1.0, 0.5] and np.isnan(history["val_loss"]).all()
    assert history["val_f1[cat]"].tolist() == [0.5, 0.5]


def test_split_rows_round_trip(tmp_path):
    run = RunFolder(tmp_path)
    assert run.read_split() is None
    rows = [{"item": "a.png", "label": "0", "class": "cat", "subset": "train"},
            {"item": "b.png", "label": "1", "class": "dög", "subset": "val"}]
    run.write_split(rows)
    assert run.read_split() == rows
    # read by column name: another column order (or an extra column) reads the same
    (tmp_path / "split.csv").write_text("subset,class,item,label,note\ntrain,cat,a.png,0,x\nval,dög,b.png,1,y\n",
                                        encoding="utf-8")
    assert run.read_split() == rows
    (tmp_path / "split.csv").write_text("item,label\na.png,0\n", encoding="utf-8")
    assert run.read_split() is None  # columns missing: not a split file imgclf can use


def test_checkpoint_round_trip_and_damage(tmp_path):
    run = RunFolder(tmp_path)
    assert run.read_checkpoint() is None
    run.write_checkpoint({"epoch": 3}, {"model/0": np.arange(4.0)})
    meta, arrays = run.read_checkpoint()
    assert meta["epoch"] == 3 and arrays["model/0"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    (tmp_path / CHECKPOINT).write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        run.read_checkpoint()
