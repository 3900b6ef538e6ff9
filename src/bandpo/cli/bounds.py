"""``bandpo bounds``: the Band operator's ratio bounds as a table and as the paper's two figures.

The figure has two panels, as the paper's Figures 1-2: ratio bounds [lower, upper] against the
old probability p, and the allowed probability change q - p = (r - 1) p against p, with DAPO's
fixed interval, DCPO and the simplex limits (r in [0, 1/p], i.e. q - p in [-p, 1 - p]) beside
the Band curves. ``--relax`` adds the relax variant (band-relax: each band widened to contain
[1 - eps_low, 1 + eps_high]) to both, ``--sided`` the sided rules (band-upper: the band's upper bound
over the floor 1 - eps_low; band-lower: the band's lower bound under the ceiling 1 + eps_high).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
from pathlib import Path

import torch

from bandpo.band import check_delta, check_upper_max
from bandpo.checks import check_number
from bandpo.divergences import DIVERGENCES
from bandpo.rules import DCPO, BoundRule, FixedClip, check_eps_low, make_rule

DEFAULT_P = (1e-4, 1e-3, 0.01, 0.05, 0.08, 0.1, 0.2, 0.5, 0.8, 0.9, 0.99)
VARIANT_STYLES = {"band": ("-.", 2.4), "band-relax": (":", 1.6), "band-upper": ((0, (6, 2)), 1.6),
                  "band-lower": ((0, (1, 2, 4, 2)), 1.6)}
"""Line style and width of each band rule's curves in the figure."""
BAND_COLOURS = {"kl": "#7f9fe0", "tv": "#d9786a", "chi2": "#f2c39a", "reverse_kl": "#7fbf8f", "hellinger": "#a58fd0"}


def add_bounds_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--divergence", nargs="+", default=["kl", "tv", "chi2"], choices=sorted(DIVERGENCES),
                        help="divergences to show (default: kl tv chi2)")
    parser.add_argument("--delta", type=float, default=0.05, help="trust-region radius (default 0.05; the paper's figures use 0.1)")
    parser.add_argument("--upper-max", type=float, default=None, help="cap on the upper ratio bound (default: none)")
    parser.add_argument("--p", type=float, nargs="+", default=list(DEFAULT_P), help="old probabilities for the table")
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="also draw the two figures")
    parser.add_argument("--log-p", action="store_true", help="logarithmic p axis, to show the tail")
    parser.add_argument("--eps-low", type=float, default=0.2, help="DAPO / DCPO lower margin for the figure")
    parser.add_argument("--eps-high", type=float, default=0.28, help="DAPO / DCPO upper margin for the figure")
    parser.add_argument("--relax", action="store_true",
                        help="also show band-relax: each band widened to contain [1 - eps_low, 1 + eps_high]")
    parser.add_argument("--sided", action="store_true",
                        help="also show band-upper (band's upper over 1 - eps_low) and band-lower (band's lower "
                             "under 1 + eps_high)")


def shown_variants(relax: bool, sided: bool) -> list[str]:
    """The band rules shown: band itself, then band-relax and the sided rules when asked for."""
    return ["band"] + (["band-relax"] if relax else []) + (["band-upper", "band-lower"] if sided else [])


def shown_bands(
    divergences: list[str],
    delta: float,
    upper_max: float | None,
    eps: tuple[float, float],
    variants: list[str],
) -> list[tuple[str, str, BoundRule]]:
    """(label, variant, rule) of every band shown: each variant (see `shown_variants`) for each divergence;
    a variant's label is the divergence with its suffix (``kl+relax``, ``kl+upper``, ``kl+lower``)."""
    return [
        (name if variant == "band" else f"{name}+{variant.removeprefix('band-')}", variant,
         make_rule(variant, divergence=name, delta=delta, upper_max=upper_max, eps_low=eps[0], eps_high=eps[1]))
        for variant in variants
        for name in divergences
    ]


def bounds_table(
    divergences: list[str],
    delta: float,
    p_values: list[float],
    upper_max: float | None,
    eps: tuple[float, float] = (0.2, 0.28),
    variants: list[str] | None = None,
) -> str:
    """Rows of p, lower, upper and the allowed change of the probability, down and up, for each band rule
    of ``variants`` (default: band alone); ``eps`` are the fixed margins of the other variants."""
    variants = variants or ["band"]
    log_p = torch.log(torch.tensor(p_values, dtype=torch.float64))
    lines = [f"delta = {delta}" + (f", upper_max = {upper_max}" if upper_max is not None else "")
             + (f", fixed margins = {eps}" if variants != ["band"] else "")]
    lines.append(f"{'divergence':<16} {'p':>9} {'lower':>10} {'upper':>12} {'dq down':>10} {'dq up':>10}")
    for label, _, rule in shown_bands(divergences, delta, upper_max, eps, variants):
        lower, upper = rule.bounds(log_p)
        for p, lo, up in zip(p_values, lower.tolist(), upper.tolist(), strict=True):
            lines.append(f"{label:<16} {p:>9.4g} {lo:>10.5f} {up:>12.5f} {(lo - 1) * p:>+10.5f} {(up - 1) * p:>+10.5f}")
    return "\n".join(lines)


def plot_bounds(
    path: Path,
    divergences: list[str],
    delta: float,
    eps_low: float,
    eps_high: float,
    log_p: bool,
    upper_max: float | None,
    variants: list[str] | None = None,
) -> None:
    """Ratio bounds and probability-change bounds against p, the layout of the paper's figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if log_p:
        p = torch.logspace(-6, 0, 600, dtype=torch.float64)[:-1]
    else:
        p = torch.linspace(1e-4, 1, 600, dtype=torch.float64)[:-1]
    log_probs = p.log()
    fixed = FixedClip(eps_low, eps_high).bounds(log_probs)
    dcpo = DCPO(eps_low, eps_high, upper_max=upper_max).bounds(log_probs)
    figure, (ratio_axis, change_axis) = plt.subplots(1, 2, figsize=(13, 5))

    def draw(lower, upper, label, **style):
        ratio_axis.plot(p, lower, label=label, **style)
        ratio_axis.plot(p, upper, **style)
        change_axis.plot(p, (lower - 1) * p, label=label, **style)
        change_axis.plot(p, (upper - 1) * p, **style)

    for label, variant, rule in shown_bands(divergences, delta, upper_max, (eps_low, eps_high), variants or ["band"]):
        linestyle, linewidth = VARIANT_STYLES[variant]
        draw(*rule.bounds(log_probs), f"BandPO {label} (delta={delta})", color=BAND_COLOURS.get(label.split("+")[0]),
             linestyle=linestyle, linewidth=linewidth)
    draw(*dcpo, f"DCPO (eps={eps_low}/{eps_high})", color="#b9b3dc", linestyle="--", linewidth=1.8)
    draw(*fixed, f"DAPO clip-higher ({eps_low}/{eps_high})", color="#bbbbbb", linestyle="-", linewidth=2.0)
    draw(torch.zeros_like(p), 1 / p, "simplex limits [0, 1/p]", color="#222222", linestyle=":", linewidth=2.0)

    ratio_axis.set_ylabel("probability ratio bound")
    change_axis.set_ylabel("allowed probability change q - p")
    change_axis.set_ylim(-1, 1)
    if log_p:
        ratio_axis.set_yscale("log")
        ratio_axis.set_ylim(1e-2, 1e6)
    else:
        ratio_axis.set_ylim(0, 4)
    for axis in (ratio_axis, change_axis):
        axis.set_xlabel("old probability p = pi_old(a|s)")
        axis.set_xscale("log" if log_p else "linear")
        axis.set_xlim(p[0].item() if log_p else 0.0, 1)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    ratio_axis.set_title("Ratio bounds")
    change_axis.set_title("Probability-change bounds")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def configure_bounds(args: argparse.Namespace) -> argparse.Namespace:
    """The flags, checked (ValueError names the flag and what it accepts)."""
    args.delta = check_delta(args.delta)
    args.upper_max = check_upper_max(args.upper_max)
    check_eps_low("--eps-low", args.eps_low)
    check_number("--eps-high", args.eps_high, low=0.0)
    bad = [p for p in args.p if not (0 < p <= 1 and math.isfinite(p))]
    if bad:
        raise ValueError(f"--p values must lie in (0, 1], got {bad}")
    if args.plot is not None:
        args.plot = check_plot_path(args.plot)
    return args


def check_plot_path(path: Path) -> Path:
    """The file the figure goes to: ``path``, with ``.png`` added when it has no extension (as matplotlib
    would), in a folder that exists or can be made. ValueError names --plot and what it accepts."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--plot needs matplotlib: pip install 'bandpo[plots]'")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    if path.suffix[1:].lower() not in formats:
        raise ValueError(f"--plot {path}: the extension must be one of {', '.join(sorted(formats))}")
    if path.is_dir():
        raise ValueError(f"--plot {path} is a folder; give a file name such as {path / 'bounds.png'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--plot {path}: cannot make the folder {path.parent}: {error.strerror or error}") from error
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"--plot {path}: the folder {path.parent} is not writable")
    return path


def run_bounds(args: argparse.Namespace) -> int:
    variants = shown_variants(args.relax, args.sided)
    print(bounds_table(args.divergence, args.delta, args.p, args.upper_max, (args.eps_low, args.eps_high), variants))
    if args.plot is not None:
        plot_bounds(
            args.plot, args.divergence, args.delta, args.eps_low, args.eps_high, args.log_p, args.upper_max, variants
        )
        print(f"figure written to {args.plot}")
    return 0
