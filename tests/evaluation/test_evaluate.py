import numpy as np

from imgclf import TrainConfig, evaluate, evaluate_images, load_data, load_model


def test_evaluate_api_gives_per_class_table_and_matrix(trained_run, image_folder):
    loaded = load_model(trained_run / "best_model.keras")
    images = load_data(TrainConfig(data_dir=str(image_folder), image_size=16, verbose=0)).labelled
    report = evaluate_images(loaded, images)
    assert np.array(report["confusion_matrix"]).sum() == 48
    assert [c["class"] for c in report["per_class"]] == ["blue", "green", "red"]


def test_evaluate_on_a_folder_with_fewer_classes_uses_the_models_class_order(trained_run, tmp_path):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "two", per_class=4, classes={"red": (200, 40, 40), "blue": (40, 40, 200)})
    report = evaluate(trained_run / "best_model.keras", TrainConfig(data_dir=str(folder), verbose=0),
                      out=tmp_path / "report")
    assert report["class_names"] == ["blue", "green", "red"]
    assert [c["support"] for c in report["per_class"]] == [4, 0, 4]
    assert np.array(report["confusion_matrix"])[1].sum() == 0  # no green images
    for name in ("metrics.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png"):
        assert (tmp_path / "report" / name).is_file()
    assert 0 <= report["loss"] and report["images"] == 8


def test_classes_the_model_does_not_know_are_a_clear_error(trained_run, tmp_path):
    import pytest

    from imgclf import DataError

    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "other", per_class=2, classes={"red": (200, 40, 40), "teal": (0, 128, 128)})
    with pytest.raises(DataError, match="not among the model's classes.*teal"):
        evaluate(trained_run / "best_model.keras", TrainConfig(data_dir=str(folder), verbose=0))
