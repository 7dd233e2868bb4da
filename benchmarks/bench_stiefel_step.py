"""One optimizer step on a tall Stiefel matrix: landing vs polar (SVD) vs QR retraction vs geoopt.

Each side is a ``polar_vbll.stiefel.make_stiefel_optimizer`` over its own copy of the same
orthonormal X (n x r) and the same fixed Euclidean gradient; a timed call is ``inner`` steps
(``p.grad = G; optimizer.step()``). Sides alternate round-robin in one run.

    .venv/bin/python benchmarks/bench_stiefel_step.py                # 4096x32 and 11008x64
    .venv/bin/python benchmarks/bench_stiefel_step.py --shapes 4096x32 --repeats 30

Target (issue): landing >= 5x faster than the polar (SVD) retraction at 4096 x 32.
"""

from __future__ import annotations

import warnings

import _common

_common.add_repo_to_path()

import torch  # noqa: E402

SIDES = {  # name -> make_stiefel_optimizer keyword arguments
    "landing": {"method": "landing"},
    "retraction_polar_svd": {"method": "retraction", "retraction": "polar"},
    "retraction_qr": {"method": "retraction", "retraction": "qr"},
    "geoopt_riemannian_adam": {"method": "geoopt"},
}
TARGET_SHAPE = (4096, 32)
TARGET_SPEEDUP = 5.0


def build_side(kwargs, X0, G, lr):
    from polar_vbll.stiefel import make_stiefel_optimizer

    X = torch.nn.Parameter(X0.clone())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated",
                                category=DeprecationWarning)
        optimizer = make_stiefel_optimizer([X], lr=lr, **kwargs)

    def step():
        X.grad = G.clone()  # landing replaces p.grad by the field; give every step a fresh one
        optimizer.step()

    return X, step


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], default_repeats=15)
    parser.add_argument("--shapes", default="4096x32,11008x64",
                        help="comma-separated n x r shapes of the direction matrix")
    parser.add_argument("--inner", type=int, default=0,
                        help="optimizer steps per timed call (0: about 20 ms worth)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--geoopt-max-n", type=int, default=4096,
                        help="measure geoopt only for n up to this (its retraction is O(n^3))")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    _common.apply_threads(args)
    profile = _common.resolve_profile(args.profile)
    device = _common.resolve_device(args.device)
    from polar_vbll.linalg import orthogonality_error

    measurements, ratios, lines = {}, {}, []
    for shape_text in args.shapes.split(","):
        n, r = (int(v) for v in shape_text.lower().split("x"))
        generator = torch.Generator().manual_seed(args.seed)
        X0 = torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=torch.float32))[0]
        G = torch.randn(n, r, generator=generator) / (n * r) ** 0.5
        X0, G = X0.to(device), G.to(device)
        names = [name for name in SIDES
                 if not (SIDES[name]["method"] == "geoopt" and n > args.geoopt_max_n)]
        skipped = [name for name in SIDES if name not in names]
        built = {name: build_side(SIDES[name], X0, G, args.lr) for name in names}
        steps = {name: step for name, (_, step) in built.items()}
        if args.inner > 0:
            inner = {name: args.inner for name in names}
        else:  # calibrate each side so that one timing is ~20 ms (at least one step)
            probe = _common.interleaved(steps, repeats=2, warmup=1, device=device)
            inner = {name: max(1, min(500, int(0.02 / max(min(v), 1e-7))))
                     for name, v in probe.items()}
        times = _common.interleaved(steps, repeats=args.repeats, warmup=2, device=device,
                                    inner=inner)
        key = f"{n}x{r}"
        measurements[key] = {
            "inner_steps_per_timing": inner,
            "skipped": {name: f"geoopt's canonical Stiefel retraction solves an n x n system "
                              f"(O(n^3) per step); skipped for n > --geoopt-max-n "
                              f"{args.geoopt_max_n}" for name in skipped},
            "seconds_per_step": {name: _common.summary(v) for name, v in times.items()},
            "orthogonality_error_after": {
                name: float(orthogonality_error(X.detach().double())) for name, (X, _) in built.items()},
        }
        ratios[key] = {f"{name}_over_landing": _common.ratio(times[name], times["landing"])
                       for name in names if name != "landing"}
        lines += [f"[{key}] one optimizer step (profile {profile.name})"]
        lines += _common.time_table(times, "landing")
        lines += [""]

    target_key = f"{TARGET_SHAPE[0]}x{TARGET_SHAPE[1]}"
    met, notes = None, ""
    if target_key in ratios:
        speedup = ratios[target_key]["retraction_polar_svd_over_landing"]["ratio_of_medians"]
        met = bool(speedup >= TARGET_SPEEDUP)
        lines.append(f"SVD retraction / landing at {target_key}: {speedup:.2f}x")
    else:
        notes = f"target shape {target_key} not measured"
    payload = _common.result(
        "stiefel_step", device, measurements, ratios,
        target=f"landing >= {TARGET_SPEEDUP:g}x faster than the polar (SVD) retraction at "
               f"{target_key} (ratio of medians)", met=met, notes=notes,
        profile=profile.name, repeats=args.repeats, lr=args.lr)
    _common.emit(payload, lines)


if __name__ == "__main__":
    main()
