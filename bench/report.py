"""Tables and plots of the segmentation benchmarks, read from their JSON (bench/results/segment_sweep.json).

`python bench/report.py` rewrites bench/results/segment_sweep.png and bench/results/segment_sweep.md from the JSON
without running anything. The supervised references (CVNet trained on the masks with BCE, and the UNet trained on
them with BCE + Dice) are drawn dashed: they see the masks, no other method does.
"""
import argparse, sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from capseg.core import load_json

SWEEP_METHODS = {'default': 'capseg default', 'seed_60': 'seed pipeline, 60 epochs', 'blur_otsu': 'blur + Otsu',
                 'chan_vese': 'scikit-image chan_vese', 'supervised': 'supervised CVNet (masks, BCE)',
                 'unet': 'supervised UNet (masks, BCE + Dice)'}
REFERENCES = ('supervised', 'unet')       # trained on the masks: ceilings, drawn dashed


def sweep_summary(results: dict) -> dict:
    "`{setting: {method: {noise: (mean, std, n)}}}` of the test IoU over data seeds, from `segment_sweep.json`."
    groups = {}
    for r in results['runs'].values():
        groups.setdefault(r['setting'], {}).setdefault(r['method'], {}).setdefault(r['noise'], []).append(r['test_iou'])
    return {s: {m: {n: (float(np.mean(v)), float(np.std(v)), len(v)) for n, v in sorted(by.items())}
                for m, by in methods.items()} for s, methods in groups.items()}


def sweep_table(results: dict) -> str:
    "The sweep as markdown: test IoU % (mean ± std over data seeds, n seeds where not all) per setting, method, σ."
    out = []
    for setting, methods in sweep_summary(results).items():
        noises = sorted({n for by in methods.values() for n in by})
        n_max = max(v[2] for by in methods.values() for v in by.values())
        out += [f'\n**{setting}**\n', '| method | ' + ' | '.join(f'σ = {n:g}' for n in noises) + ' |',
                '|---|' + '---:|' * len(noises)]
        for key, label in SWEEP_METHODS.items():
            if key not in methods: continue
            cells = [('–' if v is None else f'{v[0]:.1f} ± {v[1]:.1f}' + (f' (n={v[2]})' if v[2] < n_max else ''))
                     for v in (methods[key].get(n) for n in noises)]
            out.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(out).strip()


def plot_sweep(results: dict, path=None, setting: str = 'shapes'):
    "Test IoU against the noise σ, one line per method with a ±std band over data seeds; a `Figure` (PNG at `path`)."
    from matplotlib.figure import Figure
    from capseg.plot import plot_band, save_png
    fig = Figure(figsize=(6.5, 4.2), layout='constrained')
    ax = fig.subplots()
    summary = sweep_summary(results)[setting]
    for key in [k for k in SWEEP_METHODS if k in summary]:
        by = summary[key]
        noises = sorted(by)
        line = plot_band(ax, [by[n][0] for n in noises], [by[n][1] for n in noises], label=SWEEP_METHODS[key],
                         x=noises)
        line.set_marker('o')
        if key in REFERENCES: line.set_linestyle('--')
    seeds = sorted({v[2] for by in summary.values() for v in by.values()})
    n = f'{seeds[-1]}' if len(seeds) == 1 else f'{seeds[0]}–{seeds[-1]}'
    ax.set(xlabel='noise σ (shape contrast 1)', ylabel='test IoU %',
           title=f'{setting}: mean ± std over {n} data seeds (dashed: trained on masks)')
    ax.grid(alpha=0.3); ax.legend(fontsize=8)
    return save_png(fig, path)


BENCH_METHODS = {'seed_60': 'seed pipeline, 60 epochs', 'seed_275': 'seed pipeline, 275 epochs',
                 'default': 'capseg default', 'blur_otsu': 'blur + Otsu', 'supervised': 'supervised (masks, BCE)'}

def bench_table(results: dict) -> str:
    "The benchmark results (`bench/results/segment.json`) as a markdown table."
    rows = ['| noise | method | epochs | test IoU % | per-image IoU % | train s | train CPU s | inference img/s |',
            '|---|---|---:|---:|---:|---:|---:|---:|']
    fmt = lambda v, f: '–' if v is None else format(v, f)
    for noise, runs in results['noise'].items():
        for key, label in BENCH_METHODS.items():
            r = runs.get(key)
            if r is None: continue
            rows.append(f"| {noise} | {label} | {fmt(r.get('epochs'), 'd')} | {fmt(r['test_iou'], '.2f')} | "
                        f"{fmt(r.get('test_iou_per_image'), '.2f')} | {fmt(r.get('train_seconds'), '.1f')} | "
                        f"{fmt(r.get('train_cpu_seconds'), '.1f')} | {fmt(r.get('inference_images_per_s'), ',.0f')} |")
    return '\n'.join(rows)


def write_sweep_report(results: dict, png: Path, md: Path):
    "The sweep's plot (PNG) and markdown table (with the settings it was run with)."
    plot_sweep(results, png)
    md.write_text('# Segmentation sweep: test IoU % against the noise σ\n\n'
                  f"{results.get('iou', '')}. Mean ± std over data seeds "
                  f"{', '.join(map(str, results['settings']['seeds']))} (n = seeds run, where fewer).\n\n"
                  + sweep_table(results) + '\n')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--results', type=Path, default=ROOT / 'bench' / 'results' / 'segment_sweep.json')
    a = ap.parse_args(argv)
    res = load_json(a.results)
    write_sweep_report(res, a.results.with_suffix('.png'), a.results.with_suffix('.md'))
    print(sweep_table(res))


if __name__ == '__main__':
    main()
