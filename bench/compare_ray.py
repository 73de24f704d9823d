"""Joins the output of `ray microbenchmark` and `ferry-bench` into one Markdown table.

Usage: python3 bench/compare_ray.py RAY_OUTPUT FERRY_OUTPUT

Both print `name per second MEAN +- STD`. Ray's names ("single client get calls (Plasma
Store)") are matched to ferry's ("single_client_get_calls") by lowercasing, dropping
"(Plasma Store)" and turning everything that is not a letter or digit into `_`.
"""

import re
import sys

LINE = re.compile(r"^(?P<name>.+?) per second (?P<mean>[-+0-9.eE]+) \+- (?P<std>[-+0-9.eE]+)\s*$")


def normalise(name):
    name = re.sub(r"\(plasma store\)", "", name.lower())
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def read(path):
    results = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line.strip())
            if m:
                results[normalise(m["name"])] = (float(m["mean"]), float(m["std"]))
    return results


def fmt(mean_std):
    if mean_std is None:
        return "-"
    mean, std = mean_std
    digits = 2 if mean < 100 else 0
    return f"{mean:,.{digits}f} ± {std:,.{digits}f}"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: compare_ray.py RAY_OUTPUT FERRY_OUTPUT")
    ray, ferry = read(sys.argv[1]), read(sys.argv[2])
    if not ray and not ferry:
        sys.exit("neither file has a 'NAME per second X +- Y' line")
    print("| test | Ray (per second) | ferry (per second) | ferry / Ray |")
    print("|---|---:|---:|---:|")
    for name in list(ray) + [n for n in ferry if n not in ray]:
        r, f = ray.get(name), ferry.get(name)
        ratio = f"{f[0] / r[0]:,.1f}x" if r and f and r[0] > 0 else "-"
        print(f"| {name} | {fmt(r)} | {fmt(f)} | {ratio} |")


if __name__ == "__main__":
    main()
