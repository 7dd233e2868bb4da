"""BLoB's training sample: flipout vs plain reparameterization, gradient variance and step time.

Both are unbiased one-sample estimates of the gradient of E_q[cross-entropy]; they differ in
how much they vary from draw to draw. Flipout flips the signs of one perturbation of A
independently for every token, so the tokens of a batch see decorrelated perturbations;
reparameterization draws one A = M + sigma o E for the whole step. This script takes the
committed course-profile ``mle`` fine-tune's adapters and head (a trained B, so that the noise
in A reaches the loss), makes them BLoB adapters with a given posterior std (``--sigma``), and on
one batch of ARC-Easy training questions computes the cross-entropy's gradient in the posterior
mean M and in B for ``--draws`` draws of each kind (round-robin). It reports the total variance
(the trace of the gradient's covariance, summed over every entry) of each and their ratio, and
the time of one forward + backward.

    .venv/bin/python benchmarks/bench_blob_sampling.py --draws 24
"""

from __future__ import annotations

import _common

_common.add_repo_to_path()


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], default_repeats=1)
    parser.add_argument("--draws", type=int, default=24, help="gradient draws per kind")
    parser.add_argument("--questions", type=int, default=4, help="ARC-Easy train questions")
    parser.add_argument("--sigma", type=float, default=0.05, help="posterior std of every A entry")
    args = parser.parse_args()
    _common.apply_threads(args)
    import time

    import torch
    import torch.nn.functional as F

    from polar_vbll import blob, data, pretrained
    from polar_vbll.methods import Method
    from polar_vbll.runs import ARC, Run

    profile = _common.resolve_profile(args.profile)
    path, _ = pretrained.find(Run("mle", ARC, profile, 0))
    if path is None:
        raise SystemExit(f"no committed mle run at the {profile.name} profile")
    method = Method.load(path, progress=False)
    adapters = blob.make_variational(method.model, method.adapters, seed=0)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.lora_A_rho.fill_(args.sigma ** 0.5)
    examples = data.load_task("arc_easy", "train")[: args.questions]
    method.form.prepare(examples)
    batch = method.form.encode(examples)
    method.model.train()
    means = [a.lora_A for a in adapters.values()]
    factors = [a.lora_B for a in adapters.values()]

    def gradient(kind: str) -> tuple[torch.Tensor, float]:
        if kind == "reparameterization":
            blob.draw_posterior_sample(adapters)
        start = time.perf_counter()
        logits = method.head(method.form.features(batch), batch["choice_mask"])
        loss = F.cross_entropy(logits, batch["labels"])
        grads = torch.autograd.grad(loss, means + factors)
        seconds = time.perf_counter() - start
        blob.clear_posterior_sample(adapters)
        return torch.cat([g.flatten() for g in grads]).double(), seconds

    torch.manual_seed(0)
    kinds = ("flipout", "reparameterization")
    draws = {kind: [] for kind in kinds}
    seconds = {kind: [] for kind in kinds}
    for index in range(args.draws):
        for kind in (kinds if index % 2 == 0 else kinds[::-1]):
            value, took = gradient(kind)
            draws[kind].append(value)
            seconds[kind].append(took)
    count_mean = sum(m.numel() for m in means)
    measurements = {"questions": args.questions, "draws": args.draws, "sigma": args.sigma,
                    "checkpoint": path.name, "seconds_per_draw": {}, "total_variance": {}}
    for kind in kinds:
        stacked = torch.stack(draws[kind])  # (draws, parameters)
        variance = stacked.var(0)
        measurements["total_variance"][kind] = {
            "mean_A": float(variance[:count_mean].sum()), "B": float(variance[count_mean:].sum())}
        measurements["seconds_per_draw"][kind] = _common.summary(seconds[kind])
    ratio = {part: measurements["total_variance"]["reparameterization"][part]
             / measurements["total_variance"]["flipout"][part] for part in ("mean_A", "B")}
    lines = [f"gradient variance over {args.draws} draws, {args.questions} questions, "
             f"sigma {args.sigma}: reparameterization / flipout = {ratio['mean_A']:.2f} (in the "
             f"mean of A), {ratio['B']:.2f} (in B)"]
    payload = _common.result(
        "blob_sampling", torch.device("cpu"), measurements,
        {"reparameterization_over_flipout_variance": ratio},
        target="none (information: which training sample BLoB uses)", met=None,
        profile=profile.name, repeats=args.draws)
    _common.emit(payload, lines)


if __name__ == "__main__":
    main()
