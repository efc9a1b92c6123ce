"""The benchmark's tables (markdown) and docs/benchmark.md, from the results that :mod:`.bench` writes as JSON.

A result is ``{"name", "note", "model", "steps", "seeds", "levels": {level: {"setting", "seconds_per_mp",
"images": {image: scores}, "mean": scores}}}``, with ``"skipped"`` (why) for a method that did not run.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..pipeline import DEFAULT_STEPS
from .bench_set import OPTICS_BLUR_SIGMA, SET_VERSION, Level
from .metrics import BORDER, METRICS, TONE_BINS, Metric

SEED_MEAN_TOLERANCE_DB = 0.2
PERCEPTION_DISTORTION_KEYS = ("psnr_tm", "psnr", "swd", "hf_ratio", "flat_noise", "vsi", "mdsi", "haarpsi")


def seconds_per_mp(result: dict) -> float:
    """Median over every image of every level: robust to the odd file slowed by other work."""
    return float(np.median([t for level in result["levels"].values() for t in level["seconds_per_mp"]]))


def _ran(results: Sequence[dict]) -> list[dict]:
    return [r for r in results if r["levels"]]


def _metrics_present(results: Sequence[dict]) -> list[Metric]:
    keys = {k for r in _ran(results) for level in r["levels"].values() for k in level["mean"]}
    return [m for m in METRICS if m.key in keys]


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def metric_tables(results: Sequence[dict], levels: Sequence[Level]) -> list[str]:
    """One table per metric: methods down, levels across; the first also has the seconds per megapixel."""
    lines = []
    for index, metric in enumerate(_metrics_present(results)):
        better = {"higher": "higher is better", "lower": "lower is better", "1": "1 is the ground truth's"}
        lines += ["", f"### {metric.title}; {better[metric.better]}", ""]
        header = ["method", *(level.label for level in levels)] + (["s/MP"] if index == 0 else [])
        rows = [[r["name"], *(metric.fmt.format(r["levels"][level.name]["mean"][metric.key]) for level in levels)]
                + ([f"{seconds_per_mp(r):.2f}"] if index == 0 else []) for r in _ran(results)]
        lines += _table(rows, header)
    return lines


def optics_table(results: Sequence[dict], levels: Sequence[Level], sharp: dict[str, bool]) -> list[str]:
    """Tone-matched PSNR on the sharp photos (aliasing, moire) and on the blurred ones, side by side."""
    def mean(level: dict, want: bool) -> str:
        values = [s["psnr_tm"] for image, s in level["images"].items() if sharp[image] == want]
        return f"{np.mean(values):.2f}" if values else "-"

    rows = [[r["name"], *(f"{mean(r['levels'][lv.name], True)} / {mean(r['levels'][lv.name], False)}"
                          for lv in levels)] for r in _ran(results)]
    return ["", "### Tone-matched PSNR, dB: sharp photos / blurred photos", "",
            *_table(rows, ["method", *(level.label for level in levels)])]


def margins_table(results: Sequence[dict], levels: Sequence[Level]) -> list[str]:
    """Each model at the default step count against the best classical method of each level (its
    tone-matched PSNR, and the lowest classical CIEDE2000), and the core against v15."""
    ran = _ran(results)
    classical = [r for r in ran if r["model"] is None]
    default = {r["model"]: r for r in ran if r["model"] and r["steps"] == DEFAULT_STEPS and r["seeds"] == 1}
    if not classical or not default:
        return []

    def margin(model: dict, level: Level, others: list[dict]) -> str:
        mine = model["levels"][level.name]["mean"]
        best = max(o["levels"][level.name]["mean"]["psnr_tm"] for o in others)
        lowest = min(o["levels"][level.name]["mean"]["de00"] for o in others)
        return f"{mine['psnr_tm'] - best:+.2f} dB / {mine['de00'] - lowest:+.2f}"

    rows = [[f"{name} - best classical", *(margin(model, lv, classical) for lv in levels)]
            for name, model in default.items()]
    if "core" in default and "v15" in default:
        rows.append(["core - v15", *(margin(default["core"], lv, [default["v15"]]) for lv in levels)])
    return ["", f"### Margins at --steps {DEFAULT_STEPS}: tone-matched PSNR (against the best classical method of "
            "each level) / CIEDE2000 (against the lowest)", "",
            *_table(rows, ["", *(level.label for level in levels)])]


def perception_distortion(results: Sequence[dict], levels: Sequence[Level]) -> list[str]:
    """Per model, its step counts at every level: distortion (the PSNRs) beside perception (texture realism,
    detail, noise left in flat areas, piq's scores), with the change against ``--steps 1``."""
    lines = []
    keys = [m for m in _metrics_present(results) if m.key in PERCEPTION_DISTORTION_KEYS]
    for model in dict.fromkeys(r["model"] for r in _ran(results) if r["model"]):
        rows_of = sorted((r for r in _ran(results) if r["model"] == model), key=lambda r: (r["steps"], r["seeds"]))
        reference = next((r for r in rows_of if r["steps"] == 1 and r["seeds"] == 1), None)
        lines += ["", f"### Perception-distortion, {model}: by step count", "",
                  "Δ: against --steps 1 (tone-matched PSNR in dB, SWD in %)." if reference else "", ""]
        header = ["level", "steps", *(m.key for m in keys)] + (["Δ psnr_tm", "Δ swd"] if reference else [])
        rows = []
        for level in levels:
            for r in rows_of:
                mean = r["levels"][level.name]["mean"]
                row = [level.label, str(r["steps"]) + (f" (mean of {r['seeds']})" if r["seeds"] > 1 else ""),
                       *(m.fmt.format(mean[m.key]) for m in keys)]
                if reference:
                    ref = reference["levels"][level.name]["mean"]
                    row += [f"{mean['psnr_tm'] - ref['psnr_tm']:+.2f}",
                            f"{100 * (mean['swd'] / max(ref['swd'], 1e-12) - 1):+.0f} %"]
                rows.append(row)
        lines += _table(rows, header)
        mean_rows = [r for r in rows_of if r["seeds"] > 1]
        if reference and mean_rows:
            checks = []
            for level in levels:
                gap = (mean_rows[0]["levels"][level.name]["mean"]["psnr_tm"]
                       - reference["levels"][level.name]["mean"]["psnr_tm"])
                checks.append(f"{level.label} {gap:+.2f} dB" + ("" if abs(gap) <= SEED_MEAN_TOLERANCE_DB else " (OUT)"))
            lines += ["", f"{mean_rows[0]['name']} minus --steps 1, tone-matched PSNR (must be within "
                      f"{SEED_MEAN_TOLERANCE_DB} dB): " + "; ".join(checks) + "."]
    return lines


def set_notes(header: dict) -> list[str]:
    """What the set is, in the words a reader of the tables needs."""
    return [f"- Set {header['set']} (definition version {SET_VERSION}), {header['images']} validation photos, "
            f"centre crops up to {header['size']} x {header['size']} px, seed {header['seed']}; pixel digests "
            + ", ".join(f"{k} {v}" for k, v in header["content"].items()) + ".",
            f"- Each photo shot by a held-out real camera (its camconst.json matrix and daylight white balance, "
            "its darktable noise profile at the level's ISO, read noise split into ELD-style row offsets and "
            "Tukey-lambda noise); low light is ISO 400 exposed 30x or 100x shorter with the gain applied back, the "
            f"file tagged with the effective ISO. Half the photos razor-sharp (aliasing, moire), half blurred by "
            f"{OPTICS_BLUR_SIGMA} px; the ground truth is the photo as the sensor saw it (blurred or not).",
            "- No method gets auto-brightening or a ground-truth-based rescaling: the DNG data are at the ground "
            "truth's exposure; the tone-matched PSNR alone fits a per-channel monotone curve "
            f"({TONE_BINS} segments) output -> ground truth first.",
            f"- Scores on display sRGB, {BORDER} px border excluded for every method. s/MP: wall seconds per "
            "megapixel (reading the DNG included, one warm-up excluded; median over all images and levels; "
            "command-line peers: one process per level, its wall time shared by the images); other work on the "
            "cores slows the torch-based rows."]


def results_section(results: Sequence[dict], levels: Sequence[Level], header: dict) -> list[str]:
    """Every metric's table, optics, margins, perception-distortion, then the notes."""
    sharp = {p["name"]: p["sharp"] for p in header["photos"]}
    lines = []
    if _ran(results):
        lines += [*metric_tables(results, levels), *optics_table(results, levels, sharp),
                  *margins_table(results, levels), *perception_distortion(results, levels)]
    else:
        lines += ["", "No results yet: the set alone was built (--set-only). The tables come from "
                  "`python -m rawrestore.evaluation.bench --core-weights PATH --seed-mean 8 --docs`."]
    lines += ["", "## Notes", "", *set_notes(header),
              f"- Model weights: v15 {header['v15_weights']}; core {header['core_weights']}."]
    if header["piq"]:
        lines.append(f"- VSI, MDSI, HaarPSI left out: {header['piq']}.")
    if header["frozen"]:
        lines.append(f"- WARNING: {header['frozen']}.")
    return lines + method_notes(results, levels)


def method_notes(results: Sequence[dict], levels: Sequence[Level]) -> list[str]:
    """A line per method that was skipped (why) or has a note (with the settings its sweep chose)."""
    lines = []
    for r in results:
        if r.get("skipped"):
            lines.append(f"- {r['name']}: skipped: {r['skipped']}")
        elif r["note"]:
            chosen = ", ".join(f"{level.label}: {r['levels'][level.name]['setting']}" for level in levels
                               if r["levels"][level.name]["setting"] is not None)
            lines.append(f"- {r['name']}: {r['note']}" + (f"; chosen {chosen}" if chosen else "") + ".")
    return lines


def markdown(results: Sequence[dict], levels: Sequence[Level], header: dict) -> str:
    lines = [f"# rawrestore benchmark, set {header['set']}", "", f"Command: `{header['command']}`",
             *results_section(results, levels, header)]
    return "\n".join(lines) + "\n"


FREEZE_RULE = """\
## The set is frozen

The set was defined, hashed and frozen before the RAW-domain core was trained (issue 22). Its definition
(`rawrestore/evaluation/bench_set.py`: the photos, cameras, noise, optics, crop size and seed; `SET_VERSION`)
must not change to suit a model: a result is comparable with these tables only on set `{set}` with the pixel
digests in the notes below (`FROZEN` in bench_set.py; a run warns where they differ). A better benchmark is a new set
version, recorded here beside this one, with every method run again on it, never an edit of this one."""


def docs_page(results: Sequence[dict], levels: Sequence[Level], header: dict) -> str:
    """docs/benchmark.md: how the set is made, the freeze rule, the command, the images, the results."""
    rows = [[p["name"], "sharp" if p["sharp"] else f"blurred {OPTICS_BLUR_SIGMA} px", p["camera"], p["cfa"],
             str(p["bits"])] for p in header["photos"]]
    return "\n".join([
        "# Benchmark", "",
        "Every method develops the same synthetic DNG files, made from the validation photos (never a training "
        "photo) with cameras held out of training, and is scored against the photo it was made from "
        "(`python -m rawrestore.evaluation.bench`).", "",
        f"Reproduce: `{header['command']}` (`--docs` writes this page; the set, the tables and every number "
        "as JSON go into its cache folder).", "",
        FREEZE_RULE.format(set=header["set"]), "",
        "## The images", "", *_table(rows, ["image", "optics", "camera (matrix, noise profile)", "CFA", "bits"]),
        "", "## Results", *results_section(results, levels, header)]) + "\n"
