"""Start-up time: how long a user waits before capseg does anything, each command in a fresh interpreter.

capseg --help              the console script's help (argparse only: the CLI imports torch and the jobs after parsing)
capseg --version
capseg bad arguments       a usage error (`capseg segment train` without --out): exit 2 before anything is imported
import capseg.segment      the segmentation module (torch, no torchvision.models, no matplotlib until they are used)
import capseg.caption
import torch               the floor every job pays

Each is timed `--repeats` times (default 5) as wall-clock seconds of a new process, after one unmeasured warm-up run
(the file cache); the median goes in the results with every run beside it, and the ratio of each median to
`import torch`'s. The machine is shared: the 1-minute load average is recorded with the results.
Writes bench/results/startup.json.
Run: .venv/bin/python bench/startup.py [--repeats 5]  (about a minute on 2 CPU cores)
"""
import argparse, json, os, platform, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'bench' / 'results' / 'startup.json'
CAPSEG = str(Path(sys.executable).parent / 'capseg')
COMMANDS = {
    'capseg --help': [CAPSEG, '--help'],
    'capseg --version': [CAPSEG, '--version'],
    'capseg bad arguments': [CAPSEG, 'segment', 'train'],
    'import capseg.segment': [sys.executable, '-c', 'import capseg.segment'],
    'import capseg.caption': [sys.executable, '-c', 'import capseg.caption'],
    'import torch': [sys.executable, '-c', 'import torch'],
}
TARGETS = {'capseg --help': 1.0, 'capseg bad arguments': 1.0}   # seconds


def seconds(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd='/')
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeats', type=int, default=5)
    args = ap.parse_args()
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    runs = {}
    for name, cmd in COMMANDS.items():
        seconds(cmd, env)                                     # warm-up: the files in the page cache
        runs[name] = [round(seconds(cmd, env), 3) for _ in range(args.repeats)]
        print(f'{name:<24} median {statistics.median(runs[name]):6.2f} s   {runs[name]}', flush=True)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    torch_s = medians['import torch']
    results = dict(
        median_seconds={k: round(v, 3) for k, v in medians.items()},
        ratio_to_import_torch={k: round(v / torch_s, 3) for k, v in medians.items()},
        runs_seconds=runs, repeats=args.repeats,
        targets_seconds=TARGETS, targets_met={k: medians[k] < v for k, v in TARGETS.items()},
        load_average_1min=round(os.getloadavg()[0], 2), python=platform.python_version(), machine=platform.machine(),
        cpus=os.cpu_count())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + '\n')
    print(json.dumps({'ratio_to_import_torch': results['ratio_to_import_torch']}))
    print(f'wrote {RESULTS}')


if __name__ == '__main__': main()
