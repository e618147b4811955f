"""Readings: variants resolve to labels with bases and options, the claims are judged under every
reading, the robustness matrix says which claims depend on which reading, the bootstrap resamples
subjects where frames are correlated, and the paper's own numbers are checked for consistency."""

import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, run_cli
from snakemake.utils import validate
from snakemake_interface_common.exceptions import WorkflowError

from rdiunet.bench import count_parameters
from rdiunet.data.prepare import prepare
from rdiunet.models import build
from rdiunet.readings import WORKFLOW_KEYS, ConfigError, resolve
from rdiunet.report import paper_check
from rdiunet.report.claims import evaluate_claims
from rdiunet.report.collect import Collection, Study
from rdiunet.report.robustness import robustness_frame
from rdiunet.stats import bootstrap_ci

SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def paper_config() -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(config, SCHEMA)
    return config


# --- variants ------------------------------------------------------------------------------------------


def test_the_paper_run_resolves_to_four_readings_and_fourteen_runs_per_seed():
    plan = resolve(paper_config(), WORKFLOW_KEYS)
    assert [r.name for r in plan.readings] == [
        "headline",
        "proposed = rdiunet_k3",
        "baseline = unet_classic",
        "nerve = nerve_by_image",
    ]
    headline = plan.headline
    assert (headline.proposed, headline.baseline, headline.datasets) == (
        "rdiunet",
        "unet",
        ("nerve", "jsrt", "isic"),
    )
    assert plan.readings[3].datasets == ("nerve_by_image", "jsrt", "isic")
    assert plan.readings[3].stands_for["nerve_by_image"] == "nerve"
    # One factor at a time: no unet_classic on nerve_by_image, no rdiunet_k3 against unet_classic.
    assert len(plan.pairs) == 14
    assert ("nerve_by_image", "unet_classic") not in plan.pairs
    assert plan.models_of("nerve_by_image") == ["unet", "rdiunet"]


def test_variants_name_their_base_and_inherit_their_sources_settings():
    plan = resolve(paper_config(), WORKFLOW_KEYS)
    assert plan.base("unet_classic") == "unet"
    assert plan.model_options("unet_classic") == {"convs_per_level": 2, "norm": "none", "dropout": 0.5}
    assert plan.model_options("rdiunet") == {}
    variant, source = plan.datasets["nerve_by_image"], plan.datasets["nerve"]
    assert variant["source"] == "nerve" and variant["split_by"] == "image" and source["split_by"] == "subject"
    assert {k: variant[k] for k in ("size", "threshold", "epochs", "batch_size")} == {
        k: source[k] for k in ("size", "threshold", "epochs", "batch_size")
    }


def test_a_variant_overrides_what_it_names():
    config = paper_config()
    config["datasets"]["nerve_small"] = {"source": "nerve", "size": 64}
    plan = resolve(config, WORKFLOW_KEYS)
    assert plan.datasets["nerve_small"]["size"] == 64 and plan.datasets["nerve_small"]["threshold"] == 0.7


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c["compare"].update(baselines=["vnet"]), "compare.baselines names 'vnet'"),
        (lambda c: c["datasets"].pop("nerve"), "datasets.nerve_by_image gives no size"),
        (lambda c: c["models"].update({"Bad-Label": {"model": "unet"}}), "a label must be lower case"),
    ],
)
def test_readings_that_do_not_fit_together_name_the_key(edit, message):
    config = copy.deepcopy(paper_config())
    edit(config)
    with pytest.raises(ConfigError, match=message):
        resolve(config, WORKFLOW_KEYS)


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"model": "vnet"}, "'vnet' is not one of"),
        ({"model": "unet", "growth": 32}, "'growth' was unexpected"),
        ({"model": "rdiunet", "involution_kernel": 2}, "should not be valid"),
        ({"model": "unet", "norm": "group"}, "'group' is not one of"),
        ({"convs_per_level": 2}, "'model' is a required property"),
    ],
)
def test_the_schema_refuses_a_variant_of_an_unknown_base_or_with_an_unknown_option(entry, message):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["models"]["variant"] = entry
    with pytest.raises(WorkflowError, match=message):
        validate(config, SCHEMA)


def test_the_schema_refuses_an_unsafe_label_and_an_unknown_source():
    for section, label, entry in (
        ("models", "../x", {"model": "unet"}),
        ("datasets", "n", {"source": "brain"}),
    ):
        config = yaml.safe_load((REPO / "config.yaml").read_text())
        config[section][label] = entry
        with pytest.raises(WorkflowError):
            validate(config, SCHEMA)


def test_the_textbook_unet_has_31_million_parameters():
    classic = count_parameters(build("unet", convs_per_level=2, norm="none", dropout=0.5))
    assert abs(classic - 31.0e6) < 0.05e6, classic
    assert classic == count_parameters(build("unet", convs_per_level=2, norm="none"))  # dropout adds none
    assert count_parameters(build("rdiunet", involution_kernel=3)) > count_parameters(build("rdiunet"))


def test_the_textbook_unet_drops_out_at_the_end_of_the_contracting_path():
    torch = pytest.importorskip("torch")
    model = build("unet", widths=(8, 16, 32), convs_per_level=2, norm="none", dropout=0.5).train()
    image = torch.rand(1, 1, 32, 32)
    assert not torch.equal(model(image), model(image))  # dropout is active in training
    model.eval()
    assert torch.equal(model(image), model(image))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


# --- one download, several preparations ----------------------------------------------------------------


def test_a_dataset_variant_prepares_the_same_archives_by_its_own_split(synthetic_raw, tmp_path):
    by_subject = prepare("nerve", synthetic_raw["nerve"], tmp_path / "nerve.npz", size=32, workers=1)
    by_image = prepare(
        "nerve", synthetic_raw["nerve"], tmp_path / "nerve_by_image.npz", size=32, workers=1, split_by="image"
    )
    assert by_subject["raw"] == by_image["raw"]  # the same archives, hashed the same
    assert (by_subject["split"]["by"], by_image["split"]["by"]) == ("subject", "image")
    with np.load(tmp_path / "nerve_by_image.npz") as npz:
        splits_of = (
            pd.DataFrame({"group": npz["groups"], "split": npz["split"]}).groupby("group").split.nunique()
        )
        assert (splits_of > 1).any()  # frames of one subject straddle splits
        assert all(
            i.split("_")[0] == g for i, g in zip(npz["ids"], npz["groups"], strict=True)
        )  # groups kept
    result = run_cli(
        "prepare",
        "--workers",
        "1",
        "--dataset",
        "nerve",
        "--raw",
        synthetic_raw["nerve"],
        "--out",
        tmp_path / "x.npz",
    )
    assert result.returncode == 0, result.stderr  # --split-by defaults to subject


# --- claims under every reading, and the robustness matrix ---------------------------------------------


def handmade_study(seeds: int = 5) -> Study:
    config = {
        "datasets": {"d1": {"threshold": 0.5}, "d2": {"threshold": 0.5}},
        "models": {"unet": {}, "unet_classic": {"model": "unet", "norm": "none"}, "rdiunet": {}},
        "compare": {"proposed": ["rdiunet"], "baselines": ["unet", "unet_classic"]},
        "seeds": list(range(seeds)),
    }
    return Study.from_config(config)


def handmade_collection(study: Study, dice: dict[str, float]) -> Collection:
    """Valid runs whose per-image Dice is `dice[model]` plus noise; every other number equal."""
    rng = np.random.default_rng(0)
    runs, per_image, benches = [], [], []
    for dataset, model in study.plan.pairs:
        for seed in study.seeds:
            scores = np.clip(dice[model] + rng.normal(0, 0.01, 30), 0, 1)
            runs.append(
                {"dataset": dataset, "model": model, "seed": seed, "dice": scores.mean(), "epochs": 10}
                | {"stability": 1, "convergence": 5}
            )
            per_image += [
                {"dataset": dataset, "model": model, "seed": seed, "id": f"i{k}", "group": f"i{k}", "dice": s}
                for k, s in enumerate(scores)
            ]
        benches.append({"dataset": dataset, "model": model, "params": 10, "ms_median": 1.0, "device": "cpu"})
    return Collection(pd.DataFrame(runs), pd.DataFrame(), pd.DataFrame(per_image), pd.DataFrame(benches))


def robustness(dice: dict[str, float]) -> pd.DataFrame:
    study = handmade_study()
    collection = handmade_collection(study, dice)
    return robustness_frame(evaluate_claims(collection, study), study.plan).set_index("reading")


def test_a_reading_that_flips_a_claim_is_named_in_the_summary():
    # rdiunet beats the parameter-matched unet but not the textbook one.
    frame = robustness({"unet": 0.80, "unet_classic": 0.90, "rdiunet": 0.85})
    assert frame.loc["headline", "accuracy: d1"] == "reproduced"
    assert frame.loc["baseline = unet_classic", "accuracy: d1"] == "not reproduced"
    assert frame.loc["summary", "accuracy: d1"] == "depends on: baseline = unet_classic"
    assert frame.loc["summary", "stability"] == "robust (not reproduced)"  # equal drops both ways


def test_a_claim_that_holds_under_every_reading_is_robust():
    frame = robustness({"unet": 0.70, "unet_classic": 0.72, "rdiunet": 0.90})
    assert frame.loc["summary", "accuracy: d1"] == "robust (reproduced)"
    assert frame.loc["summary", "accuracy: d2"] == "robust (reproduced)"


# --- the cluster bootstrap ----------------------------------------------------------------------------


def test_resampling_subjects_widens_the_interval_when_frames_are_correlated():
    rng = np.random.default_rng(1)
    subjects = np.repeat(np.arange(12), 20)  # 12 subjects, 20 near-duplicate frames each
    differences = rng.normal(0.02, 0.05, 12)[subjects] + rng.normal(0, 0.005, len(subjects))
    frame_low, frame_high = bootstrap_ci(differences)
    subject_low, subject_high = bootstrap_ci(differences, groups=subjects.tolist())
    assert subject_high - subject_low > 2 * (frame_high - frame_low)
    assert subject_low < differences.mean() < subject_high
    # Without repeated groups the cluster bootstrap is the frame bootstrap.
    assert bootstrap_ci(differences, groups=list(range(len(differences)))) == (frame_low, frame_high)


# --- the paper's own consistency ---------------------------------------------------------------------


def test_the_feasible_iou_range_at_its_boundaries():
    dice = 0.8
    low = dice / (2 - dice)  # 0.6667: every image at Dice 0.8
    for iou, per_image, pooled in (
        (low, True, True),
        (dice, True, False),  # images of Dice 0 and 1 only
        (0.665, False, False),  # below Jensen's bound by more than the rounding allows
        (0.666, True, True),  # below the bound, but within the third decimal's rounding
        (0.8009, True, False),  # above the mean Dice, within the rounding of both values
        (0.802, False, False),  # above the mean Dice: impossible
    ):
        assert paper_check.feasible_per_image(dice, iou) is per_image, iou
        assert paper_check.feasible_pooled(dice, iou) is pooled, iou


def test_the_papers_jsrt_rdiunet_cell_cannot_come_from_one_set_of_masks():
    checks = paper_check.paper_check().set_index(["dataset", "model"])
    assert list(checks.columns) == [
        "dice",
        "iou",
        "iou_min_per_image",
        "iou_max_per_image",
        "iou_pooled",
        "consistent",
    ]
    assert not checks.loc[("jsrt", "rdiunet")].consistent  # 0.935 < 0.972 / 1.028 = 0.9455
    assert checks.drop(("jsrt", "rdiunet")).consistent.all()
    assert checks.loc[("jsrt", "rdiunet")].iou_min_per_image == pytest.approx(0.972 / 1.028)


def test_too_few_subjects_give_no_interval_and_no_verdict():
    from rdiunet.report.claims import accuracy

    runs, per_image = [], []
    for seed in range(5):
        for model, shift in (("unet", 0.0), ("rdiunet", 0.05)):
            runs.append({"dataset": "d", "model": model, "seed": seed, "dice": 0.8 + shift})
            per_image += [
                {
                    "dataset": "d",
                    "model": model,
                    "seed": seed,
                    "id": f"s{k // 10}_{k}",
                    "group": f"s{k // 10}",
                }
                | {"dice": 0.8 + shift + 0.001 * k}
                for k in range(30)  # 3 subjects of 10 frames
            ]
    verdict, evidence = accuracy("d", pd.DataFrame(runs), pd.DataFrame(per_image), "rdiunet", "unet")
    assert verdict == "inconclusive"
    assert (
        "no interval from fewer than 5 resampling units (subjects (3))" in evidence and "nan" not in evidence
    )
