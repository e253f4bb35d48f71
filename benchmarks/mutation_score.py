"""Mutation score per module from mutmut's results (README, "Mutation testing").

Run after `mutmut run --max-children 2` (configured in pyproject.toml) in the repository root:
    python benchmarks/mutation_score.py [--survivors]
Killed / (total - equivalent) per module; mutants listed in benchmarks/mutmut_equivalents.txt (one per
line: the mutant's name, then the reason) are judged equivalent and left out of the total. A mutant that no
test runs ("no tests") or that survives counts as not killed; so does one mutmut has not checked yet.

`--sample FILE` (mutant sampling, for modules whose full run does not fit the machine): FILE lists mutants
drawn at random from those not yet checked; `mutmut run $(cat FILE)` checks them. Each module with drawn
mutants then also gets an estimate: the mutants checked outside the sample count as they are, and the
sample's kill rate, with its Wilson 95% interval, stands for the pool it was drawn from (the drawn ones plus
those still unchecked); equivalents are left out of the pool in the sample's proportion.
"""

import argparse
import json
import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
KILLED = {1, 3}  # pytest's exit codes for failing tests / an internal error raised by the mutant
TIMEOUT = {24, 36, 152, 255, -24}  # a mutant that hangs is caught too (mutmut counts it as killed)


def read_equivalents(path):
    out = {}
    for line in pathlib.Path(path).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition(" ")
            if not reason.strip():
                raise ValueError(f"{path}: {name} is listed without a reason")
            out[name] = reason.strip()
    return out


def outcomes(mutants_dir):
    """{module: {mutant name: exit code or None}} from mutmut's .meta files."""
    out = {}
    for meta in sorted(pathlib.Path(mutants_dir, "src", "pagoda").glob("*.py.meta")):
        out[meta.name.removesuffix(".py.meta")] = json.loads(meta.read_text())["exit_code_by_key"]
    return out


def killed(code):
    return code in KILLED or code in TIMEOUT


def scores(results, equivalents):
    rows = []
    for module, codes in results.items():
        counted = {k: v for k, v in codes.items() if k not in equivalents}
        n_killed = sum(map(killed, counted.values()))
        rows.append({"module": module, "mutants": len(codes), "equivalent": len(codes) - len(counted),
                     "killed": n_killed, "not_killed": len(counted) - n_killed,
                     "score": n_killed / len(counted) if counted else float("nan")})
    return rows


def wilson(k, n, z=1.96):
    """Wilson score interval of a proportion k / n (Wilson 1927)."""
    p, denom = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / denom, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def sampled_score(codes, equivalents, sample):
    """(estimate, low, high, checked in the sample, pool size) of one module's score, or None without a sample."""
    drawn = [k for k in codes if k in sample]
    checked = [k for k in drawn if codes[k] is not None]
    if not checked:
        return None
    census = [v for k, v in codes.items() if k not in sample and v is not None and k not in equivalents]
    pool = len(drawn) + sum(v is None for k, v in codes.items() if k not in sample)
    judged = [codes[k] for k in checked if k not in equivalents]
    pool_counted = pool * len(judged) / len(checked)  # equivalents left out in the sample's proportion
    k = sum(map(killed, judged))

    def score(rate):
        return (sum(map(killed, census)) + pool_counted * rate) / (len(census) + pool_counted)
    low, high = wilson(k, len(judged))
    return score(k / len(judged)), score(low), score(high), len(checked), pool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", default=ROOT / "mutants")
    parser.add_argument("--equivalents", default=ROOT / "benchmarks" / "mutmut_equivalents.txt")
    parser.add_argument("--survivors", action="store_true", help="list every mutant not killed")
    parser.add_argument("--sample", type=pathlib.Path, help="mutants drawn at random from the unchecked ones")
    args = parser.parse_args(argv)
    equivalents = read_equivalents(args.equivalents)
    results = outcomes(args.mutants)
    if not results:
        sys.exit(f"no mutmut results under {args.mutants}: run `mutmut run --max-children 2` first")
    rows = scores(results, equivalents)
    print(f"{'module':<10} {'mutants':>8} {'equiv.':>7} {'killed':>7} {'not killed':>11} {'score':>7}")
    for r in rows:
        print(f"{r['module']:<10} {r['mutants']:>8} {r['equivalent']:>7} {r['killed']:>7} {r['not_killed']:>11} "
              f"{r['score']:>7.1%}")
    total = {k: sum(r[k] for r in rows) for k in ("mutants", "equivalent", "killed", "not_killed")}
    print(f"{'all':<10} {total['mutants']:>8} {total['equivalent']:>7} {total['killed']:>7} "
          f"{total['not_killed']:>11} {total['killed'] / (total['killed'] + total['not_killed']):>7.1%}")
    if args.sample:
        sample = set(args.sample.read_text().split())
        print(f"\nestimated with the sample in {args.sample} (95% interval):")
        for module, codes in results.items():
            est = sampled_score(codes, equivalents, sample)
            if est:
                print(f"{module:<10} {est[0]:.1%} [{est[1]:.1%}, {est[2]:.1%}]  ({est[3]} drawn and checked, "
                      f"standing for {est[4]} unchecked)")
    if args.survivors:
        for module, codes in results.items():
            for name, code in codes.items():
                if name not in equivalents and not killed(code):
                    print(name, {None: "not checked", 0: "survived", 5: "no tests", 33: "no tests"}.get(code, code))


if __name__ == "__main__":
    main()
