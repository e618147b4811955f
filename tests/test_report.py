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

from rdiunet.report import claims as claim_rules
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
    assert row.ms_per_image == 96.0 and row.paper_ms == 106.8  # 30 ms at 128², grown 3.2x to 256²
    assert row.params == 15_326_529 and row.delta_params == 15_326_529 - 15.6e6
    assert table1.loc[("isic", "rdiunet")].dice_mean == pytest.approx(0.81)
    assert list(table1.index.get_level_values(0).unique()) == ["jsrt", "isic"]  # the config's order

    table2 = pd.read_csv(tmp_path / "reports" / "table2.csv").set_index(["dataset", "model"])
    assert table2.loc[("jsrt", "unet")].stability_per_seed == "1;0"
    assert table2.loc[("jsrt", "unet")].convergence_per_seed == "2;none"
    assert table2.loc[("jsrt", "unet")].converged_seeds == 1
    assert table2.loc[("jsrt", "rdiunet")].stability_per_seed == "0;1"
    assert table2.loc[("jsrt", "rdiunet")].convergence_per_seed == "2;1"
    assert table2.loc[("isic", "unet")].stability_per_seed == "2;0"
    assert table2.loc[("isic", "unet")].stability_mean == pytest.approx(1.0)
    assert table2.loc[("isic", "unet")].paper_stability == 15
    assert table2.loc[("isic", "unet")].delta_stability == pytest.approx(1.0 - 15)
    assert table2.loc[("jsrt", "rdiunet")].convergence_mean == pytest.approx(1.5)
    assert table2.loc[("jsrt", "rdiunet")].delta_convergence == pytest.approx(1.5 - 34)
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
    assert "(1 converged)" in page  # jsrt U-Net: one of two seeds converged


def test_a_table_column_is_one_line(tmp_path):
    write_tree(tmp_path)
    study = collect.Study.from_config(CONFIG)
    frame = tables.table1(collect.collect(tmp_path / "results", study), study)
    extended = (*columns.TABLE1, columns.Column("test_loss", "test loss", columns.mean_sd(2)))
    header, *rows = markdown_table(tables.markdown(frame, extended))
    assert header[-1] == "test loss" and rows[0][-1] == "0.10 ± 0.00"
    assert columns.rendered(extended, frame.to_dict("records"))["header"][-1]["value"] == "test loss"
    csv_columns = list(tables.csv_frame(frame, extended).columns)
    shown = csv_columns.index("energy_j_sd") + 1  # the CSV shows the columns' fields first, in order
    assert csv_columns[shown : shown + 2] == ["test_loss_mean", "test_loss_sd"]


def test_missing_threshold_is_a_one_line_error(tmp_path):
    write_tree(tmp_path)
    no_threshold = {**CONFIG, "datasets": {"jsrt": {}, "isic": {"threshold": 0.75}}}
    assert_one_line_error(tables_cli(tmp_path, no_threshold), "datasets.jsrt gives no threshold")


def test_missing_run_and_bench_are_gaps_stated_in_the_tables(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "results" / "isic" / "rdiunet" / "seed1" / "metrics.json").unlink()
    (tmp_path / "results" / "jsrt" / "unet" / "bench.json").unlink()
    result = tables_cli(tmp_path)
    assert result.returncode == 0, result.stderr
    table1 = pd.read_csv(tmp_path / "reports" / "table1.csv").set_index(["dataset", "model"])
    assert table1.loc[("isic", "rdiunet")].seeds == 1
    assert table1.loc[("isic", "rdiunet")].dice_mean == pytest.approx(0.80)  # seed 0 alone
    assert math.isnan(table1.loc[("jsrt", "unet")].ms_per_image)
    note = (tmp_path / "reports" / "table1.md").read_text()
    assert "**Left out** (2)" in note
    assert "isic/rdiunet/seed1:" in note and "metrics.json is missing" in note
    assert "jsrt/unet/bench.json:" in note


# --- claim verdicts on constructed cases ----------------------------------------------------------


def constructed(difference: float, noise: float, seeds: int = 5, images: int = 40):
    """Runs and per-image scores where RDIU-Net = U-Net + difference (+ noise)."""
    rng = np.random.default_rng(0)
    runs, per_image = [], []
    base_images = rng.uniform(0.6, 0.9, images)
    for seed in range(seeds):
        for model, shift in (("unet", 0.0), ("rdiunet", difference)):
            scores = base_images + shift + rng.normal(0, noise, images)
            runs.append({"dataset": "d", "model": model, "seed": seed, "dice": scores.mean()})
            per_image += [
                {"dataset": "d", "model": model, "seed": seed, "id": f"i{k}", "dice": s}
                for k, s in enumerate(scores)
            ]
    return pd.DataFrame(runs), pd.DataFrame(per_image)


@pytest.mark.parametrize(
    "difference,noise,seeds,expected",
    [
        (0.05, 0.01, 5, "reproduced"),  # clearly better on every seed and image
        (-0.05, 0.01, 5, "not reproduced"),  # clearly worse
        (0.0, 0.05, 5, "inconclusive"),  # noise only
        (0.05, 0.01, 3, "inconclusive"),  # clearly better, but too few seeds to say
    ],
)
def test_accuracy_verdicts(difference, noise, seeds, expected):
    runs, per_image = constructed(difference, noise, seeds)
    verdict, evidence = claim_rules.accuracy("d", runs, per_image, "rdiunet", "unet")
    assert verdict == expected, evidence
    assert "resampling images (40)" in evidence  # one image per group: the frame bootstrap


def counts_runs(unet, rdiunet, column):
    rows = [
        {"dataset": "d", "model": m, "seed": s, column: v, "epochs": 50}
        for m, values in (("unet", unet), ("rdiunet", rdiunet))
        for s, v in enumerate(values)
    ]
    frame = pd.DataFrame(rows)
    if column == "stability":
        frame["convergence"] = None
    return frame


def fewer(claim, runs):
    return claim_rules.fewer_is_better(claim, "d", runs, "rdiunet", "unet")


def test_stability_and_convergence_verdicts():
    assert fewer("stability", counts_runs([5, 4, 6, 5, 7], [0, 1, 0, 2, 1], "stability"))[0] == "reproduced"
    assert (
        fewer("stability", counts_runs([0, 1, 0, 2, 1], [5, 4, 6, 5, 7], "stability"))[0] == "not reproduced"
    )
    assert fewer("stability", counts_runs([1] * 5, [1] * 5, "stability"))[0] == "not reproduced"
    assert fewer("stability", counts_runs([5, 4], [0, 1], "stability"))[0] == "inconclusive"
    # A run that never converges counts as epochs + 1 = 51: RDIU-Net still converges sooner.
    verdict, evidence = fewer(
        "convergence", counts_runs([36, None, 40, 38, 41], [17, 20, 18, 19, 25], "convergence")
    )
    assert verdict == "reproduced" and "51" in evidence


def test_speed_and_parameter_verdicts():
    params = {"unet": 15_000_000, "rdiunet": 5_900_000}
    ms = {("d", "unet"): 30.0, ("d", "rdiunet"): 22.0, ("e", "unet"): 30.0, ("e", "rdiunet"): 27.0}
    benches = pd.DataFrame([{"dataset": d, "model": m, "params": params[m], "device": "GPU"} for d, m in ms])
    speeds = [
        {"dataset": d, "model": m, "precision": "tf32", "protocol": "eager_b1", "ms": value, "reason": None}
        for (d, m), value in ms.items()
    ]
    speeds += [
        {"dataset": d, "model": m, "precision": "tf32", "protocol": "graphed_b1", "ms": math.nan}
        | {"reason": "CUDA graphs need a CUDA device"}
        for d, m in ms
    ]
    collection = collect.Collection(
        pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), benches, pd.DataFrame(speeds)
    )
    pair = ("rdiunet", "unet", "tf32")
    assert claim_rules.speed("d", collection, *pair, "eager_b1")[0] == "reproduced"  # 27% faster
    assert claim_rules.speed("e", collection, *pair, "eager_b1")[0] == "not reproduced"  # 10% faster
    verdict, reason = claim_rules.speed("d", collection, *pair, "graphed_b1")
    assert verdict == "not measured" and reason == "CUDA graphs need a CUDA device"
    assert claim_rules.speed("d", collection, "rdiunet", "unet", "bf16", "eager_b1")[0] == "inconclusive"
    assert claim_rules.parameters(benches, "rdiunet", "unet")[0] == "reproduced"  # 60.7% fewer


def test_overall_verdict():
    v = claim_rules.Verdict
    assert (
        claim_rules.overall(
            "speed", [v("speed", "a", "reproduced", ""), v("speed", "b", "reproduced", "")]
        ).verdict
        == "reproduced"
    )
    assert (
        claim_rules.overall(
            "speed", [v("speed", "a", "reproduced", ""), v("speed", "b", "inconclusive", "")]
        ).verdict
        == "inconclusive"
    )
    assert (
        claim_rules.overall(
            "speed", [v("speed", "a", "not reproduced", ""), v("speed", "b", "reproduced", "")]
        ).verdict
        == "not reproduced"
    )


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
    assert_one_line_error(result, "a label must be lower case letters, digits and _")


def test_html_escapes_hostile_configuration_text(tmp_path):
    write_tree(tmp_path)
    config = {**CONFIG, "note": f"{HOSTILE}<script>alert(2)</script>"}
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
        assert len(images) == 4 * len(FIGURE_KINDS)  # 4 datasets (nerve_by_image too) x every kind
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
        matrix = driver.find_element("id", "robustness").find_element("xpath", "following::table[1]")
        rows = (demo / "demo" / "reports" / "robustness.csv").read_text().splitlines()[1:-1]  # no summary
        assert len(matrix.find_elements("css selector", "tbody tr")) == len(rows) >= 3
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(height, 16000))
        artifacts = Path(os.environ.get("RDIUNET_TEST_ARTIFACTS", REPO / "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(artifacts / "report.png"))
    finally:
        driver.quit()
