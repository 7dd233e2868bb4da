"""Temperature scaling (Guo et al. 2017): one T > 0 on a trained model's logits, fitted post hoc.

softmax(z / T) keeps every answer (the argmax does not move) and only changes how sure the model
is; T is fitted by minimizing the NLL of the validation questions, so T > 1 softens an
overconfident model. The ``temperature`` method applies it to a trained ``mle``.
"""

from __future__ import annotations

import torch


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T > 0 minimizing validation NLL of softmax(logits / T) (L-BFGS on log T),
    clamped to [0.05, 20]; absent choices (-inf logits) stay absent."""
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100, line_search_fn="strong_wolfe")
    finite = logits.masked_fill(~torch.isfinite(logits), -1e4)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(finite / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


__all__ = ["fit_temperature"]
