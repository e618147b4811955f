"""The `rdiunet` command: one verb per pipeline step; every Snakemake rule calls one of them."""

import argparse
import json
import sys
from pathlib import Path

from rdiunet.data import sources
from rdiunet.errors import UserError


def cmd_info(args: argparse.Namespace) -> None:
    from rdiunet.bench import count_flops, count_parameters
    from rdiunet.models import build, names

    rows = []
    for name in names():
        model = build(name)
        rows.append(
            {
                "name": name,
                "params": count_parameters(model),
                "gflops_128": count_flops(model, 128) / 1e9,
                "gflops_256": count_flops(model, 256) / 1e9,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'model':<10} {'params':>12} {'GFLOPs@128':>11} {'GFLOPs@256':>11}")
    for row in rows:
        name, params, g128, g256 = row.values()
        print(f"{name:<10} {params:>12,} {g128:>11.2f} {g256:>11.2f}")


def write_manifest(out: Path, paths: list[Path], synthetic: bool) -> None:
    """manifest.json beside the raw archives: what the workflow's prepare step depends on."""
    from rdiunet.fileio import write_json

    files = [{"name": p.name, "bytes": p.stat().st_size} for p in paths]
    write_json(out / "manifest.json", {"files": files, "synthetic": synthetic})
    for path in paths:
        print(path)


def cmd_download(args: argparse.Namespace) -> None:
    source = sources.get(args.dataset)
    out = Path(args.out)
    write_manifest(out, source.download(out, tuple(args.mirror), args.official_splits), synthetic=False)


def cmd_synth(args: argparse.Namespace) -> None:
    from rdiunet.data.synthetic import synthesize

    options = {"official_splits": True} if args.official_splits else {}
    if args.official_splits and args.dataset != "isic":
        raise UserError("--official-splits applies to isic only")
    out = Path(args.out)
    write_manifest(out, synthesize(args.dataset, out, args.n, args.seed, **options), synthetic=True)


def cmd_prepare(args: argparse.Namespace) -> None:
    from rdiunet.data.prepare import parse_fractions, prepare

    summary = prepare(
        args.dataset,
        Path(args.raw),
        Path(args.out),
        size=args.size,
        fractions=parse_fractions(args.split),
        seed=args.seed,
        keep_empty=args.keep_empty,
        workers=args.workers,
    )
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(f"{args.out}: {summary['images']} images ({counts}), {summary['image_size'][0]} px")


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


def cmd_train(args: argparse.Namespace) -> None:
    import torch

    from rdiunet.train import PREEMPTED_EXIT, Preempted, TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)

    config = TrainConfig(
        data=args.data,
        model=args.model,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        amp=args.amp,
        deterministic=args.deterministic,
        compile=args.compile,
        model_options=parse_options(args.model_opt),
    )
    try:
        metrics = train(config, Path(args.out), command=["rdiunet", *sys.argv[1:]])
    except Preempted as stop:
        print(f"rdiunet: {stop}; rerun the same command to resume", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT)
    dice, iou, best = metrics["dice"], metrics["iou"], metrics["best_epoch"]
    print(f"{args.out}: test dice {dice:.4f}, iou {iou:.4f} (best epoch {best})")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from rdiunet.train import evaluate

    metrics = evaluate(Path(args.run), args.device)
    print(f"{args.run}: test dice {metrics['dice']:.4f}, iou {metrics['iou']:.4f}")


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise UserError(f"--batch-sizes takes positive integers like 1,8,64,256; got '{text}'")
    return sizes


def cmd_bench(args: argparse.Namespace) -> None:
    import torch

    from rdiunet.bench import bench_report
    from rdiunet.fileio import write_json
    from rdiunet.gpu import choose_device
    from rdiunet.models import build

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.size < 16 or args.size % 16:
        raise UserError(f"--size must be a positive multiple of 16, got {args.size}")
    if args.runs < 1:
        raise UserError(f"--runs must be positive, got {args.runs}")
    device = choose_device(args.device)
    cuda = device.type == "cuda"
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    if amp is torch.float16 and not cuda:
        raise UserError("--amp fp16 needs a CUDA device; use bf16 or off on the CPU")
    if cuda:
        torch.backends.cudnn.benchmark = True
    default_sizes = "1,8,64,256" if cuda else "1,8"
    options = parse_options(args.model_opt)
    torch.manual_seed(0)
    model = build(args.model, **options)
    report = bench_report(
        args.model,
        options,
        model,
        args.size,
        device,
        amp=amp,
        channels_last=args.channels_last,
        compile=args.compile,
        batch_sizes=parse_batch_sizes(args.batch_sizes or default_sizes),
        runs=args.runs,
        warmup=args.warmup,
    )
    write_json(args.out, report)
    latency = report["latency_ms"]
    print(
        f"{args.model} @ {args.size}px on {report['environment']['device_name']}: batch-1 median "
        f"{latency['median']:.2f} ms (p90 {latency['p90']:.2f}, p99 {latency['p99']:.2f})"
    )


def load_study(args: argparse.Namespace):
    """The workflow configuration behind a results tree: --config-json TEXT or --config FILE."""
    import json

    import yaml

    from rdiunet.report.collect import Study

    if args.config_json:
        try:
            config = json.loads(args.config_json)
        except json.JSONDecodeError as error:
            raise UserError(f"--config-json is not valid JSON ({error})") from None
    elif args.config:
        try:
            config = yaml.safe_load(Path(args.config).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise UserError(f"cannot read --config {args.config} ({error})") from None
    else:
        raise UserError("give the workflow configuration: --config config.yaml or --config-json '{...}'")
    return Study.from_config(config), config


def cmd_tables(args: argparse.Namespace) -> None:
    from rdiunet.report import collect
    from rdiunet.report.tables import table1, table2, write_tables

    study, _ = load_study(args)
    results = Path(args.results)
    runs = collect.runs(results, study)
    frame1 = table1(runs, collect.benches(results, study), study)
    for path in write_tables(frame1, table2(runs, study), Path(args.out), study.synthetic):
        print(path)


def cmd_figures(args: argparse.Namespace) -> None:
    from rdiunet.report import collect
    from rdiunet.report.figures import all_figures

    study, _ = load_study(args)
    results = Path(args.results)
    histories, per_image = collect.histories(results, study), collect.per_image(results, study)
    for path in all_figures(results, Path(args.data), histories, per_image, study, Path(args.out)):
        print(path)


def cmd_report(args: argparse.Namespace) -> None:
    from rdiunet.fileio import atomic_path
    from rdiunet.report import collect, html
    from rdiunet.report.claims import claims_frame, evaluate_claims
    from rdiunet.report.tables import table1, table2

    study, config = load_study(args)
    results, out = Path(args.results), Path(args.out)
    runs, benches = collect.runs(results, study), collect.benches(results, study)
    claims = claims_frame(evaluate_claims(runs, collect.per_image(results, study), benches, study))
    page = html.render(
        claims,
        table1(runs, benches, study),
        table2(runs, study),
        html.figures_by_dataset(Path(args.figures), study),
        config,
        study,
        html.provenance(results, Path(args.data), study),
        html.rule_times(Path(args.timing)),
    )
    html.write_report(page, out)
    with atomic_path(out.with_name("claims.csv")) as tmp:
        claims.to_csv(tmp, index=False)
    print(out)


def add_study_arguments(command: argparse.ArgumentParser, out: str, out_help: str) -> None:
    command.add_argument("--results", default="results", help="results tree written by the workflow")
    command.add_argument("--config", default=None, help="the workflow's config.yaml")
    command.add_argument("--config-json", default=None, help="the resolved configuration as JSON")
    command.add_argument("--out", default=out, help=out_help)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="rdiunet", description=__doc__)
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")

    info = verbs.add_parser("info", help="parameters and FLOPs of every registered model")
    info.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    info.set_defaults(handler=cmd_info)

    datasets = sources.NAMES
    download = verbs.add_parser("download", help="fetch a dataset's archives (verified, resumable)")
    download.add_argument("--dataset", required=True, choices=datasets)
    download.add_argument("--out", required=True, help="folder for the archives, e.g. data/raw/isic")
    download.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="URL",
        help="base URL tried before the official hosts (repeatable), e.g. an institutional mirror",
    )
    download.add_argument(
        "--official-splits",
        action="store_true",
        help="isic: also fetch the official validation and test sets",
    )
    download.set_defaults(handler=cmd_download)

    synth = verbs.add_parser("synth", help="write a synthetic stand-in in the source's raw format")
    synth.add_argument("--dataset", required=True, choices=datasets)
    synth.add_argument("--out", required=True, help="folder for the archives, e.g. data/raw/isic")
    synth.add_argument("--n", type=int, default=None, help="number of images (default per dataset)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--official-splits", action="store_true", help="isic: also write validation and test sets"
    )
    synth.set_defaults(handler=cmd_synth)

    prep = verbs.add_parser("prepare", help="raw archives -> images/masks/splits in one .npz")
    prep.add_argument("--dataset", required=True, choices=datasets)
    prep.add_argument("--raw", required=True, help="folder holding the downloaded or synthetic archives")
    prep.add_argument("--out", required=True, help="output .npz; a .json summary is written beside it")
    prep.add_argument(
        "--size",
        type=int,
        default=None,
        help="side in pixels (paper: nerve 128, jsrt 256, isic 128)",
    )
    prep.add_argument(
        "--split",
        default="0.8,0.1,0.1",
        help="train,val,test fractions for the parts a source has no official split for; "
        "split by subject for nerve",
    )
    prep.add_argument("--seed", type=int, default=0, help="seed of the split")
    prep.add_argument(
        "--keep-empty",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep images whose mask is empty (default: drop for nerve, keep otherwise)",
    )
    prep.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: cores, at most 4)"
    )
    prep.set_defaults(handler=cmd_prepare)

    tr = verbs.add_parser("train", help="train one model on one prepared dataset with one seed")
    tr.add_argument("--data", required=True, help="prepared .npz")
    tr.add_argument("--model", required=True, help="registered model name (rdiunet info lists them)")
    tr.add_argument("--seed", type=int, required=True)
    tr.add_argument("--out", required=True, help="run folder; rerunning resumes or does nothing")
    tr.add_argument("--epochs", type=int, default=50)
    tr.add_argument("--batch-size", type=int, default=16)
    tr.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    tr.add_argument(
        "--amp", default="auto", choices=("auto", "off", "bf16", "fp16"), help="auto: bf16 on GPU"
    )
    tr.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    tr.add_argument("--compile", action="store_true", help="torch.compile the model")
    tr.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    tr.add_argument(
        "--model-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, e.g. widths=8,16,32,64",
    )
    tr.set_defaults(handler=cmd_train)

    ev = verbs.add_parser("evaluate", help="recompute a run's test metrics from its best weights")
    ev.add_argument("--run", required=True, help="run folder written by rdiunet train")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(handler=cmd_evaluate)

    be = verbs.add_parser("bench", help="latency, throughput, FLOPs, memory and energy of a model")
    be.add_argument("--model", required=True)
    be.add_argument("--size", type=int, required=True, help="image side in pixels")
    be.add_argument("--out", required=True, help="output .json")
    be.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    be.add_argument("--batch-sizes", default=None, help="default 1,8,64,256 on GPU, 1,8 on CPU")
    be.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    be.add_argument("--channels-last", action="store_true")
    be.add_argument("--compile", action="store_true", help="torch.compile the model")
    be.add_argument("--runs", type=int, default=200, help="timed batch-1 runs (at least 200 for Table 1)")
    be.add_argument("--warmup", type=int, default=20)
    be.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    be.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE")
    be.set_defaults(handler=cmd_bench)

    ta = verbs.add_parser("tables", help="Table 1 and Table 2 (csv and md) beside the paper's values")
    add_study_arguments(ta, "reports", "output folder")
    ta.set_defaults(handler=cmd_tables)

    fi = verbs.add_parser("figures", help="Dice curves, example predictions, Dice distributions, GPU power")
    add_study_arguments(fi, "reports/figures", "output folder")
    fi.add_argument("--data", default="data/prepared", help="folder of the prepared .npz files")
    fi.set_defaults(handler=cmd_figures)

    re_ = verbs.add_parser("report", help="the self-contained HTML report (and claims.csv beside it)")
    add_study_arguments(re_, "reports/report.html", "output .html; claims.csv is written beside it")
    re_.add_argument("--data", default="data/prepared", help="folder of the prepared .npz/.json files")
    re_.add_argument("--figures", default="reports/figures", help="folder written by rdiunet figures")
    re_.add_argument("--timing", default="logs/timing", help="Snakemake benchmark files (per-rule run times)")
    re_.set_defaults(handler=cmd_report)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.handler(args)
    except UserError as error:
        print(f"rdiunet: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
