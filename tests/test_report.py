import html
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, assert_one_line_error, run_cli
from handmade import CONFIG, write_tree

from rdiunet.report import collect, columns, tables
from rdiunet.report.figure_kinds import FIGURE_KINDS


def tables_cli(root: Path, config=CONFIG):
    return run_cli(
        "tables",
        "--results",
        root / "results",
        "--data",
        root / "none",
        "--config-json",
        json.dumps(config),
        "--out",
        root / "reports",
    )


def test_table_values_are_recomputed_from_the_results_tree(tmp_path):
    write_tree(tmp_path)
    result = tables_cli(tmp_path)
    assert result.returncode == 0, result.stderr
    table1 = pd.read_csv(tmp_path / "reports" / "table1.csv").set_index(["dataset", "model"])
    row = table1.loc[("jsrt", "unet")]
    assert row.dice_mean == pytest.approx(0.92)
    assert row.dice_sd == pytest.approx(np.std([0.90, 0.94], ddof=1))
    assert row.iou_mean == pytest.approx(0.85)
    assert row.dice_dataset_mean == pytest.approx(0.93)
    assert row.hd95_median_mean == pytest.approx(4.0)
    assert row.paper_dice == 0.958 and row.delta_dice == pytest.approx(0.92 - 0.958)
    # 30 ms at 128², grown 3.2x to 256², times the three sessions' jitter: their mean.
    assert row.ms_per_image == pytest.approx(96.0 * (1.0 + 1.02 + 0.99) / 3) and row.paper_ms == 106.8
    assert row.params == 15_326_529 and row.delta_params == 15_326_529 - 15.6e6
    assert table1.loc[("isic", "rdiunet")].dice_mean == pytest.approx(0.81)
    assert list(table1.index.get_level_values(0).unique()) == ["jsrt", "isic"]  # the config's order

    table2 = pd.read_csv(tmp_path / "reports" / "table2.csv").set_index(["dataset", "model"])
    assert table2.loc[("jsrt", "unet")].stability_per_seed == "1;0"
    assert table2.loc[("jsrt", "unet")].convergence_per_seed == "2;none"
    assert table2.loc[("jsrt", "unet")].converged_seeds == 1
    # Kaplan-Meier: seed 0 reaches 0.9 at epoch 2, seed 1 never (censored at 4): half by epoch 2.
    assert table2.loc[("jsrt", "unet")].convergence == 2
    assert table2.loc[("jsrt", "rdiunet")].stability_per_seed == "0;1"
    assert table2.loc[("jsrt", "rdiunet")].convergence_per_seed == "2;1"
    assert table2.loc[("jsrt", "rdiunet")].convergence == 1  # one run at 1, one at 2
    # 0.80 -> 0.75 -> 0.70 falls by exactly 0.05 twice: not "more than" 0.05.
    assert table2.loc[("isic", "unet")].stability_per_seed == "0;0"
    assert table2.loc[("isic", "unet")].stability_mean == pytest.approx(0.0)
    assert table2.loc[("isic", "unet")].paper_stability == 15
    assert table2.loc[("isic", "unet")].delta_stability == pytest.approx(0.0 - 15)

    assert table2.loc[("jsrt", "rdiunet")].delta_convergence == pytest.approx(1 - 34)
    assert (tmp_path / "reports" / "table1.md").read_text().startswith("> **Synthetic data.**")


def html_table(page: str, heading: str) -> list[list[str]]:
    """The header and cell texts of the table after `heading` in a report page."""
    section = page.split(heading, 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", section, re.S)
    return [[html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)] for row in rows]


def markdown_table(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def set_gpu_record(root: Path, run: str, record: dict) -> None:
    path = root / "results" / run / "metrics.json"
    metrics = json.loads(path.read_text())
    path.write_text(json.dumps({**metrics, "gpu": record}))


def test_the_energy_of_a_run_that_shared_its_card_is_neither_shown_nor_averaged(tmp_path):
    write_tree(tmp_path)
    alone = {"available": True, "energy_j_total": 1000.0, "card_shared": None}
    shared = {**alone, "energy_j_total": 5000.0, "card_shared": "gpu_slots 2: other trainings could run"}
    set_gpu_record(tmp_path, "jsrt/unet/seed0", alone)
    set_gpu_record(tmp_path, "jsrt/unet/seed1", shared)
    set_gpu_record(tmp_path, "jsrt/rdiunet/seed0", {**alone, "card_shared": "NVML saw 2 compute processes"})
    set_gpu_record(tmp_path, "jsrt/rdiunet/seed1", {k: v for k, v in alone.items() if k != "card_shared"})
    assert tables_cli(tmp_path).returncode == 0
    table1 = pd.read_csv(tmp_path / "reports" / "table1.csv").set_index(["dataset", "model"])
    assert table1.loc[("jsrt", "unet")].energy_j_mean == 1000.0  # seed 1's card was shared
    assert math.isnan(table1.loc[("jsrt", "rdiunet")].energy_j_mean)  # neither is its own
    note = (tmp_path / "reports" / "table1.md").read_text()
    assert "Energy not shown** for 3 run(s)" in note and "the energy of the whole card" in note
    assert "jsrt/unet/seed1: gpu_slots 2" in note and "jsrt/rdiunet/seed0: NVML saw 2" in note
    assert "jsrt/rdiunet/seed1: whether the card was shared is not recorded" in note


def test_markdown_and_html_tables_show_the_same_headers_and_cells(tmp_path):
    write_tree(tmp_path)
    assert tables_cli(tmp_path).returncode == 0
    out = tmp_path / "reports" / "report.html"
    result = report_cli(tmp_path, CONFIG, out)
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    for name, heading in (("table1", "Table 1: accuracy"), ("table2", "Table 2: stability")):
        markdown = markdown_table((tmp_path / "reports" / f"{name}.md").read_text())
        assert html_table(page, heading) == markdown
        assert len({len(row) for row in markdown}) == 1  # every row has a cell under every header
    assert "2 (1 of 2 converged)" in page  # jsrt U-Net: one of two seeds converged


def test_a_table_column_is_one_line(tmp_path):
    write_tree(tmp_path)
    study = collect.Study.from_config(CONFIG)
    frame = tables.table1(collect.collect(tmp_path / "results", study), study)
    extended = (*columns.TABLE1, columns.Column("test_loss", "test loss", columns.mean_sd(2)))
    header, *rows = markdown_table(tables.markdown(frame, extended))
    assert header[-1] == "test loss" and rows[0][-1] == "0.10 ± 0.00"
    assert columns.rendered(extended, frame.to_dict("records"))["header"][-1]["value"] == "test loss"
    csv_columns = list(tables.csv_frame(frame, extended).columns)
    shown = csv_columns.index("flagged") + 1  # the CSV shows the columns' fields first, in order
    assert csv_columns[shown : shown + 2] == ["test_loss_mean", "test_loss_sd"]


def test_missing_threshold_is_a_one_line_error(tmp_path):
    write_tree(tmp_path)
    no_threshold = {
        **CONFIG,
        "datasets": {**CONFIG["datasets"], "jsrt": {"size": 256, "epochs": 4, "batch_size": 8}},
    }
    assert_one_line_error(tables_cli(tmp_path, no_threshold), "datasets.jsrt: 'threshold' is required")


def test_missing_run_bench_and_speed_are_gaps_stated_in_the_tables(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "results" / "isic" / "rdiunet" / "seed1" / "metrics.json").unlink()
    (tmp_path / "results" / "jsrt" / "unet" / "bench.json").unlink()
    (tmp_path / "results" / "isic" / "speed.json").unlink()
    result = tables_cli(tmp_path)
    assert result.returncode == 0, result.stderr
    table1 = pd.read_csv(tmp_path / "reports" / "table1.csv").set_index(["dataset", "model"])
    assert table1.loc[("isic", "rdiunet")].seeds == 1
    assert table1.loc[("isic", "rdiunet")].dice_mean == pytest.approx(0.80)  # seed 0 alone
    assert math.isnan(table1.loc[("jsrt", "unet")].params)
    assert math.isnan(table1.loc[("isic", "unet")].ms_per_image)
    note = (tmp_path / "reports" / "table1.md").read_text()
    assert "**Left out** (3)" in note
    assert "isic/rdiunet/seed1:" in note and "metrics.json is missing" in note
    assert "jsrt/unet/bench.json:" in note and "isic/speed.json:" in note


# --- the HTML page --------------------------------------------------------------------------------

HOSTILE = '<img src=x onerror="alert(1)">'


def report_cli(root: Path, config: dict, out: Path):
    return run_cli(
        "report",
        "--results",
        root / "results",
        "--config-json",
        json.dumps(config),
        "--figures",
        root / "none",
        "--data",
        root / "none",
        "--timing",
        root / "none",
        "--out",
        out,
    )


def test_a_label_that_is_not_a_safe_folder_name_is_refused(tmp_path):
    write_tree(tmp_path)
    config = {**CONFIG, "models": {"unet": {}, HOSTILE: {"model": "rdiunet"}}}
    result = report_cli(tmp_path, config, tmp_path / "reports" / "report.html")
    assert_one_line_error(result, "is not a label: lower case letters, digits and _")


def test_html_escapes_hostile_configuration_text(tmp_path):
    write_tree(tmp_path)
    config = {**CONFIG, "workdir": f"{HOSTILE}<script>alert(2)</script>"}
    out = tmp_path / "reports" / "report.html"
    result = report_cli(tmp_path, config, out)
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert HOSTILE not in page and "<script>alert(2)" not in page
    assert "&lt;img src=x onerror=" in page
    assert "Synthetic data." in page


def test_report_cites_the_paper_and_states_the_terms_of_the_data_it_used(tmp_path):
    write_tree(tmp_path)
    out = tmp_path / "reports" / "report.html"
    assert report_cli(tmp_path, CONFIG, out).returncode == 0
    page = out.read_text()
    assert "RDIU-Net: Lightweight Medical Image Segmentation Network" in page and "ICCAS 2023" in page
    section = page.split('id="data-terms"', 1)[1].split("<h2", 1)[0]
    # The hand-made tree uses jsrt and isic: their terms, and nothing about the unused nerve set.
    assert "CC BY-NC 4.0" in section and "HAM10000" in section
    assert "JSRT terms of use" in section and "Shiraishi" in section
    assert "Kaggle" not in section


def test_docs_state_every_registered_sources_licence_and_url():
    from rdiunet.data import sources

    data_md = (REPO / "docs" / "data.md").read_text()
    for name in sources.names():
        terms = sources.get(name).terms
        assert terms.licence in data_md and terms.url in data_md, name


def chromium_paths():
    return shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.slow
@pytest.mark.skipif(
    not all(chromium_paths()) and not os.environ.get("CI"),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
)
def test_report_in_headless_chromium(demo):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium_paths()
    assert browser and driver_path, "CI must install chromium and chromium-driver"
    page = demo / "demo" / "reports" / "report.html"
    options = Options()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(page.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 22)])"
        )
        assert len(images) == 5 * len(FIGURE_KINDS)  # 5 datasets (nerve_by_image, nerve_cv too) x every kind
        assert all(complete and width > 0 for complete, width, _ in images), images
        assert all(src.startswith("data:image/png;base64") for _, _, src in images)
        network = driver.execute_script(
            "return performance.getEntriesByType('resource').filter(e => !e.name.startsWith('data:'))"
            ".map(e => e.name)"
        )
        assert network == []  # self-contained: nothing fetched
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []
        assert "Synthetic data." in driver.find_element("css selector", ".banner").text
        claims = driver.find_element("id", "claims-table")
        headers = [cell.text for cell in claims.find_elements("css selector", "thead th")]
        assert headers[:7] == [
            "claim",
            "dataset",
            "verdict",
            "effect",
            "95% interval",
            "power",
            "seeds needed",
        ]
        assert "not comparable" in claims.text and " nan" not in claims.text.lower()  # a CPU timing
        assert all(
            cell.text.startswith(("inconclusive (", "not comparable", "not reproduced (", "reproduced"))
            for cell in claims.find_elements("css selector", "td.verdict")
        )
        matrix = driver.find_element("id", "robustness-table")
        assert "same runs" in matrix.text
        rows = (demo / "demo" / "reports" / "robustness.csv").read_text().splitlines()[1:-1]  # no summary
        assert len(matrix.find_elements("css selector", "tbody tr")) == len(rows) >= 3
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(height, 16000))
        artifacts = Path(os.environ.get("RDIUNET_TEST_ARTIFACTS", REPO / "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(artifacts / "report.png"))
    finally:
        driver.quit()
