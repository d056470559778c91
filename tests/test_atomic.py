"""atomic.replace_folder: a saved folder is swapped in whole, or not at all."""

import pytest

from safebasin import atomic


def test_replace_folder_swaps_in_the_new_folder_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "out" / "model"
    with atomic.replace_folder(target) as tmp:
        assert tmp.parent == target.parent and tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with atomic.replace_folder(target) as tmp:
        (tmp / "b.txt").write_text("two")
        assert (target / "a.txt").is_file()  # the old folder stands until the swap
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in target.parent.iterdir()] == ["model"]


def test_replace_folder_keeps_the_old_folder_on_an_error(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.replace_folder(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed mid-save")
    assert (target / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model"]
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError):
        with atomic.replace_folder(tmp_path / "file"):
            pass
    assert (tmp_path / "file").read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["file", "model"]
