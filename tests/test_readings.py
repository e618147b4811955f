"""Readings: variants resolve to labels with bases and options, the claims are judged under every
reading, the robustness matrix says which claims depend on which reading, the bootstrap resamples
subjects where frames are correlated, and the paper's own numbers are checked for consistency."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, run_cli
from snakemake.utils import validate
from snakemake_interface_common.exceptions import WorkflowError

from rdiunet import paper
from rdiunet.bench import count_parameters
from rdiunet.data.prepare import prepare
from rdiunet.models import build
from rdiunet.readings import PROTOCOLS, WORKFLOW_KEYS, ConfigError, resolve, resolve_models
from rdiunet.report import paper_check
from rdiunet.report.claims import evaluate_claims
from rdiunet.report.collect import Collection, Study, mean_speeds
from rdiunet.report.robustness import robustness_frame

SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def paper_config() -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(config, SCHEMA)
    return config


# --- variants ------------------------------------------------------------------------------------------


def test_the_paper_run_resolves_to_sixteen_readings_and_nineteen_runs_per_seed():
    plan = resolve(paper_config(), WORKFLOW_KEYS)
    assert [r.name for r in plan.readings] == [
        "headline",
        "proposed = rdiunet_k3",
        "baseline = unet_classic",
        "baseline = monai_unet",
        "nerve = nerve_by_image",
        "nerve = nerve_cv",
        # Readings the same runs answer:
        "curve = val_dice_pooled",
        "curve = val_soft_dice",
        "curve = train_soft_dice",
        "checkpoint = best_loss",
        "checkpoint = last",
        "precision = fp32",
        "precision = bf16",
        "protocol = graphed_b1",
        "protocol = best_batch",
        "protocol = end_to_end",
    ]
    curve = plan.readings[7]
    assert (curve.curve, curve.checkpoint, curve.precision, curve.protocol) == (
        "val_soft_dice",
        "best_dice",
        "tf32",
        "eager_b1",
    )
    headline = plan.headline
    assert (headline.proposed, headline.baseline, headline.datasets) == (
        "rdiunet",
        "unet",
        ("nerve", "jsrt", "isic"),
    )
    assert plan.readings[4].datasets == ("nerve_by_image", "jsrt", "isic")
    assert plan.readings[4].stands_for["nerve_by_image"] == "nerve"
    assert plan.readings[5].datasets == ("nerve_cv", "jsrt", "isic")
    assert plan.datasets["nerve_cv"]["folds"] == 5 and plan.datasets["nerve_cv"]["size"] == 128  # inherited
    # One factor at a time: no unet_classic on nerve_by_image, no rdiunet_k3 against unet_classic.
    assert len(plan.pairs) == 19
    # The field's standard baseline: MONAI's U-Net, against the headline proposed model only.
    assert plan.base("monai_unet") == "monai_unet"
    assert [m for d, m in plan.pairs if m == "monai_unet"] == ["monai_unet"] * 3
    assert ("nerve_by_image", "unet_classic") not in plan.pairs
    assert plan.models_of("nerve_by_image") == plan.models_of("nerve_cv") == ["unet", "rdiunet"]


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
        ({"model": "vnet"}, "models.variant: unknown model 'vnet'; known models: "),
        ({"model": "unet", "growth": 32}, "models.variant: invalid option for model 'unet'.*'growth'"),
        ({"model": "rdiunet", "involution_kernel": 2}, "models.variant: invalid options .*odd"),
        ({"model": "unet", "norm": "group"}, "models.variant: invalid options .*norm must be one of"),
        ({"model": "unet", "widths": "wide"}, "models.variant: invalid option .*widths='wide'"),
        ({"convs_per_level": 2}, "models.variant: unknown model 'variant'"),
        ({"factory": "no_such_package:build"}, "models.variant: cannot import the model factory"),
    ],
)
def test_a_variant_of_an_unknown_model_or_with_a_wrong_option_is_one_line(entry, message):
    from rdiunet.errors import UserError
    from rdiunet.models import check_models

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["models"]["variant"] = entry
    with pytest.raises(UserError, match=message):
        check_models(resolve_models(config))


def test_the_schema_refuses_a_model_and_a_factory_at_once():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["models"]["variant"] = {"model": "unet", "factory": "pkg.nets:build"}
    with pytest.raises(WorkflowError):
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
        # The paper's sources: the paper's claims (20% faster, its Dice gains) apply.
        "datasets": {"d1": {"source": "nerve", "threshold": 0.5}, "d2": {"source": "jsrt", "threshold": 0.5}},
        "models": {"unet": {}, "unet_classic": {"model": "unet", "norm": "none"}, "rdiunet": {}},
        "compare": {"proposed": ["rdiunet"], "baselines": ["unet", "unet_classic"]},
        "seeds": list(range(seeds)),
    }
    return Study.from_config(config)


def handmade_collection(study: Study, dice: dict[str, float]) -> Collection:
    """Valid runs whose per-image Dice is `dice[model]` plus noise, the same under every
    checkpoint; curves, costs and speeds equal for every model (timed on a GPU)."""
    rng = np.random.default_rng(0)
    runs, per_image, histories, benches, timings = [], [], [], [], []
    for dataset, model in study.plan.pairs:
        for seed in study.seeds:
            scores = np.clip(dice[model] + rng.normal(0, 0.01, 30), 0, 1)
            labels = {"dataset": dataset, "model": model, "seed": seed}
            for checkpoint in ("best_dice", "best_loss", "last"):
                runs.append(labels | {"checkpoint": checkpoint, "dice": scores.mean(), "epochs": 3})
                per_image += [
                    labels | {"checkpoint": checkpoint, "id": f"i{k}", "group": f"i{k}", "dice": s}
                    for k, s in enumerate(scores)
                ]
            curve = [0.3, 0.6, 0.55]  # one drop; above 0.5 from epoch 2
            histories += [
                labels
                | {"epoch": e + 1}
                | {c: v for c in ("val_dice", "val_dice_pooled", "val_soft_dice", "train_soft_dice")}
                for e, v in enumerate(curve)
            ]
        benches.append({"dataset": dataset, "model": model, "params": 10, "device": "GPU"})
        timings += [
            {"dataset": dataset, "model": model, "session": session, "precision": precision, "protocol": p}
            | {"ms": 1.0 + 0.01 * session, "reason": None}
            for precision, protocols in (("tf32", PROTOCOLS), ("fp32", ["eager_b1"]), ("bf16", ["eager_b1"]))
            for p in protocols
            for session in range(3)
        ]
    timing_frame = pd.DataFrame(timings)
    return Collection(
        pd.DataFrame(runs),
        pd.DataFrame(histories),
        pd.DataFrame(per_image),
        pd.DataFrame(benches),
        mean_speeds(timing_frame),
        timing_frame,
        {dataset: ("cuda", "Test GPU") for dataset in study.datasets},
    )


def robustness(dice: dict[str, float]) -> pd.DataFrame:
    study = handmade_study()
    collection = handmade_collection(study, dice)
    return robustness_frame(evaluate_claims(collection, study), study.plan).set_index("reading")


def test_a_reading_that_flips_a_claim_is_named_in_the_summary():
    # rdiunet beats the parameter-matched unet but not the textbook one.
    frame = robustness({"unet": 0.80, "unet_classic": 0.90, "rdiunet": 0.85})
    assert frame.loc["headline", "accuracy: d1"] == "reproduced"
    assert frame.loc["baseline = unet_classic", "accuracy: d1"] == "contradicted"
    assert frame.loc["summary", "accuracy: d1"] == "depends on: baseline = unet_classic"
    # Equal drops both ways, in every run: no difference, a verdict that holds under every reading.
    assert frame.loc["headline", "stability: d1"] == "equivalent"
    assert frame.loc["summary", "stability: d1"] == "robust (equivalent)"
    # Equal speed: not 20% faster, on every reading that can change it.
    assert frame.loc["summary", "speed: d2"] == "robust (contradicted)"


def test_a_claim_that_holds_under_every_reading_is_robust_and_other_factors_are_the_same_runs():
    frame = robustness({"unet": 0.70, "unet_classic": 0.72, "rdiunet": 0.90})
    assert frame.loc["summary", "accuracy: d1"] == "robust (reproduced)"
    assert frame.loc["summary", "accuracy: d2"] == "robust (reproduced)"
    # A Dice curve cannot change accuracy or speed; a checkpoint cannot change speed.
    assert frame.loc["curve = val_soft_dice", "accuracy: d1"] == "same runs"
    assert frame.loc["checkpoint = last", "speed: d1"] == "same runs"
    assert frame.loc["checkpoint = last", "accuracy: d1"] == "reproduced"
    assert frame.loc["precision = fp32", "stability: d2"] == "same runs"


def test_an_inconclusive_headline_is_never_robust():
    frame = robustness({"unet": 0.80, "unet_classic": 0.80, "rdiunet": 0.80})
    headline = frame.loc["headline", "accuracy: d1"]
    if headline == "inconclusive":
        assert frame.loc["summary", "accuracy: d1"] == "not settled (inconclusive)"
    else:  # a tight interval around 0 is a decisive "no difference"
        assert headline == "equivalent"


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

    per_image = [
        {"dataset": "d", "model": model, "seed": seed, "id": f"s{k // 10}_{k}", "group": f"s{k // 10}"}
        | {"dice": 0.8 + shift + 0.001 * k}
        for seed in range(5)
        for model, shift in (("unet", 0.0), ("rdiunet", 0.05))
        for k in range(20)  # 2 subjects of 10 frames
    ]
    verdict = accuracy(
        handmade_study(), "d1", pd.DataFrame(per_image).assign(dataset="d1"), "rdiunet", "unet", "x"
    )
    assert verdict.verdict == "inconclusive" and verdict.judgement.reason == "too few subjects"
    assert "nan" not in verdict.evidence and "2 subjects" in verdict.evidence


# --- the readings the same runs answer --------------------------------------------------------------


def test_table2_counts_on_the_configured_curve(tmp_path):
    from handmade import CONFIG, write_tree

    write_tree(tmp_path)
    frames = {}
    for curve in ("val_dice", "val_soft_dice"):
        out = tmp_path / curve
        result = run_cli(
            *("tables", "--results", tmp_path / "results", "--data", tmp_path / "none", "--out", out),
            *("--config-json", json.dumps({**CONFIG, "table2_curve": curve})),
        )
        assert result.returncode == 0, result.stderr
        frames[curve] = pd.read_csv(out / "table2.csv").set_index(["dataset", "model"])
    # jsrt/unet seed 0: hard Dice 0.5, 0.92, 0.85, 0.91 passes 0.9 at epoch 2; its soft Dice never does.
    assert frames["val_dice"].loc[("jsrt", "unet")].convergence_per_seed == "2;none"
    assert frames["val_soft_dice"].loc[("jsrt", "unet")].convergence_per_seed == "none;none"
    assert frames["val_soft_dice"].loc[("jsrt", "unet")].curve == "val_soft_dice"
    # One drop in 4 epochs on seed 0, none on seed 1: 25 and 0 drops per 100 epochs.
    assert frames["val_dice"].loc[("jsrt", "unet")].drops_per_100_mean == pytest.approx(12.5)


def test_every_reading_of_the_same_runs_is_a_row_and_unmeasurable_ones_say_so(tmp_path):
    from handmade import CONFIG, write_tree

    write_tree(tmp_path)
    out = tmp_path / "reports" / "report.html"
    result = run_cli(
        *(
            "report",
            "--results",
            tmp_path / "results",
            "--data",
            tmp_path / "none",
            "--figures",
            tmp_path / "none",
        ),
        *("--timing", tmp_path / "none", "--config-json", json.dumps(CONFIG), "--out", out),
    )
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out.with_name("robustness.csv")).set_index("reading")
    assert (
        len(frame) == 1 + 3 + 2 + 2 + 3 + 1
    )  # headline, curves, checkpoints, precisions, protocols, summary
    assert frame.loc["protocol = graphed_b1", "speed: jsrt"] == "not measured"
    assert frame.loc["precision = fp32", "speed: jsrt"] == "not measured"
    # 33% faster at every protocol measured, but on a CPU: no verdict on the paper's GPU claim.
    assert frame.loc["protocol = best_batch", "speed: jsrt"] == "not comparable"
    assert frame.loc["summary", "speed: jsrt"] == "not settled (not comparable)"
    assert frame.synthetic.all()
    claims = pd.read_csv(out.with_name("claims.csv"))
    assert set(claims.reading) == set(frame.index) - {"summary"}
    assert claims.synthetic.all() and claims[claims.primary].reading.eq("headline").all()
    speed = claims[(claims.reading == "headline") & (claims.claim == "speed")].iloc[0]
    assert speed.reported_as == "not comparable" and speed.low < speed.effect < speed.high
    page = out.read_text()
    assert "Speed protocols: growth from 128² to 256²" in page
    growth = pd.DataFrame(growth_rows(tmp_path, CONFIG)).set_index(["protocol", "model"])
    runs = collected(tmp_path, CONFIG).runs.set_index(["dataset", "model", "seed", "checkpoint"])
    assert runs.loc[("jsrt", "unet", 0, "best_loss")].dice == pytest.approx(0.90 - 0.02)
    assert growth.loc[("eager_b1", "rdiunet")].growth == pytest.approx(3.2)  # the tree grows 3.2x
    assert bool(growth.loc[("eager_b1", "rdiunet")].resembles_paper)
    assert growth.loc[("graphed_b1", "rdiunet")].note == "not measured on this device"


def collected(root, config):
    from rdiunet.report.collect import collect

    return collect(root / "results", Study.from_config(config))


def growth_rows(root, config):
    from rdiunet.report.scaling import growth_table

    return growth_table(collected(root, config), Study.from_config(config)).to_dict("records")


def test_a_study_of_other_data_speaks_of_its_own_models_and_data():
    config = {
        "datasets": {
            "mine": {"source": "folder", "images": "x/*.png", "masks": "x/{name}", "threshold": 0.5}
        },
        "models": {"unet": {}, "rdiunet": {}},
        "seeds": list(range(5)),
    }
    study = Study.from_config(config)
    assert not study.is_papers_study
    assert study.report_title == "rdiunet against unet on mine"
    assert Study.from_config({**config, "title": "My study"}).report_title == "My study"
    found = evaluate_claims(handmade_collection(study, {"unet": 0.80, "rdiunet": 0.85}), study)
    said = {v.claim: v for v in found if v.primary}
    assert said["accuracy"].statement == "rdiunet is more accurate than unet (Dice) on mine"
    assert said["accuracy"].verdict == "reproduced" and said["accuracy"].judgement.claimed is None
    # Not the paper's thresholds: faster and fewer at all. Equal speeds and sizes are neither.
    assert said["speed"].judgement.claimed == 0 and said["speed"].verdict == "inconclusive"
    assert said["parameters"].judgement.claimed == 0 and said["parameters"].verdict == "contradicted"
    assert said["parameters"].statement == "rdiunet has fewer parameters than unet"
    assert not any("RDIU-Net" in v.statement or "62%" in v.statement for v in found)
    # The paper's own study keeps the paper's words.
    paper_said = {
        v.claim: v.statement
        for v in evaluate_claims(
            handmade_collection(handmade_study(), {"unet": 0.80, "unet_classic": 0.9, "rdiunet": 0.85}),
            handmade_study(),
        )
        if v.primary
    }
    assert paper_said["parameters"] == paper.CLAIMS["parameters"]
