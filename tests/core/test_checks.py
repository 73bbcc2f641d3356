import numpy as np
import pytest
import torch

from vmoba import checks


def test_numbers_of_every_numeric_type_are_accepted():
    assert checks.integer("n", np.int64(3), min=1) == 3
    assert checks.integer("n", torch.tensor(4)) == 4
    assert checks.real("x", np.float32(0.25), min=0, max=1) == pytest.approx(0.25)
    assert checks.real("x", 1) == 1.0
    assert checks.int_tuple("c", (np.int32(2), 3), 2, min=1) == (2, 3)
    assert checks.int_tuple("c", 5) == (5,)


@pytest.mark.parametrize("value, error, words", [
    (True, TypeError, "n must be an integer"), (2.0, TypeError, "n must be an integer"),
    ("3", TypeError, "n must be an integer"), (0, ValueError, "n must be >= 1"),
])
def test_bad_integers_name_the_argument(value, error, words):
    with pytest.raises(error, match=words):
        checks.integer("n", value, min=1)


@pytest.mark.parametrize("value, words", [(float("nan"), "finite"), (float("inf"), "finite"), (-0.5, ">= 0"),
                                          (1.5, "<= 1")])
def test_bad_reals_name_the_argument(value, words):
    with pytest.raises(ValueError, match=f"x must be.*{words}"):
        checks.real("x", value, min=0, max=1)
    with pytest.raises(ValueError, match="> 0"):
        checks.real("x", 0.0, min=0, min_exclusive=True)


def test_atomic_output_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with checks.atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    with checks.atomic_output(target) as tmp:
        assert tmp.suffix == ".bin"
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and len(list(tmp_path.iterdir())) == 1


def test_atomic_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "w").write_text("old")
    with pytest.raises(RuntimeError):
        with checks.atomic_directory(target) as tmp:
            (tmp / "w").write_text("half")
            raise RuntimeError
    assert (target / "w").read_text() == "old"
    with checks.atomic_directory(target) as tmp:
        (tmp / "w").write_text("new")
    assert (target / "w").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_writable_destination_refuses_folders_and_files_as_folders(tmp_path):
    (tmp_path / "x.mp4").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        checks.writable_destination(tmp_path / "x.mp4")
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        checks.writable_destination(tmp_path / "f" / "out.mp4")
    assert checks.writable_destination(tmp_path / "new" / "out.mp4").name == "out.mp4"


def test_bounds_may_be_infinite_but_never_nan():
    assert checks.bound("t_end", np.float64("inf")) == float("inf")
    assert checks.bound("t_end", torch.tensor(-2)) == -2.0
    with pytest.raises(ValueError, match=r"t_end must be a number or \+-inf \(an open end\), got nan"):
        checks.bound("t_end", float("nan"))
    with pytest.raises(TypeError, match="t_end must be a number"):
        checks.bound("t_end", "1.0")


def test_atomic_writes_get_the_mode_a_plain_write_would_give(tmp_path):
    import os

    mask = checks._umask()
    with checks.atomic_output(tmp_path / "new.bin") as tmp:
        tmp.write_bytes(b"x")
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o666 & ~mask
    with checks.atomic_directory(tmp_path / "folder") as tmp:
        pass
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~mask
    old = tmp_path / "script.sh"
    old.write_text("old")
    os.chmod(old, 0o750)
    with checks.atomic_output(old) as tmp:
        tmp.write_text("new")
    assert old.stat().st_mode & 0o777 == 0o750
