"""Statistical checks shared by the sampler and kernel tests."""

import torch


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit of observed counts to category probabilities.

    Categories expected fewer than 5 times are pooled into one, so the chi-square approximation
    holds; the p-value is the regularized upper incomplete gamma Q(dof / 2, stat / 2).
    """
    probs = probs.double()
    n = counts.sum().item()
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    dof = keep.sum().item() - 1
    return torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2).item()
