"""The findings on the earlier default data set, ``shapes`` (seeds 100-109; claims a-f on ``pairs`` are
``benchmarks/claims.py``), regenerated from runs: train, render and analyze the default recipe on ``shapes``
for each seed through the CLI as shipped, then write the tables from the runs' analysis.json files.

    python benchmarks/findings.py run   --seeds 100-109 --out outputs/fresh   # ~2.5 min per seed, 2 CPU cores
    python benchmarks/findings.py table --seeds 100-109 --out outputs/fresh --write docs/findings.md
    python benchmarks/findings.py publish --seeds 100-109 --out outputs/fresh  # JSON -> docs/findings/
    python benchmarks/findings.py table --seeds 100-109 --out docs/findings    # the same, from the JSON

``run`` trains only seeds without a complete run; render reuses matching images; analyze always
runs again (so the tables follow the current metrics). ``table`` prints the
markdown and, with ``--write``, replaces the marked blocks in each file: ``<!-- findings-summary:start/end -->``
(the claims, k of N) and ``<!-- findings:start/end -->`` (every table: docs/findings.md). The protocol
(seeds, criteria) is fixed in docs/findings.md; ties count as not shown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from featviz.convergence import formed_at
from featviz.reading import intervals_overlap, shallow_first

BLOCKS = {
    "summary": ("<!-- findings-summary:start -->", "<!-- findings-summary:end -->"),
    "full": ("<!-- findings:start -->", "<!-- findings:end -->"),
}


def seeds_arg(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def featviz(*args: str) -> None:
    exe = Path(sys.executable).with_name("featviz")
    subprocess.run([str(exe), *args], check=True)


def run(seeds: list[int], out: Path) -> None:
    for s in seeds:
        path = out / f"seed{s}"
        man = path / "manifest.json"
        done = man.is_file() and json.loads(man.read_text()).get("epochs_done") == 8
        if not done:
            featviz(
                "train",
                "--data",
                "shapes",
                "--seed",
                str(s),
                "--snapshot-every-steps",
                "40",
                "--name",
                f"seed{s}",
                "--out",
                str(out),
                "--force",
            )
        featviz("render", str(path))  # reuses every image whose settings match
        featviz("analyze", str(path))


def strictly_rising(values: list[float]) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


def span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{format(lo, fmt)} to {format(hi, fmt)}"


def settle_steps(conv: dict, layers: list[str], threshold: float, relative: bool = False) -> list[int | None]:
    """Per layer, the first snapshot step from which CKA to the final snapshot stays >= ``threshold``;
    with ``relative``, of the baseline-relative CKA (CKA_t - CKA_0) / (1 - CKA_0) instead."""
    return [
        formed_at(conv[n]["by_step"]["cka_to_final"], conv[n]["by_step"]["steps"], threshold, relative) for n in layers
    ]


def strictly_ordered(order: list[int | None]) -> bool:
    return None not in order and strictly_rising(order)  # type: ignore[arg-type]


SETTLING = {  # variants of the settling criterion, each counted: shown (ties inside allowed), strict, all tied
    "CKA >= 0.8": (0.8, False),
    "CKA >= 0.9 (the fixed criterion)": (0.9, False),
    "CKA >= 0.95": (0.95, False),
    "baseline-relative CKA >= 0.9": (0.9, True),
}
CRITERION = {  # the SETTLING names -> the criterion keys of analyze's settling block
    "CKA >= 0.8": "0.8",
    "CKA >= 0.9 (the fixed criterion)": "0.9",
    "CKA >= 0.95": "0.95",
    "baseline-relative CKA >= 0.9": "relative 0.9",
}
VARIANTS = {  # analyze's settling series -> how the table names them
    "pooled": "whole network, features averaged over positions",
    "flattened": "whole network, flattened maps (every position a feature)",
    "own_weights": "own weights only (every other layer at its final values)",
}


def settled(conv: dict, layers: list[str]) -> dict[tuple[str, str], list[int | None]]:
    """(variant, criterion name) -> the step each layer formed at: from analyze's settling block (the run's
    uniform snapshot grid) where the analysis has one, else the whole-network pooled CKA over every snapshot."""
    if all("settling" in conv[n] for n in layers):
        return {
            (v, name): [conv[n]["settling"]["formed_at"][v][key] for n in layers]
            for v in VARIANTS
            for name, key in CRITERION.items()
        }
    return {("pooled", name): settle_steps(conv, layers, t, rel) for name, (t, rel) in SETTLING.items()}


FIXED = ("pooled", "CKA >= 0.9 (the fixed criterion)")


def per_seed(a: dict) -> dict:
    layers = a["layers"]
    conv = a["convergence"]
    variants = settled(conv, layers)
    order = variants[("pooled", "CKA >= 0.9 (the fixed criterion)")]
    grid = conv[layers[0]].get("settling", {}).get("steps") or conv[layers[0]]["by_step"]["steps"]
    comp = a["complexity"]
    last, first = str(a["epochs"][-1]), str(a["epochs"][0])
    inc = [comp[n][last]["incompressibility"]["mean"] for n in layers]
    inc0 = [comp[n][first]["incompressibility"]["mean"] for n in layers]
    struct = [comp[n][last]["structure"]["mean"] for n in layers]
    struct0 = [comp[n][first]["structure"]["mean"] for n in layers]
    slope = [(comp[n][last]["slope"] or {}).get("mean") for n in layers]
    rot = [a["filter_updates"][n]["rotation_from_init"][-1] for n in layers]
    null = a.get("rotation_null", {})
    rot_null = [null[n]["null_at_last"] for n in layers] if "skipped" not in null and null else [None] * len(layers)
    ratio = [null[n]["ratio"] for n in layers] if "skipped" not in null and null else [None] * len(layers)
    rf = a["receptive_field"]
    faith = a["faithfulness"]
    pct_med = [statistics.median([c["am_percentile"] for c in faith[n]["channels"]] or [float("nan")]) for n in layers]
    return {
        "steps": order,
        "shallow_first": shallow_first(order),
        "settling": {key: {"verdict": shallow_first(o), "strict": strictly_ordered(o)} for key, o in variants.items()},
        "grid": grid,
        "interval": [
            conv[n]["settling"]["formed_at_interval"] if "settling" in conv[n] else [None, None] for n in layers
        ],
        "cka_init_flat": [conv[n]["settling"]["flattened"][0] if "settling" in conv[n] else None for n in layers],
        "cka_init_own": [conv[n]["settling"]["own_weights"][0] if "settling" in conv[n] else None for n in layers],
        "rms": [rf[n].get(f"rms_radius_px_epoch_{last}") for n in layers],
        "rms_sd": [rf[n].get(f"rms_radius_sd_px_epoch_{last}") for n in layers],
        "rms_init": [rf[n].get(f"rms_radius_px_epoch_{first}") for n in layers],
        "rms_init_sd": [rf[n].get(f"rms_radius_sd_px_epoch_{first}") for n in layers],
        "rf_side": rf[layers[0]].get("measured_at_px", rf[layers[0]].get("image_px")),
        "cka_init": [conv[n]["cka_at_init"] for n in layers],
        "inc": inc,
        "inc_init": inc0,
        "inc_rising": strictly_rising(inc),
        "inc_init_rising": strictly_rising(inc0),
        "struct": struct,
        "struct_init": struct0,
        "struct_rising": strictly_rising(struct),
        "struct_init_rising": strictly_rising(struct0),
        "slope": slope,
        "rot": rot,
        "rot_rising": strictly_rising(rot),
        "rot_null": rot_null,
        "rot_null_rising": None not in rot_null and strictly_rising(rot_null),
        "rot_ratio": ratio,
        "rot_ratio_rising": None not in ratio and strictly_rising(ratio),
        "erf": [rf[n][f"effective_px_epoch_{last}"] for n in layers],
        "erf_init": [rf[n][f"effective_px_epoch_{first}"] for n in layers],
        "erf_out": [rf[n][f"outside_fraction_epoch_{last}"] for n in layers],
        "theo": [rf[n]["theoretical_px"] for n in layers],
        "pct_med": pct_med,
        "dead": sum(len(conv[n]["dead_channels"]) for n in layers),
        "settings_set": a.get("settings_set"),
        "layers": layers,
    }


def _cells(r: dict) -> dict:
    """String cells for the tables: intervals as lo-hi, radii as mean +- sd."""

    def one(v: int | None) -> str:
        return "never" if v is None else str(v)

    r["interval_s"] = [f"{one(lo)}-{one(hi)}" for lo, hi in r["interval"]]
    for key in ("rms", "rms_init"):
        r[f"{key}_pm"] = [None if m is None else f"{m:.2f} +- {sd:.2f}" for m, sd in zip(r[key], r[f"{key}_sd"])]
    return r


def table(seeds: list[int], out: Path) -> dict[str, str]:
    """{"summary": the claims, k of N; "full": the summary and every per-seed table}."""
    rows = {s: _cells(per_seed(json.loads((out / f"seed{s}" / "analysis.json").read_text()))) for s in seeds}
    n, first = len(rows), next(iter(rows.values()))
    depths = len(first["layers"])
    head = "| seed | " + " | ".join(f"depth {d + 1}" for d in range(depths)) + " | |"
    rule = "|---" * (depths + 2) + "|"

    def block(title: str, key: str, fmt: str, verdict=None) -> list[str]:
        lines = [f"**{title}**", "", head, rule]
        for s, r in rows.items():
            cells = ["never" if v is None else format(v, fmt) for v in r[key]]
            lines.append(f"| {s} | " + " | ".join(cells) + f" | {verdict(r) if verdict else ''} |")
        if fmt == "s":  # text cells (intervals, mean +- sd): no range row
            return lines + [""]
        cols = list(zip(*[r[key] for r in rows.values()]))
        lines.append(
            "| range | "
            + " | ".join(
                span([v for v in c if v is not None], fmt) if any(v is not None for v in c) else "-" for c in cols
            )
            + " | |"
        )
        return lines + [""]

    k_sf = sum(r["shallow_first"] == "shown" for r in rows.values())
    ties = sum(r["shallow_first"] == "tie" for r in rows.values())
    k_inc = sum(r["inc_rising"] for r in rows.values())
    k_inc0 = sum(r["inc_init_rising"] for r in rows.values())
    k_struct = sum(r["struct_rising"] for r in rows.values())
    k_struct0 = sum(r["struct_init_rising"] for r in rows.values())
    k_rot = sum(r["rot_rising"] for r in rows.values())
    k_rot_null = sum(r["rot_null_rising"] for r in rows.values())
    k_ratio = sum(r["rot_ratio_rising"] for r in rows.values())
    lines = [
        f"Seeds {', '.join(map(str, rows))} ({n} runs of the default configuration; "
        f"settings set: `{first['settings_set']}`). "
        "Generated by `benchmarks/findings.py table` from each run's `analysis.json`.",
        "",
        "| claim (criterion fixed before running these seeds) | seeds that show it |",
        "|---|---|",
        f"| shallow layers settle first (steps to debiased CKA >= 0.9 never decrease with depth, depth 1 before "
        f"depth {depths}) | **{k_sf} of {n}** ({ties} all tied, counted as not shown; "
        f"{sum(r['settling'][FIXED]['strict'] for r in rows.values())} strictly "
        "ordered, the rest with depths tied) |",
        f"| activation-maximization incompressibility (zlib bits per pixel) rises strictly with depth, final epoch "
        f"| **{k_inc} of {n}** |",
        f"| the same at the random init (baseline) | {k_inc0} of {n} |",
        f"| activation-maximization structure bits (saved by the pixels' arrangement) rise strictly with depth, "
        f"final epoch | **{k_struct} of {n}** |",
        f"| the same at the random init (baseline) | {k_struct0} of {n} |",
        f"| rotation from init rises strictly with depth, final epoch | **{k_rot} of {n}** |",
        f"| the same in the random-direction null (no learning) | {k_rot_null} of {n} |",
        f"| rotation relative to that null (run / null) rises strictly with depth | **{k_ratio} of {n}** |",
        "",
    ]
    lines += [
        "Settling order measured other ways (the same runs; shown = no deeper layer before a shallower one and "
        "depth 1 before the deepest, ties between depths allowed; strict = every depth after the one above it):",
        "",
        "| features | criterion | shown | strict | all depths tied |",
        "|---|---|---|---|---|",
    ]
    for variant, name in first["settling"]:
        v = [r["settling"][(variant, name)] for r in rows.values()]
        lines.append(
            f"| {VARIANTS[variant]} | {name} | {sum(x['verdict'] == 'shown' for x in v)} of {n} "
            f"| {sum(x['strict'] for x in v)} of {n} | {sum(x['verdict'] == 'tie' for x in v)} of {n} |"
        )
    lines.append("")
    summary = "\n".join(lines)
    grid = first["grid"]
    lines += block(
        "First optimizer step from which debiased CKA to the final snapshot stays >= 0.9 "
        f"(measured at steps {', '.join(map(str, grid[:4]))}, ..., {grid[-1]})",
        "steps",
        "d",
        lambda r: r["shallow_first"],
    )
    if any(r["interval"][0] != [None, None] for r in rows.values()):
        lines += block(
            "95% interval of that step over 100 random halves of the probe images",
            "interval_s",
            "s",
            lambda r: "order undecided" if intervals_overlap(r["interval"]) else "order holds at both ends",
        )
    lines += block(
        "Debiased CKA of the random init to the final snapshot (baseline), pooled features", "cka_init", ".2f"
    )
    lines += block("The same with flattened maps", "cka_init_flat", ".2f")
    lines += block("The same with only the layer's own weights at the init", "cka_init_own", ".2f")
    lines += block(
        "Rotation from init, 1 - cos, final epoch",
        "rot",
        ".2f",
        lambda r: "rising" if r["rot_rising"] else "not rising",
    )
    lines += block(
        "The same in the random-direction null: the run's init, optimizer and schedule, random gradient "
        "directions with the real gradients' norms (no learning)",
        "rot_null",
        ".2f",
        lambda r: "rising" if r["rot_null_rising"] else "not rising",
    )
    lines += block(
        "Rotation relative to the null (run / null), final epoch",
        "rot_ratio",
        ".2f",
        lambda r: "rising" if r["rot_ratio_rising"] else "not rising",
    )
    for key, title, fmt in (
        ("inc", "Activation-maximization incompressibility (zlib bits per pixel)", ".1f"),
        ("struct", "Activation-maximization structure bits per pixel (saved by the pixels' arrangement)", ".2f"),
    ):
        lines += block(
            f"{title}, final epoch", key, fmt, lambda r, k=key: "rising" if r[f"{k}_rising"] else "not rising"
        )
        lines += block(
            "The same for the random init's images (baseline)",
            f"{key}_init",
            fmt,
            lambda r, k=key: "rising" if r[f"{k}_init_rising"] else "not rising",
        )
    lines += block(
        "Spectrum slope (Hann window, plane removed, 2 to 14 cycles per image), final epoch; "
        "Fourier-parametrized images, whose 1/f prior steepens it",
        "slope",
        ".2f",
    )
    side = first["rf_side"]
    lines += block(
        f"Effective receptive field px (side of the square holding 90% of |gradient|, measured at {side} px), "
        "final epoch",
        "erf",
        "d",
    )
    lines += block("Share of that square outside the image", "erf_out", ".2f")
    lines += block("Effective receptive field px at the random init", "erf_init", "d")
    if all(v is not None for r in rows.values() for v in r["rms"]):
        lines += block("RMS radius of the gradient mass px (+- sd over 8 images), final epoch", "rms_pm", "s")
        lines += block("The same at the random init", "rms_init_pm", "s")
    lines += [f"Theoretical receptive fields: {', '.join(map(str, first['theo']))} px.", ""]
    lines += block(
        "Median percentile of the AM image's activation among the validation images' (100 = above all), final epoch",
        "pct_med",
        ".1f",
    )
    lines += [
        f"Dead channels (never active on the probe images at the end), all seeds: "
        f"{sum(r['dead'] for r in rows.values())}.",
        "",
    ]
    return {"summary": summary, "full": "\n".join(lines)}


PUBLISHED = Path("docs/findings")


def publish(seeds: list[int], out: Path, dest: Path = PUBLISHED) -> None:
    """Copy each seed's run.json (configs, seed, versions, git sha) and analysis.json under ``dest``, so
    anyone can re-derive every count with ``table --out dest`` and no training."""
    for s in seeds:
        target = dest / f"seed{s}"
        target.mkdir(parents=True, exist_ok=True)
        for name in ("run.json", "analysis.json"):
            (target / name).write_bytes((out / f"seed{s}" / name).read_bytes())


def write_blocks(path: Path, texts: dict[str, str], blocks: dict = BLOCKS, what: str = "findings") -> None:
    """Replace every marked block of ``blocks`` (key -> start and end markers) that ``path`` holds with
    ``texts[key]``; SystemExit when it holds none."""
    src = path.read_text()
    found = False
    for key, (start, end) in blocks.items():
        if start in src and end in src:
            head, rest = src.split(start, 1)
            _, tail = rest.split(end, 1)
            src = f"{head}{start}\n{texts[key]}\n{end}{tail}"
            found = True
    if not found:
        raise SystemExit(f"{path}: no {what} block to replace")
    path.write_text(src)


def command(doc: str, seeds: str, out: str, run, table, publish, blocks: dict = BLOCKS, what: str = "findings") -> None:
    """The command line every findings script shares: ``run`` (train and measure), ``table`` (print the markdown
    ``table(seeds, out)`` returns and, with ``--write``, replace its marked blocks in each file) and ``publish``
    (copy the runs' JSON into docs/)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("what", choices=["run", "table", "publish"])
    p.add_argument("--seeds", default=seeds, type=seeds_arg)
    p.add_argument("--out", default=Path(out), type=Path)
    p.add_argument("--write", nargs="*", type=Path, default=[], help=f"files whose {what} blocks are replaced")
    a = p.parse_args()
    if a.what == "run":
        run(a.seeds, a.out)
    elif a.what == "publish":
        publish(a.seeds, a.out)
    else:
        texts = table(a.seeds, a.out)
        print(texts["full"])
        for f in a.write:
            write_blocks(f, texts, blocks, what)


def main() -> None:
    command(__doc__, "100-109", "outputs/fresh", run, table, publish)


if __name__ == "__main__":
    main()
