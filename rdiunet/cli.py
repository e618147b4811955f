"""The `rdiunet` command: one verb per pipeline step; every Snakemake rule calls one of them.

This module only parses arguments; each verb's work, setup included, lives with the code it runs.
"""

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from rdiunet.data import sources
from rdiunet.errors import UserError, file_fault
from rdiunet.readings import CHECKPOINTS, PROTOCOLS
from rdiunet.settings import PRECISION_CHOICES, BenchSettings, TrainSettings


def parse_value(text: str):
    """A model option's value: int, float, true/false, or a comma-separated tuple of those."""
    if "," in text:
        return tuple(parse_value(part) for part in text.split(",") if part)
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--model-opt takes key=value, got '{pair}'")
        options[key] = parse_value(value)
    return options


def parse_batch_sizes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--batch-sizes takes positive integers like 1,8,64,256; got '{text}'") from None


def settings_from(cls, args: argparse.Namespace, **parsed):
    """A settings dataclass from the parsed arguments of the same names (plus `parsed` values)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **parsed})


def cmd_info(args: argparse.Namespace) -> None:
    from rdiunet.bench import model_costs

    rows = model_costs()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'model':<18} {'params':>12} {'GFLOPs@128':>11} {'GFLOPs@256':>11}")
    for row in rows:
        if "needs" in row:
            print(f"{row['name']:<18} needs {row['needs']}: {row['install']}")
            continue
        print(f"{row['name']:<18} {row['params']:>12,} {row['gflops_128']:>11.2f} {row['gflops_256']:>11.2f}")


def cmd_download(args: argparse.Namespace) -> None:
    from rdiunet.data.raw import download

    download(
        args.dataset, Path(args.out), tuple(args.mirror), args.official_splits, args.allow_checksum_mismatch
    )


def cmd_synth(args: argparse.Namespace) -> None:
    from rdiunet.data.raw import synthesize

    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {args.seed}")
    synthesize(args.dataset, Path(args.out), args.n, args.seed, args.official_splits)


def cmd_prepare(args: argparse.Namespace) -> None:
    from rdiunet.data.folder import FOLDER, FolderSpec
    from rdiunet.data.prepare import parse_fractions, prepare_command

    folder = None
    if args.dataset == FOLDER:
        if not (args.images and args.masks):
            raise UserError("--dataset folder needs --images GLOB and --masks PATTERN (docs/custom.md)")
        folder = FolderSpec(args.images, args.masks, args.subject)
    elif args.raw is None or args.images or args.masks or args.subject:
        raise UserError(
            f"--dataset {args.dataset} reads --raw FOLDER; --images, --masks and --subject are for folder"
        )
    prepare_command(
        args.dataset,
        Path(args.raw or "."),
        Path(args.out),
        size=args.size,
        fractions=parse_fractions(args.split),
        seed=args.seed,
        keep_empty=args.keep_empty,
        workers=args.workers,
        split_by=args.split_by,
        folds=args.folds,
        folder=folder,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from rdiunet.train import train_command

    settings = settings_from(TrainSettings, args, model_options=parse_options(args.model_opt))
    train_command(settings, Path(args.out), command=["rdiunet", *sys.argv[1:]])


def cmd_evaluate(args: argparse.Namespace) -> None:
    from rdiunet.evaluation import evaluate
    from rdiunet.runfolder import RunFolder

    metrics = evaluate(RunFolder(Path(args.run)), args.device)
    print(f"{args.run}: test dice {metrics['dice']:.4f}, iou {metrics['iou']:.4f}")


def cmd_bench(args: argparse.Namespace) -> None:
    from rdiunet.bench import bench_command

    settings = settings_from(
        BenchSettings,
        args,
        batch_sizes=parse_batch_sizes(args.batch_sizes),
        precisions=tuple(p for p in args.precisions.split(",") if p),
        model_options=parse_options(args.model_opt),
    )
    bench_command(settings, Path(args.out))


def cmd_speed(args: argparse.Namespace) -> None:
    from rdiunet.sessions import speed_command

    models = {name: {"model": name} for name in args.model}
    if args.models_json:
        try:
            labelled = json.loads(args.models_json)
        except json.JSONDecodeError as error:
            raise UserError(f"--models-json is not valid JSON ({error})") from None
        if not isinstance(labelled, dict) or not all(isinstance(v, dict) for v in labelled.values()):
            raise UserError('--models-json takes {"label": {"model": "name", "option": value}, ...}')
        models |= labelled
    if len(models) < 1:
        raise UserError("name the models to time: --model NAME (repeatable) or --models-json")
    first = next(iter(models.values()))
    settings = settings_from(
        BenchSettings,
        args,
        model=first.get("model", next(iter(models))),
        batch_sizes=parse_batch_sizes(args.batch_sizes),
        precisions=tuple(p for p in args.precisions.split(",") if p),
    )
    speed_command(models, settings, Path(args.out))


def cmd_judge(args: argparse.Namespace) -> None:
    from rdiunet.verdicts import judge_command

    judge_command(Path(args.scores), args.proposed, args.baseline, args.margin, args.claimed, args.json)


def cmd_calibrate(args: argparse.Namespace) -> None:
    from rdiunet.calibration import calibrate_command

    if args.studies < 10:
        raise UserError(f"--studies must be at least 10, got {args.studies}")
    designs = {}
    for option, minimum in (("seeds", 2), ("subjects", 3)):
        text = getattr(args, option)
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            values = ()
        if not values or min(values) < minimum:
            raise UserError(f"--{option} takes integers of at least {minimum} like 5,20; got '{text}'")
        designs[option] = values
    calibrate_command(Path(args.out), args.studies, args.seed, **designs)


def cmd_tables(args: argparse.Namespace) -> None:
    from rdiunet.report.tables import tables_command

    tables_command(Path(args.results), Path(args.data), load_config(args), Path(args.out))


def cmd_figures(args: argparse.Namespace) -> None:
    from rdiunet.report.figures import figures_command

    figures_command(Path(args.results), Path(args.data), load_config(args), Path(args.out))


def cmd_report(args: argparse.Namespace) -> None:
    from rdiunet.report.html import report_command

    report_command(
        Path(args.results),
        Path(args.data),
        Path(args.figures),
        Path(args.timing),
        load_config(args),
        Path(args.out),
    )


def load_config(args: argparse.Namespace) -> dict:
    """The workflow configuration behind a results tree: --config-json TEXT or --config FILE,
    checked against the workflow's schema (rdiunet.configuration) with its defaults filled in."""
    from rdiunet.configuration import check_config, read_config

    if args.config_json:
        try:
            config = json.loads(args.config_json)
        except json.JSONDecodeError as error:
            raise UserError(f"--config-json is not valid JSON ({error})") from None
        return check_config(config, "--config-json")
    if args.config:
        return read_config(Path(args.config))
    raise UserError("give the workflow configuration: --config config.yaml or --config-json '{...}'")


def add_study_arguments(command: argparse.ArgumentParser, out: str, out_help: str) -> None:
    command.add_argument("--results", default="results", help="results tree written by the workflow")
    command.add_argument(
        "--data", default="data/prepared", help="folder of the prepared .npz/.json files the runs must match"
    )
    command.add_argument("--config", default=None, help="the workflow's config.yaml")
    command.add_argument("--config-json", default=None, help="the resolved configuration as JSON")
    command.add_argument("--out", default=out, help=out_help)


def add_runtime_arguments(command: argparse.ArgumentParser, settings) -> None:
    """Where and how a model runs: the arguments train and bench share (defaults from `settings`)."""
    command.add_argument("--device", default=settings.device, help="auto, cpu, cuda or cuda:N")
    command.add_argument("--compile", action="store_true", help="torch.compile the model")
    command.add_argument(
        "--threads", type=int, default=settings.threads, help="CPU threads (default: torch's)"
    )
    command.add_argument(
        "--model-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, e.g. widths=8,16,32,64",
    )


def add_download_parser(verbs) -> None:
    download = verbs.add_parser("download", help="fetch a dataset's archives (verified, resumable)")
    download.add_argument("--dataset", required=True, choices=sources.names())
    download.add_argument("--out", required=True, help="folder for the archives, e.g. data/raw/isic")
    download.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="URL",
        help="base URL tried before the official hosts (repeatable), e.g. an institutional mirror",
    )
    download.add_argument(
        "--official-splits", action="store_true", help="also fetch the official validation and test sets"
    )
    download.add_argument(
        "--allow-checksum-mismatch",
        action="store_true",
        help="accept archives whose sha256 differs from the expected one (a loud warning, not an error)",
    )
    download.set_defaults(handler=cmd_download)


def add_synth_parser(verbs) -> None:
    synth = verbs.add_parser("synth", help="write a synthetic stand-in in the source's raw format")
    synth.add_argument("--dataset", required=True, choices=sources.names())
    synth.add_argument("--out", required=True, help="folder for the archives, e.g. data/raw/isic")
    synth.add_argument("--n", type=int, default=None, help="number of images (default per dataset)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--official-splits", action="store_true", help="also write validation and test sets")
    synth.set_defaults(handler=cmd_synth)


def add_prepare_parser(verbs) -> None:
    prepare = verbs.add_parser("prepare", help="raw archives -> images/masks/splits in one .npz")
    prepare.add_argument("--dataset", required=True, choices=[*sources.names(), "folder"])
    prepare.add_argument(
        "--raw", default=None, help="folder holding the downloaded or synthetic archives (not for folder)"
    )
    prepare.add_argument("--images", default=None, help="folder: the images, a glob like /data/mine/*.png")
    prepare.add_argument(
        "--masks", default=None, help="folder: each image's mask, with {name} or {stem}: /data/masks/{name}"
    )
    prepare.add_argument(
        "--subject", default=None, help="folder: a regex whose first group in a file name is its subject"
    )
    prepare.add_argument("--out", required=True, help="output .npz; a .json summary is written beside it")
    prepare.add_argument(
        "--size", type=int, default=None, help="side in pixels (default: the paper's, per dataset)"
    )
    prepare.add_argument(
        "--split",
        default="0.8,0.1,0.1",
        help="train,val,test fractions for the parts a source has no official split for; "
        "split by subject for nerve",
    )
    prepare.add_argument("--seed", type=int, default=0, help="seed of the split")
    prepare.add_argument(
        "--split-by",
        choices=("subject", "image"),
        default="subject",
        help="subject: a subject's images stay in one split (nerve); image: images are split at random",
    )
    prepare.add_argument(
        "--keep-empty",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep images whose mask is empty (default per dataset: dropped for nerve)",
    )
    prepare.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: cores, at most 4)"
    )
    prepare.add_argument(
        "--folds",
        type=int,
        default=None,
        help="subject-wise k-fold cross-validation (k >= 3): seed s tests fold s mod k (docs/data.md)",
    )
    prepare.set_defaults(handler=cmd_prepare)


def add_train_parser(verbs) -> None:
    train = verbs.add_parser("train", help="train one model on one prepared dataset with one seed")
    train.add_argument("--data", required=True, help="prepared .npz")
    train.add_argument("--model", required=True, help="registered model name (rdiunet info lists them)")
    train.add_argument("--seed", type=int, required=True)
    train.add_argument("--out", required=True, help="run folder; rerunning resumes or does nothing")
    train.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    train.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    train.add_argument("--lr", type=float, default=TrainSettings.lr, help="Adam learning rate (paper: 1e-4)")
    train.add_argument(
        "--precision",
        default=TrainSettings.precision,
        choices=PRECISION_CHOICES,
        help="tf32 (float32 weights, TF32 convolutions and matmul), fp32 (no TF32), bf16, fp16; "
        "auto: bf16 on GPUs with native bfloat16, else tf32",
    )
    train.add_argument(
        "--checkpoint",
        default=TrainSettings.checkpoint,
        choices=tuple(CHECKPOINTS),
        help="whose test metrics metrics.json shows first; all three are evaluated and kept",
    )
    train.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    train.add_argument(
        "--no-cudnn-benchmark",
        dest="cudnn_benchmark",
        action="store_false",
        help="skip cuDNN's autotuning of convolutions (quicker start, maybe slower epochs)",
    )
    train.add_argument(
        "--gpu-slots",
        type=int,
        default=TrainSettings.gpu_slots,
        help="training jobs that may share one GPU (default 1: a card per training)",
    )
    add_runtime_arguments(train, TrainSettings)
    train.set_defaults(handler=cmd_train)


def add_timing_arguments(command: argparse.ArgumentParser) -> None:
    """How models are timed: the arguments bench and speed share (defaults from BenchSettings)."""
    command.add_argument("--size", type=int, required=True, help="image side in pixels")
    command.add_argument("--out", required=True, help="output .json")
    command.add_argument("--batch-sizes", default=None, help="default 1,8,64,256 on a GPU, 1,8 on the CPU")
    command.add_argument("--precision", default=BenchSettings.precision, choices=PRECISION_CHOICES)
    command.add_argument(
        "--precisions",
        default=",".join(BenchSettings.precisions),
        help="precision readings measured with --protocol (on a GPU)",
    )
    command.add_argument("--protocol", default=BenchSettings.protocol, choices=tuple(PROTOCOLS))
    command.add_argument("--channels-last", action="store_true")
    command.add_argument(
        "--runs", type=int, default=BenchSettings.runs, help="timed batch-1 runs (at least 200 for Table 1)"
    )
    command.add_argument("--warmup", type=int, default=BenchSettings.warmup)
    add_runtime_arguments(command, BenchSettings)


def add_bench_parser(verbs) -> None:
    bench = verbs.add_parser("bench", help="latency, throughput, FLOPs, memory and energy of a model")
    bench.add_argument("--model", required=True)
    add_timing_arguments(bench)
    bench.set_defaults(handler=cmd_bench)

    speed = verbs.add_parser(
        "speed", help="time several models in interleaved sessions (the speed claim's interval)"
    )
    speed.add_argument(
        "--model", action="append", default=[], help="a registered model with its defaults (repeatable)"
    )
    speed.add_argument(
        "--models-json",
        default=None,
        help='labelled models with options, e.g. \'{"small": {"model": "unet", "widths": [8, 16, 32]}}\'',
    )
    speed.add_argument(
        "--sessions", type=int, default=BenchSettings.sessions, help="interleaved rounds of timing"
    )
    add_timing_arguments(speed)
    speed.set_defaults(handler=cmd_speed)


def add_statistics_parsers(verbs) -> None:
    judge = verbs.add_parser(
        "judge", help="judge 'proposed is more accurate than baseline' from any per-image scores CSV"
    )
    judge.add_argument(
        "scores", help="CSV with columns model, seed, image, subject, dice (one row per test image)"
    )
    judge.add_argument("--proposed", required=True, help="the model claimed to be better")
    judge.add_argument("--baseline", required=True)
    judge.add_argument(
        "--margin", type=float, default=None, help="equivalence margin in Dice (default 0.005)"
    )
    judge.add_argument("--claimed", type=float, default=None, help="the claimed Dice gain (for the power)")
    judge.add_argument("--json", action="store_true", help="print the judgement as JSON")
    judge.set_defaults(handler=cmd_judge)

    calibrate = verbs.add_parser(
        "calibrate", help="the verdict rules' error rates on simulated studies with known truth"
    )
    calibrate.add_argument("--out", required=True, help="output .csv (one row per scenario and rule)")
    calibrate.add_argument("--studies", type=int, default=200, help="simulated studies per scenario")
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--seeds", default="3,5,10,20", help="seeds per model in the simulated designs")
    calibrate.add_argument("--subjects", default="5,20,60", help="test subjects in the simulated designs")
    calibrate.set_defaults(handler=cmd_calibrate)


def add_report_parsers(verbs) -> None:
    tables = verbs.add_parser("tables", help="Table 1 and Table 2 (csv and md) beside the paper's values")
    add_study_arguments(tables, "reports", "output folder")
    tables.set_defaults(handler=cmd_tables)

    figures = verbs.add_parser(
        "figures", help="Dice curves, example predictions, Dice distributions, GPU power"
    )
    add_study_arguments(figures, "reports/figures", "output folder")
    figures.set_defaults(handler=cmd_figures)

    report = verbs.add_parser("report", help="the self-contained HTML report (and claims.csv beside it)")
    add_study_arguments(report, "reports/report.html", "output .html; claims.csv is written beside it")
    report.add_argument("--figures", default="reports/figures", help="folder written by rdiunet figures")
    report.add_argument(
        "--timing", default="logs/timing", help="Snakemake benchmark files (per-rule run times)"
    )
    report.set_defaults(handler=cmd_report)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="rdiunet", description=__doc__.splitlines()[0])
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")

    info = verbs.add_parser("info", help="parameters and FLOPs of every registered model")
    info.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    info.set_defaults(handler=cmd_info)

    add_download_parser(verbs)
    add_synth_parser(verbs)
    add_prepare_parser(verbs)
    add_train_parser(verbs)

    evaluate = verbs.add_parser("evaluate", help="recompute a run's test metrics from its best weights")
    evaluate.add_argument("--run", required=True, help="run folder written by rdiunet train")
    evaluate.add_argument("--device", default=TrainSettings.device)
    evaluate.set_defaults(handler=cmd_evaluate)

    add_bench_parser(verbs)
    add_statistics_parsers(verbs)
    add_report_parsers(verbs)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        try:
            args.handler(args)
        except OSError as error:
            raise file_fault(error) or error from None
    except UserError as error:
        # One line, whatever a library put into the message it wraps.
        print(f"rdiunet: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
