"""One table, mean ± std over seeds, from several `rgd bench shapes --report` files (one per seed).

    for s in 0 1 2; do rgd bench shapes --model flow --seed $s --report runs/flow_$s.json; done
    .venv/bin/python benchmarks/seeds_table.py runs/flow_*.json [--json docs/results/bench_shapes_flow.json]

Rows are (concept, method) in the order of the first report; every report must hold the same rows. With --json, the
per-seed rows and the summary are written together. ``--rename 'RGD=RGD (one forget mean)'`` renames a method in
every report, for reports made while the default it ran had another name. Prints the table, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

MEASURES = ("erasure", "in_prompt", "retain", "collateral", "fd")


def summarize(reports: list[dict]) -> list[dict]:
    keys = [(row["concept"], row["method"]) for row in reports[0]["rows"]]
    for report in reports[1:]:
        if [(row["concept"], row["method"]) for row in report["rows"]] != keys:
            raise SystemExit("the reports hold different rows; run the same bench settings for every seed.")
    summary = []
    for index, (concept, method) in enumerate(keys):
        rows = [report["rows"][index] for report in reports]
        entry = {"concept": concept, "method": method, "seeds": [report["config"]["seed"] for report in reports]}
        for measure in MEASURES:
            values = [row[measure] for row in rows]
            entry[measure] = {"mean": statistics.fmean(values),
                              "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        if all("steps" in row for row in rows):  # the steps each run took (the adaptive stop's)
            entry["steps"] = [row["steps"] for row in rows]
        summary.append(entry)
    return summary


def format_summary(summary: list[dict]) -> str:
    width = max([9] + [len(entry["concept"]) for entry in summary])
    lines = [f"{'concept':{width}s} {'method':25s} " + " ".join(f"{m:>15s}" for m in MEASURES) + "  steps"]
    for entry in summary:
        cells = []
        for measure in MEASURES:
            mean, std = entry[measure]["mean"], entry[measure]["std"]
            cells.append(f"{mean:7.0f} ± {std:5.0f}" if measure == "fd" else f"{mean:.3f} ± {std:.3f}")
        steps = "/".join(str(n) for n in entry.get("steps", []))
        lines.append(f"{entry['concept']:{width}s} {entry['method']:25s} " + " ".join(f"{c:>15s}" for c in cells)
                     + f"  {steps}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+")
    parser.add_argument("--json", default=None, help="write the per-seed rows and the summary here")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                        help="call method OLD NEW in every report (repeatable)")
    args = parser.parse_args()
    names = dict(pair.split("=", 1) for pair in args.rename)
    reports = [json.loads(Path(path).read_text()) for path in args.reports]
    for report in reports:
        for row in report["rows"]:
            row["method"] = names.get(row["method"], row["method"])
    summary = summarize(reports)
    print(format_summary(summary))
    if args.json:
        settings = {key: value for key, value in reports[0]["config"].items() if key != "seed"}
        Path(args.json).write_text(json.dumps({"config": settings, "model": reports[0]["model"], "summary": summary,
                                               "per_seed": [report["rows"] for report in reports],
                                               "wall_seconds": [report["wall_seconds"] for report in reports]},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
