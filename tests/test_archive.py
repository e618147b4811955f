import stat
import zipfile

import pytest

from rdiunet.data.archive import open_zip, safe_extract
from rdiunet.errors import UserError


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members:
            if isinstance(name, zipfile.ZipInfo):
                archive.writestr(name, payload)
            else:
                archive.writestr(name, payload)
    return path


def test_extracts_members_into_target(tmp_path):
    archive = make_zip(tmp_path / "a.zip", [("dir/one.txt", b"1"), ("two.txt", b"2")])
    target = safe_extract(archive, tmp_path / "out")
    assert (target / "dir" / "one.txt").read_bytes() == b"1"
    assert (target / "two.txt").read_bytes() == b"2"


def test_extracts_only_named_members(tmp_path):
    archive = make_zip(tmp_path / "a.zip", [("one.txt", b"1"), ("two.txt", b"2")])
    target = safe_extract(archive, tmp_path / "out", members=["two.txt"])
    assert [p.name for p in target.iterdir()] == ["two.txt"]


@pytest.mark.parametrize("name", ["../escape.txt", "a/../../escape.txt", "/etc/escape.txt", "C:/escape.txt"])
def test_member_escaping_the_target_is_refused_before_anything_is_written(tmp_path, name):
    archive = make_zip(tmp_path / "evil.zip", [("fine.txt", b"ok"), (name, b"pwned")])
    with pytest.raises(UserError, match="outside the extraction folder"):
        safe_extract(archive, tmp_path / "sub" / "out")
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "sub" / "escape.txt").exists()
    assert not (tmp_path / "sub").exists()  # checked before anything was created


def test_symlink_member_is_refused(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(tmp_path / "evil.zip", [(info, "/etc/passwd")])
    with pytest.raises(UserError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_archive_is_reported_as_such(tmp_path):
    archive = make_zip(tmp_path / "a.zip", [("one.bin", bytes(range(256)) * 400)])
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        open_zip(archive)


def test_corrupt_member_is_reported_and_leaves_no_folder(tmp_path):
    payload = bytes(range(256)) * 400
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("one.bin", payload)
    data = bytearray(archive.read_bytes())
    start = data.find(payload[:64])
    data[start + 1000] ^= 0xFF  # flip one byte of the stored member: a CRC error
    archive.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt or truncated"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.zip"]
