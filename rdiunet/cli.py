"""The `rdiunet` command: one verb per pipeline step; every Snakemake rule calls one of them."""

import argparse
import json
import sys

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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="rdiunet", description=__doc__)
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")

    info = verbs.add_parser("info", help="parameters and FLOPs of every registered model")
    info.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    info.set_defaults(run=cmd_info)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as error:
        print(f"rdiunet: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
