import pytest

from imgclf.cli import EXIT_ERROR, main
from imgclf.errors import CheckpointError, DataError, ImgclfError, ModelFileError


@pytest.mark.parametrize("kind", [DataError, ModelFileError, CheckpointError])
def test_every_user_facing_error_is_an_imgclf_error(kind):
    assert issubclass(kind, ImgclfError)


def test_the_cli_prints_an_imgclf_error_as_one_line(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "none.keras"), str(tmp_path)]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imgclf: error: model file not found")
