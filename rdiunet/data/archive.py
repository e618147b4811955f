"""Reading zip archives safely: clear errors for corrupt or truncated files, and extraction that
never writes outside its target folder."""

import contextlib
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from rdiunet.errors import UserError

# What zipfile and zlib raise on damaged data, at open time or while a member is read (a member
# name flagged UTF-8 that is not, an unknown compression method among them).
DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError, NotImplementedError)
# Extraction writes at most this much (the declared sizes, checked before anything is written;
# zipfile never inflates a member past its declared size). The nerve set's train.zip is about 1 GB.
MAX_EXTRACT_BYTES = 16 * 2**30


def damaged(archive: Path, error: Exception) -> UserError:
    return UserError(f"archive {archive} is corrupt or truncated ({error}); delete it and download it again")


def open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except FileNotFoundError:
        raise UserError(f"archive {archive} does not exist") from None
    except DAMAGE as error:
        raise damaged(archive, error) from None


def read_member(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """A member's bytes, refused before inflating when its header declares more than `limit`."""
    try:
        info = archive.getinfo(name)
        if info.file_size > limit:
            raise UserError(
                f"archive {archive.filename}: member '{name}' declares {info.file_size:,} bytes "
                f"uncompressed, more than the {limit:,} allowed; the archive is damaged or hostile"
            )
        return archive.read(info)
    except DAMAGE as error:
        raise damaged(Path(archive.filename), error) from None


def check_member_name(archive: Path, name: str) -> PurePosixPath:
    """The member's path relative to the extraction folder, or an error if it would escape it."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise UserError(
            f"archive {archive}: member '{name}' points outside the extraction folder; "
            "refusing to extract a possibly malicious archive"
        )
    return path


def is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def safe_extract(
    archive_path: Path, target: Path, members: list[str] | None = None, limit: int = MAX_EXTRACT_BYTES
) -> Path:
    """Extract `members` (default: all) into `target`, atomically.

    Every member name is checked before anything is written; symbolic links are refused. The
    members are unpacked into a temporary folder beside `target`, which is renamed at the end, so
    a damaged archive or a killed job leaves no partial folder behind.
    """
    target = Path(target)
    with open_zip(archive_path) as archive:
        infos = archive.infolist()
        if members is not None:
            wanted = set(members)
            infos = [info for info in infos if info.filename in wanted]
            missing = wanted - {info.filename for info in infos}
            if missing:
                raise UserError(f"archive {archive_path} has no member {sorted(missing)[0]}")
        declared = sum(info.file_size for info in infos)
        if declared > limit:
            raise UserError(
                f"archive {archive_path} declares {declared:,} bytes to extract, more than the "
                f"{limit:,} allowed; the archive is damaged or hostile"
            )
        for info in infos:
            check_member_name(archive_path, info.filename)
            if is_symlink(info):
                raise UserError(
                    f"archive {archive_path}: member '{info.filename}' is a symbolic link; "
                    "refusing to extract a possibly malicious archive"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for info in infos:
                destination = staging / check_member_name(archive_path, info.filename)
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with archive.open(info) as source, open(destination, "wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 20)
                except DAMAGE as error:
                    raise damaged(archive_path, error) from None
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(staging)
            raise
    return target
