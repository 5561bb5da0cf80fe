"""Mean, spread, the paired and Welch's t-tests for comparing runs over seeds, and Holm's correction for many
comparisons (no SciPy: the Student-t tail is the regularized incomplete beta function, evaluated by its continued
fraction as in Numerical Recipes 6.4)."""
from __future__ import annotations

import math


def mean_std(xs) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    xs = [float(x) for x in xs]
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def _betacf(a: float, b: float, x: float, iters: int = 300, eps: float = 1e-15) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iters + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom (df may be fractional, as Welch's)."""
    if not math.isfinite(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def welch(a, b) -> dict:
    """Welch's unequal-variance t-test of mean(b) - mean(a): {diff, t, df, p}. p is nan when it is undefined
    (fewer than 2 values on a side, or no spread on both sides)."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    na, nb = len(a), len(b)
    out = {"diff": mb - ma, "t": math.nan, "df": math.nan, "p": math.nan}
    if na < 2 or nb < 2:
        return out
    va, vb = sa * sa / na, sb * sb / nb
    if va + vb == 0:
        return out | {"p": 1.0 if mb == ma else 0.0}
    t = (mb - ma) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    return out | {"t": t, "df": df, "p": t_two_sided_p(t, df)}


def paired(a: dict, b: dict) -> dict:
    """The paired t-test of b - a over the seeds both have (a, b: {seed: value}; a variant and its base share
    their seeds): {diff (mean of the differences), t, df, p, n (pairs)}; p is nan with fewer than 2 pairs."""
    seeds = sorted(set(a) & set(b))
    d = [float(b[s]) - float(a[s]) for s in seeds]
    out = {"diff": sum(d) / len(d) if d else math.nan, "t": math.nan, "df": math.nan, "p": math.nan, "n": len(d)}
    if len(d) < 2:
        return out
    m, sd = mean_std(d)
    if sd == 0:
        return out | {"df": len(d) - 1, "p": 1.0 if m == 0 else 0.0}
    t = m / (sd / math.sqrt(len(d)))
    return out | {"t": t, "df": len(d) - 1, "p": t_two_sided_p(t, len(d) - 1)}


def holm(ps) -> list[float]:
    """Holm's step-down adjusted p-values (the family-wise error rate over all of `ps`, in their order); an
    adjusted p under alpha is a comparison that survives the correction. nan stays nan and counts for nothing."""
    order = sorted((p, i) for i, p in enumerate(ps) if math.isfinite(p))
    out, m, running = [math.nan] * len(ps), len(order), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def verdict(test: dict, alpha: float = 0.05, key: str = "p") -> str:
    """A plain word on a test: better / worse at test[key] < alpha, else not significant with that many seeds."""
    p = test[key]
    if not p < alpha:
        n = test.get("n")
        seeds = f" with {n} seeds" if n else ""
        return f"not significant{seeds}" if math.isfinite(p) else "too few seeds to tell"
    return "better" if test["diff"] > 0 else "worse"
