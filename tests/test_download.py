import base64
import hashlib
import http.server
import io
import os
import shutil
import threading
import zipfile
from pathlib import Path

import pytest
import requests
from conftest import assert_one_line_error, run_cli

from rdiunet.data.download import Remote, fetch, fetch_kaggle_competition
from rdiunet.errors import UserError


def zip_bytes(size: int = 300_000, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("payload.bin", bytes((i * 7 + seed) % 251 for i in range(size)))
    return buffer.getvalue()


class Server:
    """A local HTTP server serving `files` with optional Range support and faults."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.cut_after: int | None = None  # close the connection after this many body bytes
        self.requests: list[tuple[str, str | None]] = []
        self.authorizations: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                header = self.headers.get("Range")
                server.requests.append((self.path, header))
                server.authorizations.append(self.headers.get("Authorization"))
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                start = 0
                if header and server.ranges:
                    start = int(header.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Accept-Ranges", "bytes" if server.ranges else "none")
                self.end_headers()
                chunk = body[start:]
                if server.cut_after is not None:
                    chunk = chunk[: server.cut_after]
                self.wfile.write(chunk)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    instance = Server()
    yield instance
    instance.close()


def remote_for(server: Server, name: str, body: bytes, trusted: bool = True, sha=None) -> Remote:
    server.files[name] = body
    return Remote(name, (f"{server.url}/files/{name}",), sha or hashlib.sha256(body).hexdigest(), trusted)


def test_download_verifies_and_renames(server, tmp_path):
    body = zip_bytes()
    path = fetch(remote_for(server, "a.zip", body), tmp_path)
    assert path == tmp_path / "a.zip" and path.read_bytes() == body
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_verified_archive_in_place_is_not_downloaded_again(server, tmp_path):
    body = zip_bytes()
    remote = remote_for(server, "a.zip", body)
    (tmp_path / "a.zip").write_bytes(body)  # placed by hand
    fetch(remote, tmp_path)
    assert server.requests == []


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    body = zip_bytes()
    remote = remote_for(server, "a.zip", body)
    server.cut_after = 100_000
    with pytest.raises(UserError, match="place it at"):
        fetch(remote, tmp_path)
    assert (tmp_path / "a.zip.part").stat().st_size == 100_000
    assert not (tmp_path / "a.zip").exists()
    server.cut_after = None
    fetch(remote, tmp_path)
    assert server.requests[-1][1] == "bytes=100000-"
    assert (tmp_path / "a.zip").read_bytes() == body
    assert not (tmp_path / "a.zip.part").exists()


def test_server_without_ranges_restarts_the_download(server, tmp_path):
    body = zip_bytes()
    remote = remote_for(server, "a.zip", body)
    (tmp_path / "a.zip.part").write_bytes(b"garbage that is not a prefix")
    server.ranges = False
    fetch(remote, tmp_path)
    assert (tmp_path / "a.zip").read_bytes() == body


def test_trusted_checksum_mismatch_is_an_error_and_leaves_nothing(server, tmp_path):
    remote = remote_for(server, "a.zip", zip_bytes(), sha="0" * 64)
    with pytest.raises(UserError, match="does not match the expected"):
        fetch(remote, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_third_party_checksum_mismatch_is_an_error_unless_accepted(server, tmp_path, capsys):
    remote = remote_for(server, "a.zip", zip_bytes(), trusted=False, sha="0" * 64)
    with pytest.raises(UserError, match="from a third party.*--allow-checksum-mismatch"):
        fetch(remote, tmp_path)
    assert list(tmp_path.iterdir()) == []
    fetch(remote, tmp_path, allow_mismatch=True)
    assert (tmp_path / "a.zip").exists()
    said = capsys.readouterr().err
    assert "WARNING" in said and "accepted because of --allow-checksum-mismatch" in said
    assert "sha256 verified" not in said


def test_verified_is_said_only_of_a_compared_checksum(server, tmp_path, capsys):
    fetch(remote_for(server, "a.zip", zip_bytes()), tmp_path / "with")
    fetch(remote_for(server, "a.zip", zip_bytes()), tmp_path / "with")
    fetch(Remote("a.zip", (f"{server.url}/files/a.zip",), None), tmp_path / "without")
    fetch(Remote("a.zip", (f"{server.url}/files/a.zip",), None), tmp_path / "without")
    lines = [line for line in capsys.readouterr().err.splitlines() if "a.zip " in line]
    assert [("sha256 verified" in line) for line in lines] == [True, True, False, False], lines
    assert "no published checksum" in lines[-1]


def test_archive_in_place_with_wrong_checksum_is_refused(server, tmp_path):
    remote = remote_for(server, "a.zip", zip_bytes())
    (tmp_path / "a.zip").write_bytes(zip_bytes(seed=1))
    with pytest.raises(UserError, match="delete the file"):
        fetch(remote, tmp_path)
    assert server.requests == []


def test_falls_back_to_the_next_host(server, tmp_path):
    body = zip_bytes()
    server.files["a.zip"] = body
    remote = Remote("a.zip", (f"{server.url}/gone/missing.zip", f"{server.url}/old/a.zip"), None)
    # The first URL names another file: a 404 there, then the second host serves it.
    fetch(remote, tmp_path)
    assert [r[0] for r in server.requests] == ["/gone/missing.zip", "/old/a.zip"]


def test_mirror_is_tried_first(server, tmp_path):
    body = zip_bytes()
    server.files["a.zip"] = body
    remote = Remote("a.zip", ("http://127.0.0.1:9/unreachable/a.zip",), hashlib.sha256(body).hexdigest())
    fetch(remote, tmp_path, mirrors=(f"{server.url}/mirror",))
    assert server.requests[0][0] == "/mirror/a.zip"


def test_unreachable_hosts_give_one_line_with_the_manual_route(tmp_path):
    remote = Remote("a.zip", ("http://127.0.0.1:9/a.zip",), None)
    with pytest.raises(UserError) as error:
        fetch(remote, tmp_path)
    assert "download it by hand and place it at" in str(error.value)
    assert "\n" not in str(error.value)


def test_download_that_is_not_a_zip_is_discarded(server, tmp_path):
    remote = remote_for(server, "a.zip", b"<html>login page</html>", sha=None)
    with pytest.raises(UserError, match="not a complete zip"):
        fetch(remote, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_download_from_a_mirror(server, tmp_path):
    # jsrt's checksum is the real archive's: a stand-in from a mirror must fail verification.
    server.files["Segmentation01.zip"] = zip_bytes()
    result = run_cli("download", "--dataset", "jsrt", "--out", tmp_path, "--mirror", server.url)
    assert_one_line_error(result, "sha256", "does not match")
    assert list(tmp_path.iterdir()) == []


def test_cli_isic_download_refuses_or_accepts_third_party_checksum_mismatches(server, tmp_path):
    for name in ("ISIC2018_Task1-2_Training_Input.zip", "ISIC2018_Task1_Training_GroundTruth.zip"):
        server.files[name] = zip_bytes()
    refused = run_cli("download", "--dataset", "isic", "--out", tmp_path, "--mirror", server.url)
    assert_one_line_error(refused, "does not match", "--allow-checksum-mismatch")
    result = run_cli(
        "download",
        "--dataset",
        "isic",
        "--out",
        tmp_path,
        "--mirror",
        server.url,
        "--allow-checksum-mismatch",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("WARNING") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ISIC2018_Task1-2_Training_Input.zip",
        "ISIC2018_Task1_Training_GroundTruth.zip",
        "manifest.json",
    ]


@pytest.mark.parametrize("dataset", ["isic", "nerve"])
def test_synthetic_stand_ins_are_never_taken_for_the_real_data(synthetic_raw, tmp_path, dataset):
    # What docs/data.md shows for the stand-ins, in a folder the real run then downloads into.
    raw = shutil.copytree(synthetic_raw[dataset], tmp_path / dataset)
    result = run_cli("download", "--dataset", dataset, "--out", raw, "--allow-checksum-mismatch")
    assert_one_line_error(result, "holds synthetic stand-ins", "synthetic: true")
    assert not (raw / "manifest.json").exists()


def test_credentials_in_a_mirror_url_are_never_shown(server, tmp_path):
    secret = "s3cr3t-Pa55"
    result = run_cli(
        "download", "--dataset", "jsrt", "--out", tmp_path, "--mirror", f"http://alice:{secret}@127.0.0.1:9/x"
    )
    line = assert_one_line_error(result, "could not download", "***@127.0.0.1:9")
    assert secret not in result.stderr + result.stdout and "alice" not in line
    # They reach the server as basic authentication, not as part of the path.
    server.files["Segmentation01.zip"] = zip_bytes()
    mirror = server.url.replace("http://", f"http://alice:{secret}@")
    result = run_cli("download", "--dataset", "jsrt", "--out", tmp_path, "--mirror", mirror)
    assert secret not in result.stderr + result.stdout
    assert server.requests[-1][0] == "/Segmentation01.zip"
    assert server.authorizations[-1] == "Basic " + base64.b64encode(f"alice:{secret}".encode()).decode()


# --- Kaggle: a stand-in client at the API boundary, and the real package for credentials --------


class StandInKaggle:
    def __init__(self, error: Exception | None = None):
        self.error = error
        self.calls = []

    def competition_download_files(self, competition, path, quiet):
        self.calls.append(competition)
        if self.error:
            raise self.error
        with zipfile.ZipFile(Path(path) / f"{competition}.zip", "w") as archive:
            archive.writestr("train.zip", b"")


def http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


def test_kaggle_download_lands_the_competition_zip(tmp_path):
    client = StandInKaggle()
    target = tmp_path / "ultrasound-nerve-segmentation.zip"
    fetch_kaggle_competition("ultrasound-nerve-segmentation", target, api_factory=lambda: client)
    assert zipfile.is_zipfile(target) and client.calls == ["ultrasound-nerve-segmentation"]
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    fetch_kaggle_competition("ultrasound-nerve-segmentation", target, api_factory=lambda: client)
    assert len(client.calls) == 1  # present: not downloaded again


@pytest.mark.parametrize(
    "error,message",
    [
        (http_error(403), "accept the competition rules at https://www.kaggle.com/competitions/"),
        (http_error(401), "rejected the credentials"),
        (requests.ConnectionError("Max retries exceeded\nwith url"), "cannot reach Kaggle"),
    ],
)
def test_kaggle_failures_are_one_line(tmp_path, error, message):
    target = tmp_path / "c.zip"
    with pytest.raises(UserError) as raised:
        fetch_kaggle_competition("c", target, api_factory=lambda: StandInKaggle(error))
    assert message in str(raised.value) and "\n" not in str(raised.value)
    if isinstance(error, requests.ConnectionError):
        assert str(target) in str(raised.value)  # where to put a manual download
    assert not target.exists()


def test_real_kaggle_package_without_credentials(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env["HOME"] = str(home)
    result = run_cli("download", "--dataset", "nerve", "--out", tmp_path / "raw", env=env)
    line = assert_one_line_error(result, "kaggle.json", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN")
    assert "Authentication required" not in result.stdout + result.stderr
    assert line.count("rdiunet: error:") == 1
    assert not [p for p in home.rglob("*") if p.is_file()]  # no credentials file was written


def test_real_kaggle_package_never_shows_the_key(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    secret = "0123456789abcdef0123456789abcdef"
    env.update(HOME=str(home), KAGGLE_USERNAME="someone", KAGGLE_KEY=secret)
    # No network here: the client fails to connect, and says so without the key.
    result = run_cli("download", "--dataset", "nerve", "--out", tmp_path / "raw", env=env, timeout=600)
    assert result.returncode != 0
    assert secret not in result.stdout + result.stderr
    assert_one_line_error(result, "place it at")
