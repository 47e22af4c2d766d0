"""DVC-tracked data checked against its .dvc file before use: the error names the file and both md5s."""

import hashlib
import json

import pytest
import yaml

from {{ cookiecutter.package_name }} import integrity

DATA = b"pixel_0,label\r\n1,2\r\n"


def tracked_file(root, data=DATA, legacy=False):
    """A project folder with data/raw/x.csv recorded in data/raw/x.csv.dvc, its bytes also in the DVC cache."""
    md5 = hashlib.md5(data).hexdigest() if not legacy else hashlib.md5(data.replace(b"\r\n", b"\n")).hexdigest()
    (root / "data/raw").mkdir(parents=True)
    (root / "data/raw/x.csv").write_bytes(data)
    out = {"md5": md5, "size": len(data), "path": "x.csv", **({} if legacy else {"hash": "md5"})}
    (root / "data/raw/x.csv.dvc").write_text(yaml.safe_dump({"outs": [out]}))
    cached = root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    return md5, cached


def test_matching_data_passes_and_legacy_dvc_files_hash_text_as_dvc_2_did(tmp_path):
    md5, _ = tracked_file(tmp_path)
    assert integrity.check(tmp_path / "data/raw/x.csv.dvc", tmp_path) == {"data/raw/x.csv": md5}
    legacy = tmp_path / "old"
    md5, _ = tracked_file(legacy, legacy=True)  # no `hash: md5`: md5 of the text with LF line ends
    assert integrity.check(legacy / "data/raw/x.csv.dvc", legacy) == {"data/raw/x.csv": md5}


def test_a_changed_file_is_named_with_both_hashes_and_how_to_restore_it(tmp_path):
    md5, _ = tracked_file(tmp_path)
    (tmp_path / "data/raw/x.csv").write_bytes(DATA.replace(b"2", b"3"))
    with pytest.raises(integrity.DataMismatch) as error:
        integrity.check(tmp_path / "data/raw/x.csv.dvc", tmp_path)
    actual = hashlib.md5(DATA.replace(b"2", b"3")).hexdigest()
    assert f"data/raw/x.csv does not match its DVC record {tmp_path}/data/raw/x.csv.dvc: expected md5 {md5}, " \
           f"actual md5 {actual}" in str(error.value)
    assert "dvc checkout --force" in str(error.value)


def test_a_corrupted_cache_object_is_named(tmp_path):
    md5, cached = tracked_file(tmp_path)
    cached.write_bytes(DATA.replace(b"1", b"7"))
    (tmp_path / "data/raw/x.csv").write_bytes(cached.read_bytes())  # what `dvc checkout` does, silently
    with pytest.raises(integrity.DataMismatch, match=f"the DVC cache object .dvc/cache/files/md5/{md5[:2]}/{md5[2:]} "
                                                     "it was checked out from is corrupted too"):
        integrity.check(tmp_path / "data/raw/x.csv.dvc", tmp_path)


def test_a_staged_copy_and_a_directory_are_checked(tmp_path):
    md5, _ = tracked_file(tmp_path)
    staged = tmp_path / "staged/x.csv"  # e.g. Snakemake's local copy of a storage object
    staged.parent.mkdir()
    staged.write_bytes(b"other")
    with pytest.raises(integrity.DataMismatch, match=r"data/raw/x.csv \(read at .*staged/x.csv\) does not match"):
        integrity.check(tmp_path / "data/raw/x.csv.dvc", tmp_path, file=staged)
    listing = [{"md5": md5, "relpath": "x.csv"}]
    dir_md5 = hashlib.md5(json.dumps(listing).encode()).hexdigest() + ".dir"
    (tmp_path / ".dvc/cache/files/md5" / dir_md5[:2]).mkdir(exist_ok=True)
    (tmp_path / ".dvc/cache/files/md5" / dir_md5[:2] / dir_md5[2:]).write_text(json.dumps(listing))
    (tmp_path / "raw.dvc").write_text(yaml.safe_dump({"outs": [{"md5": dir_md5, "path": "data/raw", "hash": "md5"}]}))
    assert integrity.check(tmp_path / "raw.dvc", tmp_path) == {"data/raw": dir_md5}
    (tmp_path / "data/raw/x.csv").write_bytes(b"changed")
    with pytest.raises(integrity.DataMismatch, match="data/raw/x.csv does not match"):
        integrity.check(tmp_path / "raw.dvc", tmp_path)


def test_the_command_prints_one_error_line_and_exits_1(tmp_path, monkeypatch, capsys):
    tracked_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert integrity.main(["data/raw/x.csv.dvc"]) == 0
    (tmp_path / "data/raw/x.csv").unlink()
    assert integrity.main(["data/raw/x.csv.dvc"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("ERROR: data/raw/x.csv (recorded in data/raw/x.csv.dvc, md5 ") and error.count("\n") == 1
