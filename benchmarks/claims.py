"""Claims a-f (featviz.claims) on fresh seeds of the default run, each with a shuffled-label control run,
through the CLI as shipped; then the k-of-N tables from the runs' analysis.json files.

    python benchmarks/claims.py run     --seeds 200-209 --out outputs/claims   # ~5 min per seed, 2 CPU cores
    python benchmarks/claims.py table   --seeds 200-209 --out outputs/claims --write docs/findings.md
    python benchmarks/claims.py publish --seeds 200-209 --out outputs/claims   # JSON -> docs/findings/claims/
    python benchmarks/claims.py table   --seeds 200-209 --out docs/findings/claims   # the same, from the JSON

Per seed S: ``featviz train --seed S --snapshot-every-steps 40`` (seedS), ``featviz train --seed S --labels
shuffled --snapshots epoch`` (seedS-shuffled: the same init and images, the training labels permuted),
``featviz render seedS``, ``featviz analyze seedS --control seedS-shuffled``. ``run`` trains only runs without
all their epochs, render reuses matching images, analyze always runs again. ``table`` prints the markdown and,
with ``--write``, replaces the blocks marked ``<!-- claims-summary:start/end -->`` (the summary) and
``<!-- claims:start/end -->`` (docs/findings.md). The protocol is in docs/findings.md.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import findings  # noqa: E402
from findings import featviz  # noqa: E402

from featviz.claims import CLAIMS, POOLING, claims, settling  # noqa: E402

BLOCKS = {
    "summary": ("<!-- claims-summary:start -->", "<!-- claims-summary:end -->"),
    "full": ("<!-- claims:start -->", "<!-- claims:end -->"),
}
PUBLISHED = Path("docs/findings/claims")


def _complete(path: Path) -> bool:
    man = path / "manifest.json"
    return man.is_file() and json.loads(man.read_text()).get("epochs_done") == 8


def run(seeds: list[int], out: Path) -> None:
    for s in seeds:
        real, control = out / f"seed{s}", out / f"seed{s}-shuffled"
        common = ["--seed", str(s), "--out", str(out), "--force"]
        if not _complete(real):
            featviz("train", *common, "--snapshot-every-steps", "40", "--name", real.name)
        if not _complete(control):
            featviz("train", *common, "--labels", "shuffled", "--snapshots", "epoch", "--name", control.name)
        featviz("render", str(real))
        featviz("analyze", str(real), "--control", str(control))


def per_seed(a: dict, info: dict) -> dict:
    """One seed's verdicts and the numbers the tables show (None where the analysis lacks them)."""
    p = a.get("probes") or {}
    layers = [n for n in a["layers"] if n in p.get("layers", {})]
    acc = [p["layers"][n][POOLING]["accuracy"] for n in layers]
    ctl = p.get("control", {}).get("layers", {})
    metrics = info.get("metrics") or []
    s = settling(a) or {}

    def sel(n: str, i: int) -> float | None:
        return ((p["layers"][n].get("selectivity") or {}).get("by_epoch") or [{}, {}])[i].get("mean")

    def ctl_acc(n: str) -> list[float]:
        return ctl[n][POOLING]["accuracy"]

    return {
        "verdicts": {c["key"]: c["verdict"] for c in claims(a)},
        "last": [v[-1] for v in acc] or None,
        "init": [v[0] for v in acc] or None,
        "gap": [v[-1] - v[0] for v in acc] or None,
        "control": [ctl_acc(n)[-1] for n in layers] if ctl else None,
        "control_gap": [ctl_acc(n)[-1] - ctl_acc(n)[0] for n in layers] if ctl else None,
        "grid2": [p["layers"][n]["grid2"]["accuracy"][-1] for n in layers] or None,
        "selectivity": [sel(n, -1) for n in layers] or None,
        "selectivity_init": [sel(n, 0) for n in layers] or None,
        "selectivity_control": [
            ((ctl[n].get("selectivity") or {}).get("by_epoch") or [{}])[-1].get("mean") for n in layers
        ]
        if ctl
        else None,
        "gabor": {k: a["gabor"][k]["share"] for k in ("init", "last", "learned_part")}
        if "init" in a.get("gabor", {})
        else None,
        "strict": bool(s) and None not in s["pooled"] and all(x < y for x, y in zip(s["pooled"], s["pooled"][1:])),
        "val_acc": [r.get("val_acc") for r in metrics],
        "layers": a["layers"],
    }


def _load(out: Path, s: int) -> dict:
    a = json.loads((out / f"seed{s}" / "analysis.json").read_text())
    metrics = out / f"seed{s}" / "metrics.jsonl"
    info = {
        "metrics": [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.is_file() else []
    }
    return per_seed(a, info)


def _span(values: list[float], fmt: str = ".3f") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}-{hi:{fmt}} (median {statistics.median(values):{fmt}})"


def table(seeds: list[int], out: Path) -> dict[str, str]:
    rows = {s: _load(out, s) for s in seeds}
    n, depths = len(rows), len(next(iter(rows.values()))["layers"])
    lines = [
        f"Seeds {', '.join(map(str, rows))}: {n} default runs on `pairs`, each with a shuffled-label control run "
        "(same seed, init and images). Generated by `benchmarks/claims.py table` from each run's `analysis.json`.",
        "",
        "| claim | criterion (fixed before these seeds ran) | shown | tie | not shown |",
        "|---|---|---|---|---|",
    ]
    criteria = {
        "a": "global-average probe accuracy, last epoch, each depth above the one before by > 0.01",
        "b": "the same for accuracy minus the random init's",
        "c": "deepest layer's gain over init minus the control's > 0.01",
        "d": "steps to CKA >= 0.9 shallow-first, whole network and own weights, half-sample intervals apart",
        "e": "run / random-direction-null rotation rises strictly with depth",
        "f": "structure bits rise strictly with depth at the last epoch, not at the init",
    }
    for key in "abcdef":
        v = [r["verdicts"][key] for r in rows.values()]
        other = sum(x not in ("shown", "tie", "not shown") for x in v)
        lines.append(
            f"| {key}) {CLAIMS[key]} | {criteria[key]} | **{v.count('shown')} of {n}** | {v.count('tie')} | "
            f"{v.count('not shown')}{f' ({other} not measured)' if other else ''} |"
        )
    lines.append("")
    summary = "\n".join(lines)
    head = "| seed | " + " | ".join(f"depth {d + 1}" for d in range(depths)) + " | verdict |"
    rule = "|---" * (depths + 2) + "|"

    def block(title: str, key: str, verdict: str | None = None, fmt: str = ".3f") -> list[str]:
        got = [r for r in rows.values() if r[key] is not None]
        if not got:
            return []
        out_lines = [f"**{title}**", "", head, rule]
        for s, r in rows.items():
            if r[key] is None:
                continue
            cells = " | ".join("-" if v is None else format(v, fmt) for v in r[key])
            out_lines.append(f"| {s} | {cells} | {r['verdicts'][verdict] if verdict else ''} |")
        cols = list(zip(*[r[key] for r in got]))
        spans = [_span([v for v in c if v is not None], fmt) if any(v is not None for v in c) else "-" for c in cols]
        out_lines.append("| range | " + " | ".join(spans) + " | |")
        return out_lines + [""]

    lines += block("a) Linear-probe accuracy (global average pooling), last epoch", "last", "a")
    lines += block("The same at the random init (epoch 0)", "init")
    lines += block("b) Gain over the random init", "gap", "b")
    lines += block("Shuffled-label control: probe accuracy, last epoch", "control")
    lines += block("c) Shuffled-label control: gain over its init (its init is the run's)", "control_gap", "c")
    lines += block("Probe on a 2 x 2 grid of the map, last epoch", "grid2")
    lines += block("Mean class selectivity of the channels, last epoch (the weaker test)", "selectivity")
    lines += block("The same at the random init", "selectivity_init")
    lines += block("The same for the shuffled-label control, last epoch", "selectivity_control")
    strict = sum(r["strict"] for r in rows.values())
    lines += [
        f"d) Whole-network settling order strictly shallow-first (each depth after the one above): {strict} of {n}.",
        "",
    ]
    gab = [r["gabor"] for r in rows.values() if r["gabor"]]
    if gab:
        lines += [
            "Depth-1 filters fitted by a colour-times-Gabor with R^2 >= 0.7 (share of 16): "
            f"random init {_span([g['init'] for g in gab], '.2f')}; "
            f"last epoch {_span([g['last'] for g in gab], '.2f')}; "
            f"learned part (last minus init) {_span([g['learned_part'] for g in gab], '.2f')}.",
            "",
        ]
    accs = [r["val_acc"] for r in rows.values() if r["val_acc"]]
    if accs:
        lines += [
            "Validation accuracy by epoch (0 = init), median over the seeds: "
            + ", ".join(f"{statistics.median(c):.3f}" for c in zip(*accs))
            + f"; final range {_span([c[-1] for c in accs])}.",
            "",
        ]
    return {"summary": summary, "full": "\n".join(lines)}


def publish(seeds: list[int], out: Path, dest: Path = PUBLISHED) -> None:
    """Each seed's and control's run.json, the real run's analysis.json and metrics.jsonl, under ``dest``."""
    for s in seeds:
        for name, files in (
            (f"seed{s}", ("run.json", "analysis.json", "metrics.jsonl")),
            (f"seed{s}-shuffled", ("run.json", "metrics.jsonl")),
        ):
            target = dest / name
            target.mkdir(parents=True, exist_ok=True)
            for f in files:
                (target / f).write_bytes((out / name / f).read_bytes())


def write_blocks(path: Path, texts: dict[str, str]) -> None:
    """Replace the claims blocks that ``path`` holds (docs/findings.md: the summary and the tables)."""
    findings.write_blocks(path, texts, BLOCKS, "claims")


def main() -> None:
    findings.command(__doc__, "200-209", "outputs/claims", run, table, publish, BLOCKS, "claims")


if __name__ == "__main__":
    main()
