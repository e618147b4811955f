"""A result is never silently wrong: one test (or a few) per way it could be.

Each test reproduces a failure that once ended in a confident wrong result or a traceback, and
checks that it now ends in one clear line, a gap stated in the report, or nothing to do.
"""

import dataclasses
import hashlib
import io
import json
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, TINY_OPTS, assert_one_line_error, prepared_jsrt, run_cli, tiny_settings
from handmade import CONFIG, write_tree
from PIL import Image
from snakemake.utils import validate
from snakemake_interface_common.exceptions import WorkflowError

from rdiunet.data.decode import MAX_MEMBER_BYTES
from rdiunet.data.prepare import prepare
from rdiunet.errors import UserError
from rdiunet.runfolder import RunFolder
from rdiunet.train import train


@pytest.fixture(scope="module")
def jsrt32(tmp_path_factory):
    """A small synthetic chest X-ray set at 32 px, prepared."""
    return prepared_jsrt(tmp_path_factory.mktemp("jsrt32"), n=40, size=32)


@pytest.fixture(scope="module")
def finished_run(jsrt32, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_settings(jsrt32), out)
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    return shutil.copytree(run, tmp_path / "run")


def copy_data(data: Path, tmp_path: Path) -> Path:
    """The prepared pair in a folder of its own (tests that change it must not touch the fixture)."""
    for suffix in (".npz", ".json"):
        shutil.copy(data.with_suffix(suffix), tmp_path / f"jsrt{suffix}")
    return tmp_path / "jsrt.npz"


# --- synthetic data must never pass for the paper's ---------------------------------------------


def report_page(root: Path, config: dict) -> str:
    out = root / "reports" / "report.html"
    result = run_cli(
        "report",
        *("--results", root / "results", "--data", root / "none", "--figures", root / "none"),
        *("--timing", root / "none", "--config-json", json.dumps(config), "--out", out),
    )
    assert result.returncode == 0, result.stderr
    return out.read_text()


def test_synthetic_runs_raise_the_banner_and_an_alarm_whatever_the_config_says(tmp_path):
    write_tree(tmp_path)  # every run's prepared data says synthetic
    page = report_page(tmp_path, {**CONFIG, "synthetic": False})
    assert "Synthetic data." in page and 'class="alarm"' in page
    assert "jsrt/unet/seed0" in page.split('class="alarm"')[1].split("</div>")[0]
    result = run_cli(
        "tables",
        *("--results", tmp_path / "results", "--data", tmp_path / "none"),
        *("--config-json", json.dumps({**CONFIG, "synthetic": False}), "--out", tmp_path / "tables"),
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tables" / "table1.md").read_text().startswith("> **Synthetic data.**")
    assert pd.read_csv(tmp_path / "tables" / "table1.csv").synthetic.all()


def test_real_runs_show_no_banner(tmp_path):
    write_tree(tmp_path)
    for run in (tmp_path / "results").glob("*/*/seed*/run.json"):
        info = json.loads(run.read_text())
        run.write_text(json.dumps({**info, "data": {**info["data"], "synthetic": False}}))
    page = report_page(tmp_path, {**CONFIG, "synthetic": False})
    assert "Synthetic data." not in page and 'class="alarm"' not in page


def test_prepared_data_carries_the_synthetic_fact_into_the_run(finished_run):
    assert json.loads((finished_run / "run.json").read_text())["data"]["synthetic"] is True


# --- a run folder belongs to one run -------------------------------------------------------------


def test_fewer_epochs_than_trained_is_refused_not_truncated(jsrt32, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    with pytest.raises(UserError, match="holds a run of 3 epochs and this one asks for 2"):
        train(tiny_settings(jsrt32, epochs=2), run)
    # As Snakemake reruns it: the declared outputs deleted first, only the checkpoints left.
    for name in ("metrics.json", "history.csv", "per_image.csv"):
        (run / name).unlink()
    with pytest.raises(UserError, match="cannot be cut back"):
        train(tiny_settings(jsrt32, epochs=2), run)
    assert not (run / "metrics.json").exists()


def cli_train(data: Path, out: Path, epochs: int) -> list[str]:
    return [
        sys.executable,
        *("-m", "rdiunet.cli", "train", "--data", str(data), "--model", "rdiunet", "--seed", "0"),
        *("--out", str(out), "--epochs", str(epochs), "--batch-size", "4", "--device", "cpu", *TINY_OPTS),
    ]


def test_a_second_training_of_the_same_folder_stops_in_one_line(jsrt32, tmp_path):
    first = subprocess.Popen(cli_train(jsrt32, tmp_path / "run", 200), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "run.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first training did not start"
            time.sleep(0.05)
        second = run_cli(*cli_train(jsrt32, tmp_path / "run", 200)[3:], process=True)
        # The lock names who holds it: the process, its host and its command.
        holder = f"(held by process {first.pid} on {socket.gethostname()}: rdiunet train --data"
        assert_one_line_error(second, "another rdiunet job is writing", str(tmp_path / "run"), holder)
        assert first.poll() is None  # the first one goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_evaluate_refuses_data_prepared_again_differently(jsrt32, finished_run, tmp_path):
    data = copy_data(jsrt32, tmp_path)
    run = copy_run(finished_run, tmp_path)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "config": {**info["config"], "data": str(data)}}))
    before = (run / "metrics.json").read_text()
    # Another split seed: the test split now holds training images.
    prepare("jsrt", jsrt32.parent / "raw", data, size=32, seed=7, workers=1)
    result = run_cli("evaluate", "--run", run, "--device", "cpu")
    assert_one_line_error(result, "changed since", "test split may hold training images")
    assert (run / "metrics.json").read_text() == before


def test_evaluate_refuses_weights_of_another_run(jsrt32, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    other = tmp_path / "other"
    train(tiny_settings(jsrt32, epochs=1, seed=1), other)
    shutil.copy(other / "best.pt", run / "best.pt")
    assert_one_line_error(run_cli("evaluate", "--run", run, "--device", "cpu"), "refusing", "seed=1")


def test_npz_and_json_are_one_unit(jsrt32, tmp_path):
    data = copy_data(jsrt32, tmp_path)
    summary = json.loads(data.with_suffix(".json").read_text())
    assert summary["npz_sha256"] and {r["name"] for r in summary["raw"]} == {"Segmentation01.zip"}
    # A kill between the two renames: a new .npz beside the old .json.
    prepare("jsrt", jsrt32.parent / "raw", tmp_path / "new.npz", size=32, seed=3, workers=1)
    shutil.copy(tmp_path / "new.npz", data)
    with pytest.raises(UserError, match="does not match .*jsrt.json.*rerun rdiunet prepare"):
        train(tiny_settings(data), tmp_path / "run")


# --- collected results are checked, and the report says what it left out ------------------------


def tables(root: Path) -> tuple[pd.DataFrame, str]:
    result = run_cli(
        "tables",
        *("--results", root / "results", "--data", root / "none"),
        *("--config-json", json.dumps(CONFIG), "--out", root / "reports"),
    )
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(root / "reports" / "table1.csv").set_index(["dataset", "model"])
    return frame, (root / "reports" / "table1.md").read_text()


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_nan_dice_excludes_its_run_and_the_seed_count_says_so(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "results" / "jsrt" / "rdiunet" / "seed1" / "metrics.json").write_text(
        (tmp_path / "results" / "jsrt" / "rdiunet" / "seed1" / "metrics.json")
        .read_text()
        .replace('"dice": 0.98', '"dice": NaN')
    )
    frame, note = tables(tmp_path)
    assert frame.loc[("jsrt", "rdiunet")].seeds == 1 and frame.loc[("jsrt", "rdiunet")].dice_mean == 0.96
    assert "jsrt/rdiunet/seed1: metrics.json: dice is nan, not a finite number" in note
    claims = report_page(tmp_path, CONFIG).split('id="claims"')[1].split("</table>")[0]
    assert "nan" not in claims.lower()


def test_a_history_longer_than_the_run_excludes_it(tmp_path):
    write_tree(tmp_path)
    history = tmp_path / "results" / "isic" / "unet" / "seed0" / "history.csv"
    rows = pd.read_csv(history)
    pd.concat([rows, rows.tail(1).assign(epoch=5)]).to_csv(history, index=False)
    frame, note = tables(tmp_path)
    assert frame.loc[("isic", "unet")].seeds == 1
    assert "history.csv has 5 epochs, metrics.json says 4" in note


@pytest.mark.parametrize(
    "edit,reason",
    [
        (
            lambda run: edit_json(run / "metrics.json", images=2),
            "per_image.csv has 3 best_dice images, metrics.json says 2",
        ),
        (lambda run: (run / "history.csv").write_text("epoch,dice\n1,0.5\n"), "lacks the column 'val_dice'"),
        (lambda run: (run / "metrics.json").write_text('{"dice": 0.9'), "metrics.json is not valid JSON"),
        (lambda run: edit_json(run / "run.json", status="preempted"), "run.json says the run is preempted"),
        (lambda run: shutil.rmtree(run), "the run folder does not exist"),
    ],
)
def test_inconsistent_runs_are_left_out_with_their_reason(tmp_path, edit, reason):
    write_tree(tmp_path)
    edit(tmp_path / "results" / "jsrt" / "unet" / "seed1")
    frame, note = tables(tmp_path)
    assert frame.loc[("jsrt", "unet")].seeds == 1
    assert reason in note


def test_a_run_trained_on_other_data_is_left_out(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "jsrt.json").write_text(json.dumps({"npz_sha256": "jsrt-data"}))
    (tmp_path / "prepared" / "isic.json").write_text(json.dumps({"npz_sha256": "isic-data"}))
    edit_json(tmp_path / "results" / "isic" / "rdiunet" / "seed0" / "run.json", data_sha256="older-data")
    result = run_cli(
        "tables",
        *("--results", tmp_path / "results", "--data", tmp_path / "prepared"),
        *("--config-json", json.dumps(CONFIG), "--out", tmp_path / "reports"),
    )
    assert result.returncode == 0, result.stderr
    assert "isic/rdiunet/seed0: trained on other data" in (tmp_path / "reports" / "table1.md").read_text()


@pytest.mark.parametrize(
    "edit,key",
    [
        (lambda c: c["training"].update(lr=float("nan")), "lr"),
        (lambda c: c["datasets"]["jsrt"].update(threshold=float("nan")), "threshold"),
        (lambda c: c["datasets"]["nerve"].update(split=[float("nan"), 0.1, 0.1]), "split"),
        (lambda c: c.update(stability_drop=float("inf")), "stability_drop"),
    ],
)
def test_the_schema_refuses_nan_and_infinity(edit, key):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    edit(config)
    with pytest.raises(WorkflowError, match=key):
        validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))


# --- checkpoints prove their content ---------------------------------------------------------------


def flip_a_weight(path: Path) -> None:
    """Change one weight in a saved checkpoint the way a bit flip on disk would: in the tensor's
    bytes, leaving the file readable."""
    state = torch.load(path, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.dtype == torch.float32 and v.numel() > 10)
    state["model"][name].view(-1)[3] += 0.5
    torch.save(state, path)


def test_a_bit_flipped_best_checkpoint_is_refused(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    before = (run / "metrics.json").read_text()
    flip_a_weight(run / "best.pt")
    result = run_cli("evaluate", "--run", run, "--device", "cpu")
    assert_one_line_error(result, "best.pt is damaged", "do not match their recorded sha256")
    assert (run / "metrics.json").read_text() == before
    with pytest.raises(UserError, match="best.pt is damaged"):
        RunFolder(run).load_model()


def test_a_truncated_best_checkpoint_is_one_line(jsrt32, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    payload = (run / "best.pt").read_bytes()
    (run / "best.pt").write_bytes(payload[: len(payload) // 2])
    assert_one_line_error(run_cli("evaluate", "--run", run, "--device", "cpu"), "best.pt is damaged")
    with pytest.raises(UserError, match="best.pt is damaged"):
        train(tiny_settings(jsrt32, epochs=4), run)  # going on needs the best weights too


def test_a_damaged_last_checkpoint_does_not_undo_a_finished_run(jsrt32, finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    (run / "checkpoint.pt").write_bytes(b"damaged")
    metrics = train(tiny_settings(jsrt32), run)
    assert "already complete" in capsys.readouterr().err
    assert metrics == json.loads((run / "metrics.json").read_text())
    with pytest.raises(UserError, match="checkpoint.pt is damaged.*needed to go on training"):
        train(tiny_settings(jsrt32, epochs=4), run)


def test_checkpoints_record_the_weights_they_hold(finished_run):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    best = torch.load(finished_run / "best.pt", weights_only=True)
    assert metrics["weights_sha256"] == best["weights_sha256"]
    assert (
        metrics["identity"]
        == best["identity"]
        == torch.load(finished_run / "checkpoint.pt", weights_only=True)["identity"]
    )


# --- archive members are never substituted ----------------------------------------------------------


def rezip(source: Path, target: Path, extra: list[tuple[str, bytes]]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        for name, payload in extra:
            dst.writestr(name, payload)


def test_a_member_name_given_twice_is_an_error_naming_both(synthetic_raw, tmp_path):
    source = synthetic_raw["jsrt"] / "Segmentation01.zip"
    duplicate = zipfile.ZipFile(source).read("Segmentation01/train/org/001.png")
    with pytest.warns(UserWarning, match="Duplicate name"):
        rezip(
            source, tmp_path / "raw" / "Segmentation01.zip", [("Segmentation01/train/org/002.png", duplicate)]
        )
    result = run_cli(
        "prepare",
        "--workers",
        "1",
        "--dataset",
        "jsrt",
        "--raw",
        tmp_path / "raw",
        "--out",
        tmp_path / "out" / "j.npz",
    )
    assert_one_line_error(result, "train/org/002.png and", "train/org/002.png are the same image")
    assert not (tmp_path / "out" / "j.npz").exists()


def test_one_id_in_two_folders_is_an_error(synthetic_raw, tmp_path):
    source = synthetic_raw["isic"] / "ISIC2018_Task1-2_Training_Input.zip"
    payload = zipfile.ZipFile(source).read("ISIC2018_Task1-2_Training_Input/ISIC_0000003.jpg")
    rezip(source, tmp_path / "raw" / source.name, [("extra/ISIC_0000003.jpg", payload)])
    shutil.copy(synthetic_raw["isic"] / "ISIC2018_Task1_Training_GroundTruth.zip", tmp_path / "raw")
    result = run_cli(
        "prepare",
        "--workers",
        "1",
        "--dataset",
        "isic",
        "--raw",
        tmp_path / "raw",
        "--out",
        tmp_path / "out" / "i.npz",
    )
    assert_one_line_error(result, "ISIC_0000003.jpg and", "extra/ISIC_0000003.jpg are the same image")


def png(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_mask_labelled_only_in_its_alpha_channel_is_read(synthetic_raw, tmp_path):
    source = synthetic_raw["jsrt"] / "Segmentation01.zip"
    with zipfile.ZipFile(source) as archive:
        names = archive.namelist()
        masks = {n: np.asarray(Image.open(io.BytesIO(archive.read(n)))) for n in names if "/label/" in n}
    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(raw / source.name, "w") as dst:
        for name in names:
            if name in masks:  # black everywhere; the lungs are opaque, the rest transparent
                rgba = np.zeros((*masks[name].shape, 4), np.uint8)
                rgba[..., 3] = np.where(masks[name] > 127, 255, 0)
                dst.writestr(name, png(rgba, "RGBA"))
            else:
                dst.writestr(name, src.read(name))
    alpha = prepare("jsrt", raw, tmp_path / "alpha.npz", size=32, workers=1)
    plain = prepare("jsrt", synthetic_raw["jsrt"], tmp_path / "plain.npz", size=32, workers=1)
    with np.load(tmp_path / "alpha.npz") as a, np.load(tmp_path / "plain.npz") as p:
        assert a["masks"].sum() > 0 and np.array_equal(a["masks"], p["masks"])
    assert alpha["empty_masks"] == plain["empty_masks"]


# --- kills leave nothing that grows ---------------------------------------------------------------


def test_prepare_removes_what_a_killed_prepare_left(synthetic_raw, tmp_path):
    out = tmp_path / "prepared" / "nerve.npz"
    staging = out.parent / ".nerve.npz.staging"
    (staging / "nerve").mkdir(parents=True)
    (staging / "nerve" / "train.zip").write_bytes(b"x" * 1000)  # the extracted inner archive
    (out.parent / ".nerve.npz.abcd.tmp").write_bytes(b"half an npz")
    (out.parent / ".nerve.json.abcd.tmp").write_bytes(b"{")
    prepare("nerve", synthetic_raw["nerve"], out, size=32, workers=1)
    assert sorted(p.name for p in out.parent.iterdir()) == ["nerve.json", "nerve.npz"]


def test_prepare_stages_in_the_folder_it_cleans(synthetic_raw, tmp_path, monkeypatch):
    """The staging folder a rerun removes is the one prepare really uses."""
    import rdiunet.data.sources.nerve as nerve

    seen = []
    real_pairs = nerve.SOURCE.pairs

    def watching(raw, workdir):
        seen.append(workdir)
        return real_pairs(raw, workdir)

    monkeypatch.setattr(nerve, "SOURCE", dataclasses.replace(nerve.SOURCE, pairs=watching))
    from rdiunet.data import sources

    sources.get.cache_clear()
    try:
        prepare("nerve", synthetic_raw["nerve"], tmp_path / "nerve.npz", size=32, workers=1)
    finally:
        sources.get.cache_clear()
    assert seen == [tmp_path / ".nerve.npz.staging"]


def test_training_removes_the_temporary_checkpoint_of_a_killed_run(jsrt32, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"x" * 100_000)
    (run / ".best.pt.k1ll3d.tmp").write_bytes(b"x" * 100_000)
    train(tiny_settings(jsrt32), run)
    assert not list(run.glob(".*.tmp"))


# --- bad input is one line, never a traceback ---------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and whose pixel data is a few bytes."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n"
        + header
        + png_chunk(b"IDAT", zlib.compress(bytes(100)))
        + png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [9_000, 20_000])  # past our limit; also past Pillow's bomb limit
def test_an_image_claiming_an_enormous_size_is_one_line(synthetic_raw, tmp_path, side):
    source = synthetic_raw["jsrt"] / "Segmentation01.zip"
    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(raw / source.name, "w") as dst:
        for name in src.namelist():
            huge = name.endswith(("train/org/004.png", "train/label/004.png"))  # image and mask agree
            dst.writestr(name, png_header_claiming(side, side) if huge else src.read(name))
    result = run_cli(
        "prepare", "--workers", "1", "--dataset", "jsrt", "--raw", raw, "--out", tmp_path / "o" / "j.npz"
    )
    assert_one_line_error(result, "004.png")


def patch_all(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data and len(old) == len(new)
    path.write_bytes(data.replace(old, new))


def test_a_member_name_that_is_not_utf8_is_one_line(synthetic_raw, tmp_path):
    source = synthetic_raw["jsrt"] / "Segmentation01.zip"
    raw = tmp_path / "raw"
    rezip(source, raw / source.name, [("Segmentation01/notes-é.txt", b"")])
    patch_all(raw / source.name, "notes-é".encode(), b"notes-\xff\xfe")  # flagged UTF-8, but is not
    result = run_cli(
        "prepare", "--workers", "1", "--dataset", "jsrt", "--raw", raw, "--out", tmp_path / "o" / "j.npz"
    )
    assert_one_line_error(result, "Segmentation01.zip")


def test_unusual_member_names_are_read(synthetic_raw, tmp_path):
    source = synthetic_raw["jsrt"] / "Segmentation01.zip"
    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(raw / source.name, "w") as dst:
        for name in src.namelist():
            dst.writestr(name.replace("/005.png", "/ünïcode 5 ☃.png"), src.read(name))
        dst.writestr("Segmentation01/train/org/", b"")  # a folder entry
    result = run_cli(
        "prepare", "--workers", "1", "--dataset", "jsrt", "--raw", raw, "--out", tmp_path / "o" / "j.npz"
    )
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "o" / "j.npz") as npz:
        assert "train/ünïcode 5 ☃" in npz["ids"].tolist()


def test_a_damaged_array_header_is_one_line(jsrt32, tmp_path):
    data = copy_data(jsrt32, tmp_path)
    # masks.npy's zip headers (local and central) name a compression method that does not exist.
    blob = bytearray(data.read_bytes())
    for signature, field in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        name_at = 30 if signature == b"PK\x03\x04" else 46
        start = blob.find(signature)
        while start >= 0:
            length = struct.unpack_from("<H", blob, start + (26 if name_at == 30 else 28))[0]
            if blob[start + name_at : start + name_at + length] == b"masks.npy":
                struct.pack_into("<H", blob, start + field, 99)
            start = blob.find(signature, start + 4)
    data.write_bytes(bytes(blob))
    edit_json(data.with_suffix(".json"), npz_sha256=hashlib.sha256(data.read_bytes()).hexdigest())
    result = run_cli(
        "train", "--data", data, "--model", "rdiunet", "--seed", "0", "--out", tmp_path / "r", *TINY_OPTS
    )
    assert_one_line_error(result, "not a readable .npz")


@pytest.mark.parametrize("content", ['{"dataset": "jsrt", "synth', "[]", '{"dataset": "jsrt"}'])
def test_a_truncated_or_incomplete_summary_is_one_line(jsrt32, tmp_path, content):
    data = copy_data(jsrt32, tmp_path)
    data.with_suffix(".json").write_text(content)
    result = run_cli(
        "train", "--data", data, "--model", "rdiunet", "--seed", "0", "--out", tmp_path / "r", *TINY_OPTS
    )
    assert_one_line_error(result, "jsrt.json", "rerun rdiunet prepare")


@pytest.mark.parametrize(
    "flags,message",
    [
        (("--epochs", "0"), "--epochs must be an integer of at least 1"),
        (("--batch-size", "0"), "--batch-size must be an integer of at least 1"),
        (("--lr=-1e-4",), "--lr must be a finite number above 0"),
        (("--lr", "nan"), "--lr must be a finite number above 0"),
        (("--threads", "0"), "--threads must be an integer of at least 1"),
        (("--model-opt", "growth=abc"), "growth='abc' must be like its default 96"),
        (("--model-opt", "dropout=1.5"), "dropout"),
        (("--model-opt", "widths=0,8"), "widths=(0, 8)"),
    ],
)
def test_numbers_out_of_range_are_one_line(jsrt32, tmp_path, flags, message):
    result = run_cli(
        "train", "--data", jsrt32, "--model", "rdiunet", "--seed", "0", "--out", tmp_path / "r", *flags
    )
    assert_one_line_error(result, message)
    assert not (tmp_path / "r" / "run.json").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ("bench", "--model", "unet", "--size", "32", "--runs", "0"),
            "--runs must be an integer of at least 1",
        ),
        (("bench", "--model", "unet", "--size", "32", "--threads", "-2"), "--threads"),
        (("prepare", "--dataset", "jsrt", "--split", "nan,0.1,0.1"), "three finite fractions"),
        (("prepare", "--dataset", "jsrt", "--split", "0.5,0.1,0.1"), "sum to 1"),
        (("prepare", "--dataset", "jsrt", "--workers", "0"), "--workers must be at least 1"),
        (("synth", "--dataset", "jsrt", "--seed", "-1"), "--seed must be 0 or more"),
    ],
)
def test_other_commands_check_their_numbers(tmp_path, args, message):
    paths = {
        "bench": ("--out", tmp_path / "b.json"),
        "prepare": ("--raw", tmp_path, "--out", tmp_path / "p.npz"),
    }
    paths["synth"] = ("--out", tmp_path / "raw")
    assert_one_line_error(run_cli(*args, *paths[args[0]]), message)


# --- memory: a member that inflates is refused from its header ----------------------------------------


def test_a_member_that_inflates_to_half_a_gigabyte_is_refused_before_reading(synthetic_raw, tmp_path):
    source = synthetic_raw["jsrt"] / "Segmentation01.zip"
    raw = tmp_path / "raw"
    raw.mkdir()
    bomb = "Segmentation01/train/org/006.png"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(raw / source.name, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            if name == bomb:
                with dst.open(name, "w", force_zip64=True) as member:
                    for _ in range(512):
                        member.write(bytes(2**20))
            else:
                dst.writestr(name, src.read(name))
    assert (raw / source.name).stat().st_size < 3 * 2**20  # the member costs about 0.5 MB on disk
    result = run_cli(
        "prepare", "--workers", "1", "--dataset", "jsrt", "--raw", raw, "--out", tmp_path / "out" / "j.npz"
    )
    assert_one_line_error(result, "006.png", "declares 536,870,912 bytes", f"{MAX_MEMBER_BYTES:,}")


# --- the study checks its runs -------------------------------------------------------------------


def edit_run(root: Path, run: str, name: str, change) -> None:
    path = root / "results" / run / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_report_over_two_configurations_leaves_out_the_foreign_runs_naming_what_differs(tmp_path):
    from handmade import CONFIG, write_tree

    write_tree(tmp_path)

    # Two runs of another study: another learning rate and fewer epochs; other model options.
    def other_study(**settings):
        def change(run):
            run["config"].update(settings)
            run["identity"].update({k: v for k, v in settings.items() if k in run["identity"]})

        return change

    edit_run(tmp_path, "jsrt/unet/seed1", "run.json", other_study(lr=1e-2, epochs=2))
    edit_run(tmp_path, "isic/rdiunet/seed0", "run.json", other_study(model_options={"growth": 8}))
    config = {**CONFIG, "training": {"lr": 1e-4}}
    result = run_cli(
        "tables", "--results", tmp_path / "results", "--data", tmp_path / "none",
        "--config-json", json.dumps(config), "--out", tmp_path / "reports",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    note = (tmp_path / "reports" / "table1.md").read_text()
    assert "jsrt/unet/seed1: trained otherwise than this study asks: epochs 2 (the study: 4); lr 0.01" in note
    assert 'isic/rdiunet/seed0: trained otherwise than this study asks: model_options {"growth": 8}' in note
    table1 = pd.read_csv(tmp_path / "reports" / "table1.csv").set_index(["dataset", "model"])
    assert table1.loc[("jsrt", "unet")].seeds == 1 and table1.loc[("jsrt", "unet")].dice_mean == 0.90


@pytest.mark.parametrize(
    "name, change, says",
    [
        ("history.csv", lambda h: h.assign(val_dice=h.val_dice * 2), "val_dice holds values outside [0, 1]"),
        ("history.csv", lambda h: h.assign(train_loss=-1.0), "train_loss holds values that are not finite"),
        ("metrics.json", lambda m: m.update(iou=1.5), "iou is 1.5, outside [0, 1]"),
        ("metrics.json", lambda m: m.update(checkpoint_format=1), "checkpoint_format 1 (the study: "),
    ],
)
def test_values_out_of_their_range_exclude_the_run(tmp_path, name, change, says):
    from handmade import CONFIG, write_tree

    write_tree(tmp_path)
    path = tmp_path / "results" / "jsrt" / "rdiunet" / "seed0" / name
    if name == "history.csv":
        change(pd.read_csv(path).assign(train_loss=0.3)).to_csv(path, index=False)
    else:
        edit_run(tmp_path, "jsrt/rdiunet/seed0", name, change)
    from rdiunet.report.collect import Study, collect

    excluded = collect(tmp_path / "results", Study.from_config(CONFIG)).excluded
    assert [e.label for e in excluded] == ["jsrt/rdiunet/seed0"] and says in excluded[0].reason


# --- collapsed and diverged runs are findings ----------------------------------------------------


def collapse(root: Path, run: str) -> None:
    """A run whose model predicts nothing: every test image empty, Dice 0, as a collapsed model's."""
    folder = root / "results" / run
    per_image = pd.read_csv(folder / "per_image.csv").assign(
        dice=0.0, gt_empty=0, pred_empty=1, pred_fraction=0.0
    )
    per_image.to_csv(folder / "per_image.csv", index=False)
    metrics = json.loads((folder / "metrics.json").read_text())
    for scores in (metrics, *metrics["checkpoints"].values()):
        scores.update(dice=0.0, iou=0.0, dice_dataset=0.0, iou_dataset=0.0)
    (folder / "metrics.json").write_text(json.dumps(metrics))


@pytest.mark.parametrize("policy", ["keep", "exclude"])
def test_a_collapsed_run_is_a_finding_kept_and_flagged_or_excluded_by_the_config(tmp_path, policy):
    from handmade import CONFIG, write_tree

    write_tree(tmp_path)
    collapse(tmp_path, "isic/rdiunet/seed1")
    result = run_cli(
        "report", "--results", tmp_path / "results", "--data", tmp_path / "none",
        "--figures", tmp_path / "none", "--timing", tmp_path / "none",
        "--config-json", json.dumps({**CONFIG, "failed_runs": policy}),
        "--out", tmp_path / "report.html",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    claims = pd.read_csv(tmp_path / "claims.csv")
    evidence = claims[
        (claims.reading == "headline") & (claims.claim == "accuracy") & (claims.dataset == "isic")
    ]
    page = (tmp_path / "report.html").read_text()
    finding = "collapsed: empty predictions on 100% of the test images with an object"
    if policy == "keep":
        assert f"seed 1 of rdiunet {finding}" in evidence.evidence.iloc[0]
        assert "without them: " in evidence.evidence.iloc[0]
        assert f"seed 1 {finding}" in page  # Table 1's flagged runs
    else:
        assert f"isic/rdiunet/seed1</code>: {finding} (failed_runs: exclude)" in page
        assert "flagged runs kept" not in evidence.evidence.iloc[0]


def test_a_run_that_diverged_before_its_first_epoch_is_named_so(tmp_path):
    from handmade import CONFIG, write_tree

    write_tree(tmp_path)
    folder = tmp_path / "results" / "jsrt" / "unet" / "seed0"
    (folder / "metrics.json").unlink()
    edit_run(
        tmp_path,
        "jsrt/unet/seed0",
        "run.json",
        lambda r: r.update(status="diverged", diverged={"epoch": 1, "loss": "nan"}),
    )
    from rdiunet.report.collect import Study, collect

    (excluded,) = collect(tmp_path / "results", Study.from_config(CONFIG)).excluded
    assert (
        excluded.reason
        == "diverged: the training loss became nan in epoch 1, before any epoch finished; no weights to test"
    )
