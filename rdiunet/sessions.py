"""Speed as a comparison: several models timed in interleaved sessions (`rdiunet speed`).

One benchmark per model, run at different times (or on different cards), measures each model
under its own conditions: clocks, temperature and other work on the machine drift between them,
and a single number per model has no uncertainty. Here every model of a dataset is loaded in one
process on one claimed card, and the timing runs in `sessions` rounds; in each round every model
is timed by every protocol (and, on a GPU, the headline protocol in every precision reading), in
an order that alternates between rounds so that no model always goes first. Each round gives one
ms-per-image per model and reading; rdiunet.verdicts.judge_speed pairs the models round by round
and puts an interval on the speed-up.

speed.json holds one row per (model, session, precision, protocol) with its ms per image (or why it
was not measured), the device and the settings.
"""

from dataclasses import replace
from pathlib import Path

import torch

from rdiunet.bench import count_parameters, run_protocol
from rdiunet.fileio import write_json
from rdiunet.gpu import driver_version
from rdiunet.models import build, check_fits
from rdiunet.provenance import environment, now
from rdiunet.readings import PROTOCOLS
from rdiunet.runtime import Runtime, make_runtime, set_precision
from rdiunet.settings import BenchSettings
from rdiunet.speed import not_measured

# best_batch's throughput window in a session: long enough for a stable rate, short enough to
# repeat; its energy is not used (the bench's own 10 s windows measure that).
SESSION_WINDOW_S = 0.5


def one_session(model, settings: BenchSettings, runtime: Runtime, batch_sizes) -> list[dict]:
    """Every protocol once at the headline precision, and the headline protocol in the others."""
    rows = [
        (
            runtime.precision,
            name,
            run_protocol(name, model, settings.size, runtime, settings, batch_sizes, SESSION_WINDOW_S),
        )
        for name in PROTOCOLS
    ]
    for precision in settings.precisions:
        if precision == runtime.precision:
            continue
        if not runtime.cuda:
            reason = (
                f"not measured on this device ({runtime.device.type}): TF32 and bfloat16 are GPU readings"
            )
            rows.append((precision, settings.protocol, not_measured(reason)))
            continue
        set_precision(precision)
        try:
            other = replace(runtime, precision=precision)
            result = run_protocol(
                settings.protocol, model, settings.size, other, settings, batch_sizes, SESSION_WINDOW_S
            )
        finally:
            set_precision(runtime.precision)
        rows.append((precision, settings.protocol, result))
    return [
        {
            "precision": precision,
            "protocol": protocol,
            "ms": result["ms_per_image"] if result["measured"] else None,
            "reason": None if result["measured"] else result["reason"],
        }
        for precision, protocol, result in rows
    ]


def compare_speed(models: dict[str, dict], settings: BenchSettings) -> dict:
    """Time `models` (label -> {"model": registered name, **options}) in interleaved sessions with
    the bench `settings` (their model fields are ignored); the card is held for the comparison alone."""
    settings.check()
    for label, entry in models.items():
        check_fits(entry.get("model", label), settings.size, {k: v for k, v in entry.items() if k != "model"})
    with make_runtime(
        settings.device,
        precision=settings.precision,
        channels_last=settings.channels_last,
        threads=settings.threads,
        role="bench",
    ) as runtime:
        batch_sizes = settings.batch_sizes or ((1, 8, 64, 256) if runtime.cuda else (1, 8))
        built = {}
        for label, entry in models.items():
            options = {k: v for k, v in entry.items() if k != "model"}
            torch.manual_seed(0)
            built[label] = runtime.prepare_model(build(entry.get("model", label), **options)).eval()
        rows = []
        labels = list(built)
        for session in range(settings.sessions):
            order = labels if session % 2 == 0 else labels[::-1]
            for label in order:
                for row in one_session(built[label], settings, runtime, batch_sizes):
                    rows.append({"model": label, "session": session, **row})
        return {
            "size": settings.size,
            "sessions": settings.sessions,
            "runs": settings.runs,
            "precision": runtime.precision,
            "protocol": settings.protocol,
            "device_type": runtime.device.type,
            "models": {
                label: {**models[label], "params": count_parameters(model)} for label, model in built.items()
            },
            "timings": rows,
            "settings": runtime.settings(),
            "environment": {
                **environment(runtime.device),
                "driver": driver_version() if runtime.cuda else None,
            },
            "created": now(),
        }


def speed_command(models: dict[str, dict], settings: BenchSettings, out: Path) -> None:
    """`rdiunet speed`: write speed.json and print each model's mean ms per image (headline)."""
    report = compare_speed(models, settings)
    write_json(out, report)
    for label in models:
        values = [
            r["ms"]
            for r in report["timings"]
            if r["model"] == label
            and r["protocol"] == settings.protocol
            and r["precision"] == report["precision"]
            and r["ms"] is not None
        ]
        mean = sum(values) / len(values) if values else float("nan")
        device = report["environment"]["device_name"]
        print(
            f"{label} @ {settings.size}px: {mean:.2f} ms per image ({settings.protocol}, "
            f"{report['precision']}, mean of {len(values)} sessions on {device})"
        )
