"""Fetching archives: HTTP with resume and checksums, and the Kaggle API.

Every download streams into `NAME.part` beside the target, resumes that file with an HTTP Range
request when the server allows it, verifies it, and only then renames it to NAME. An archive that
is already in place and verifies is never fetched again, which is also how users behind firewalls
work: they put the archive there by hand.

A checksum mismatch is an error, also where the checksum comes from a third party, unless the user
accepts it explicitly (`--allow-checksum-mismatch`, then a loud warning). "verified" is said only of
a file whose checksum was compared. URLs are shown with any credentials in them redacted.
"""

import base64
import contextlib
import http.client
import io
import os
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from rdiunet.errors import UserError
from rdiunet.fileio import sha256_of

CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class Remote:
    """One archive: its file name, where it can be fetched, and its expected sha256.

    `trusted` says whether the checksum comes from the publisher (otherwise a third party computed
    it, which the error message says)."""

    name: str
    urls: tuple[str, ...]
    sha256: str | None = None
    trusted: bool = True


CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """`text` with the user:password part of every URL in it replaced by ***."""
    return CREDENTIALS.sub(r"\1***@", str(text))


def warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def verify(path: Path, remote: Remote, allow_mismatch: bool = False) -> str:
    """Check the checksum and that the zip opens; say how the file was checked ("verified",
    "no checksum", "mismatch accepted")."""
    status = "no checksum"
    if remote.sha256:
        actual = sha256_of(path)
        status = "verified"
        if actual != remote.sha256:
            origin = "" if remote.trusted else " (the expected value comes from a third party)"
            message = f"{path}: sha256 {actual} does not match the expected {remote.sha256}{origin}"
            if not allow_mismatch:
                raise UserError(
                    f"{message}; delete the file and download it again, or, if you have checked the file's "
                    "origin, accept it with --allow-checksum-mismatch (config: allow_checksum_mismatch)"
                )
            warn(f"{message}; accepted because of --allow-checksum-mismatch")
            status = "mismatch accepted"
    if remote.name.endswith(".zip") and not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a complete zip archive; delete it and download it again")
    return status


HOW_CHECKED = {
    "verified": "present and its sha256 verified",
    "no checksum": "present (no published checksum to compare; the zip opens)",
    "mismatch accepted": "present, its sha256 mismatch accepted by --allow-checksum-mismatch",
}


def progress(total: int | None, initial: int, name: str) -> tqdm:
    # In a log file (no terminal) a redraw every few seconds is enough.
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        file=sys.stderr,
        mininterval=0.5 if interactive else 10,
        ascii=not interactive,
    )


def request_for(url: str) -> urllib.request.Request:
    """A request for `url`; credentials in the URL (user:password@host) travel as HTTP basic
    authentication instead, so that no error message or log line can carry them."""
    parts = urllib.parse.urlsplit(url)
    headers = {"User-Agent": "rdiunet-bench"}
    if parts.username is not None:
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode("ascii")
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        url = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return urllib.request.Request(url, headers=headers)


def fetch_url(url: str, part: Path) -> None:
    """Download `url` into `part`, continuing an existing partial file when the server agrees."""
    have = part.stat().st_size if part.exists() else 0
    request = request_for(url)
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            return  # the partial file is already complete
        raise
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if resumed else "wb") as sink, progress(total, have, part.name) as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                sink.write(block)
                bar.update(len(block))
        size = part.stat().st_size
        if total is not None and size < total:
            raise ConnectionError(f"transfer ended after {size} of {total} bytes")


def fetch(remote: Remote, out: Path, mirrors: tuple[str, ...] = (), allow_mismatch: bool = False) -> Path:
    """Make `out/remote.name` present and verified, downloading it only when needed.

    `mirrors` are base URLs tried before the remote's own ones (for example a local mirror).
    """
    out.mkdir(parents=True, exist_ok=True)
    target = out / remote.name
    if target.exists():
        status = verify(target, remote, allow_mismatch)
        print(f"{target} already {HOW_CHECKED[status]}; not downloading", file=sys.stderr)
        return target
    part = out / f"{remote.name}.part"
    urls = [f"{base.rstrip('/')}/{remote.name}" for base in mirrors] + list(remote.urls)
    failures = []
    for url in urls:
        try:
            fetch_url(url, part)
        except (OSError, http.client.HTTPException, ValueError) as error:
            failures.append(redact(f"{url}: {getattr(error, 'reason', None) or error}"))
            continue
        try:
            status = verify(part, remote, allow_mismatch)
        except UserError:
            part.unlink()  # a corrupt download must not be resumed
            raise
        os.replace(part, target)
        print(f"{target} downloaded: {HOW_CHECKED[status]}", file=sys.stderr)
        return target
    raise UserError(
        f"could not download {remote.name} ({'; '.join(failures)}); "
        f"download it by hand and place it at {target}, then run again"
    )


# --- Kaggle ------------------------------------------------------------------------------------

CREDENTIALS_HELP = (
    "Kaggle credentials not found: save kaggle.json from https://www.kaggle.com/settings/api "
    "in ~/.kaggle/ (or $KAGGLE_CONFIG_DIR), or set KAGGLE_USERNAME and KAGGLE_KEY, "
    "or set KAGGLE_API_TOKEN"
)


def kaggle_api():
    """The authenticated Kaggle API, imported only when needed.

    Depending on its version, the kaggle package authenticates at import time and raises OSError,
    exits, or prints a long notice and carries on unauthenticated. Its output is captured (never
    shown: it may echo credential paths) and every failure becomes one line.
    """
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as error:
        raise UserError(f"the kaggle package cannot be imported ({error}); pip install kaggle") from None
    except (OSError, SystemExit, ValueError):
        raise UserError(CREDENTIALS_HELP) from None
    return api


def http_status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None) or getattr(error, "status", None)


def first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0][:200]


def fetch_kaggle_competition(competition: str, target: Path, api_factory=kaggle_api) -> Path:
    """Download a competition's zip to `target` through the Kaggle API (verified as a zip)."""
    if target.exists():
        status = verify(target, Remote(target.name, ()))
        print(f"{target} already {HOW_CHECKED[status]}; not downloading", file=sys.stderr)
        return target
    by_hand = f"download it in a browser and place it at {target}, then run again"
    api = api_factory()
    # The client resumes its own partial files; keep them in a folder of their own.
    staging = target.parent / f".{competition}.kaggle"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        api.competition_download_files(competition, path=str(staging), quiet=False)
    except Exception as error:  # the client raises requests' and its own exception types
        status = http_status(error)
        if status == 403:
            raise UserError(
                f"Kaggle refused the download (HTTP 403): accept the competition rules at "
                f"https://www.kaggle.com/competitions/{competition}/rules while logged in (Kaggle "
                "asks for a verified phone number first: Settings, Phone verification), then run again"
            ) from None
        if status == 401:
            raise UserError(f"Kaggle rejected the credentials (HTTP 401). {CREDENTIALS_HELP}") from None
        if status is not None:
            raise UserError(f"Kaggle download failed (HTTP {status}); {by_hand}") from None
        raise UserError(
            f"cannot reach Kaggle ({type(error).__name__}: {first_line(error)}); {by_hand}"
        ) from None
    downloaded = staging / f"{competition}.zip"
    if not downloaded.exists():
        raise UserError(f"the Kaggle client wrote no {downloaded.name}; {by_hand}")
    verify(downloaded, Remote(target.name, ()))
    os.replace(downloaded, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target
