# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Arrival schedules: sorted int64 nanosecond offsets from the start of a run.

Patterns: ``uniform`` (constant gaps), ``poisson``, ``gamma`` (renewal process with the
burstiness of vLLM's ``--burstiness``), ``burst`` (on-off modulated Poisson) and ``ramp``
(rate changing linearly). Each takes either ``count`` or ``duration_s``.

Reproducibility promise: the random source is NumPy's PCG64 seeded through
``numpy.random.SeedSequence(seed)``, driven through the BitGenerator C API
(``random_standard_exponential`` / ``random_standard_gamma``, NumPy's ziggurat and
Marsaglia-Tsang samplers). Times accumulate sequentially in double-precision nanoseconds and
are rounded to the nearest integer, so a fixed seed gives the same array bit for bit on any
machine with IEEE-754 doubles. ``tests/data/schedule_golden.json`` stores known answers.

Parameters are checked here, in Python-facing code; the kernels below assume valid input.
"""
from __future__ import annotations

import math

import numpy as np

cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.math cimport INFINITY, sqrt
from libc.stdint cimport int64_t
from numpy.random cimport bitgen_t

cnp.import_array()

cdef extern from "numpy/random/distributions.h":
    double random_standard_exponential(bitgen_t *bitgen_state) nogil
    double random_standard_gamma(bitgen_t *bitgen_state, double shape) nogil

cdef double NS_PER_S = 1e9
# Refuse schedules that could not fit in memory instead of dying inside an allocation.
cdef int64_t MAX_ARRIVALS = 1_000_000_000

cdef enum Pattern:
    UNIFORM = 0
    POISSON = 1
    GAMMA = 2
    BURST = 3
    RAMP = 4

cdef struct Params:
    Pattern pattern
    double rate_per_ns       # uniform, poisson, gamma; burst: base rate; ramp: start rate
    double shape             # gamma shape
    double burst_per_ns      # burst rate inside a burst
    double burst_ns          # burst length
    double period_ns         # burst period
    double slope_per_ns2     # ramp: d(rate)/dt
    double ramp_ns           # ramp: time at which the rate reaches its end value
    double end_per_ns        # ramp: end rate (held after ramp_ns)


cdef struct State:
    double t_ns              # time of the last arrival (or 0 before the first)
    int64_t n                # arrivals produced so far


# --- kernels: one step = one arrival; nogil, no checks ------------------------------------

cdef inline double _next_burst(bitgen_t *rng, const Params *p, double t) noexcept nogil:
    """Inverse-intensity step of a piecewise-constant (on-off) Poisson process."""
    cdef double need = random_standard_exponential(rng)   # unit-rate exponential mass
    cdef double phase, seg_end, rate, mass
    while True:
        phase = t - p.period_ns * <double>(<int64_t>(t / p.period_ns))
        if phase < p.burst_ns:
            rate = p.burst_per_ns
            seg_end = t - phase + p.burst_ns
        else:
            rate = p.rate_per_ns
            seg_end = t - phase + p.period_ns
        if seg_end <= t:   # guard against rounding at a boundary
            seg_end = t + 1.0
        mass = rate * (seg_end - t)
        if need <= mass:
            return t + need / rate
        need -= mass
        t = seg_end


cdef inline double _ramp_time(const Params *p, double mass) noexcept nogil:
    """Time at which the ramp's cumulative intensity reaches ``mass``."""
    cdef double a = p.slope_per_ns2
    cdef double r0 = p.rate_per_ns
    cdef double mass_at_end = r0 * p.ramp_ns + 0.5 * a * p.ramp_ns * p.ramp_ns
    if mass >= mass_at_end:
        return p.ramp_ns + (mass - mass_at_end) / p.end_per_ns
    # Solve r0*t + a*t^2/2 = mass in the cancellation-free form.
    return 2.0 * mass / (r0 + sqrt(r0 * r0 + 2.0 * a * mass))


cdef int64_t _fill(bitgen_t *rng, const Params *p, State *s, int64_t[::1] out,
                   int64_t limit, double duration_ns, double *ramp_mass) noexcept nogil:
    """Write arrivals into ``out[s.n:limit]``; stop early at ``duration_ns`` (inf: never).

    Returns the new arrival count; the caller grows ``out`` and calls again when it is full.
    One loop per pattern keeps the branch out of the per-arrival path (~10 ns per arrival).
    """
    cdef double t = s.t_ns
    cdef int64_t i = s.n
    cdef double scale
    if p.pattern == UNIFORM:
        while i < limit:
            t = <double>i / p.rate_per_ns
            if t >= duration_ns:
                break
            out[i] = <int64_t>(t + 0.5)
            i += 1
    elif p.pattern == POISSON:
        scale = 1.0 / p.rate_per_ns
        while i < limit:
            t += random_standard_exponential(rng) * scale
            if t >= duration_ns:
                break
            out[i] = <int64_t>(t + 0.5)
            i += 1
    elif p.pattern == GAMMA:
        scale = 1.0 / (p.shape * p.rate_per_ns)
        while i < limit:
            t += random_standard_gamma(rng, p.shape) * scale
            if t >= duration_ns:
                break
            out[i] = <int64_t>(t + 0.5)
            i += 1
    elif p.pattern == BURST:
        while i < limit:
            t = _next_burst(rng, p, t)
            if t >= duration_ns:
                break
            out[i] = <int64_t>(t + 0.5)
            i += 1
    else:
        while i < limit:
            ramp_mass[0] += random_standard_exponential(rng)
            t = _ramp_time(p, ramp_mass[0])
            if t >= duration_ns:
                break
            out[i] = <int64_t>(t + 0.5)
            i += 1
    s.t_ns = t
    s.n = i
    return i


# --- Python-facing layer: validation, allocation, growth ------------------------------------

def _check_rate(name, value, *, allow_zero=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}; got {value!r}")
    return v


def _check_extent(count, duration_s):
    if (count is None) == (duration_s is None):
        raise ValueError("give exactly one of count or duration_s; "
                         f"got count={count!r}, duration_s={duration_s!r}")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
            raise ValueError(f"count must be an integer; got {count!r}")
        if count < 0 or count > MAX_ARRIVALS:
            raise ValueError(f"count must be in [0, {MAX_ARRIVALS}]; got {count!r}")
        return int(count), -1.0
    d = _check_rate("duration_s", duration_s, allow_zero=True)
    return None, d * NS_PER_S


def _bitgen(seed):
    if seed is None:
        raise ValueError("seed is required (an int or a numpy.random.SeedSequence); "
                         "schedules are never seeded from the clock")
    if isinstance(seed, np.random.SeedSequence):
        seq = seed
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        seq = np.random.SeedSequence(int(seed))
    else:
        raise ValueError(f"seed must be a non-negative int or a SeedSequence; got {seed!r}")
    return np.random.PCG64(seq)


cdef object _generate(Params p, object count, double duration_ns, double mean_rate_per_ns,
                      object seed):
    cdef State s
    cdef double ramp_mass = 0.0
    cdef int64_t limit, capacity, expected
    cdef bitgen_t *rng = NULL
    cdef int64_t[::1] view
    s.t_ns = 0.0
    s.n = 0
    # The bit generator must outlive the nogil loop: keep a reference in `bit_generator`.
    bit_generator = None
    if p.pattern != UNIFORM:
        bit_generator = _bitgen(seed)
        rng = <bitgen_t *> PyCapsule_GetPointer(bit_generator.capsule, "BitGenerator")
    if count is not None:
        limit = count
        out = np.empty(limit, dtype=np.int64)
        view = out
        with nogil:
            _fill(rng, &p, &s, view, limit, INFINITY, &ramp_mass)
        return out
    expected_f = mean_rate_per_ns * duration_ns
    if expected_f > MAX_ARRIVALS:
        raise ValueError(f"rate x duration asks for about {expected_f:.3g} arrivals, more than "
                         f"the {MAX_ARRIVALS} cpbench will hold; shorten duration_s")
    expected = <int64_t>expected_f
    capacity = expected + 10 * <int64_t>sqrt(<double>expected + 1.0) + 16
    out = np.empty(capacity, dtype=np.int64)
    while True:
        view = out
        with nogil:
            _fill(rng, &p, &s, view, capacity, duration_ns, &ramp_mass)
        if s.n < capacity:
            return out[:s.n].copy()
        if capacity >= MAX_ARRIVALS:
            raise ValueError(f"schedule exceeded {MAX_ARRIVALS} arrivals; shorten duration_s")
        capacity = min(capacity + capacity // 2 + 16, MAX_ARRIVALS)
        out = np.resize(out, capacity)


def uniform(rate_rps, *, count=None, duration_s=None):
    """Constant gaps of ``1 / rate_rps`` seconds, the first arrival at 0.

    Parameters
    ----------
    rate_rps : float
        Arrivals per second, > 0.
    count : int, optional
        Number of arrivals. Exactly one of ``count`` and ``duration_s``.
    duration_s : float, optional
        Arrivals strictly before this many seconds.

    Returns
    -------
    numpy.ndarray
        Sorted int64 nanosecond offsets.
    """
    cdef Params p
    rate = _check_rate("rate_rps", rate_rps)
    n, duration_ns = _check_extent(count, duration_s)
    p.pattern = UNIFORM
    p.rate_per_ns = rate / NS_PER_S
    return _generate(p, n, duration_ns, p.rate_per_ns, None)


def poisson(rate_rps, *, count=None, duration_s=None, seed=None):
    """Poisson arrivals: independent exponential gaps with mean ``1 / rate_rps``.

    Parameters
    ----------
    rate_rps : float
        Mean arrivals per second, > 0.
    count, duration_s
        Exactly one: the number of arrivals, or the time span in seconds.
    seed : int or numpy.random.SeedSequence
        Required; the same seed gives the same schedule bit for bit.
    """
    cdef Params p
    rate = _check_rate("rate_rps", rate_rps)
    n, duration_ns = _check_extent(count, duration_s)
    p.pattern = POISSON
    p.rate_per_ns = rate / NS_PER_S
    return _generate(p, n, duration_ns, p.rate_per_ns, seed)


def gamma(rate_rps, shape, *, count=None, duration_s=None, seed=None):
    """Gamma renewal process, vLLM's ``--burstiness``: mean rate ``rate_rps``, gap CV ``1/sqrt(shape)``.

    ``shape`` = 1 is Poisson; < 1 is burstier; > 1 is smoother.
    """
    cdef Params p
    rate = _check_rate("rate_rps", rate_rps)
    k = _check_rate("shape", shape)
    n, duration_ns = _check_extent(count, duration_s)
    p.pattern = GAMMA
    p.rate_per_ns = rate / NS_PER_S
    p.shape = k
    return _generate(p, n, duration_ns, p.rate_per_ns, seed)


def burst(base_rps, burst_rps, burst_s, period_s, *, count=None, duration_s=None, seed=None):
    """On-off modulated Poisson: ``burst_rps`` for the first ``burst_s`` of every ``period_s``,
    ``base_rps`` (may be 0: silence) for the rest of the period.
    """
    cdef Params p
    base = _check_rate("base_rps", base_rps, allow_zero=True)
    peak = _check_rate("burst_rps", burst_rps)
    on_s = _check_rate("burst_s", burst_s)
    period = _check_rate("period_s", period_s)
    if peak < base:
        raise ValueError(f"burst_rps must be >= base_rps; got burst_rps={burst_rps!r} "
                         f"< base_rps={base_rps!r}")
    if on_s > period:
        raise ValueError(f"burst_s must be <= period_s; got burst_s={burst_s!r} "
                         f"> period_s={period_s!r}")
    n, duration_ns = _check_extent(count, duration_s)
    p.pattern = BURST
    p.rate_per_ns = base / NS_PER_S
    p.burst_per_ns = peak / NS_PER_S
    p.burst_ns = on_s * NS_PER_S
    p.period_ns = period * NS_PER_S
    mean_rate = (peak * on_s + base * (period - on_s)) / period
    return _generate(p, n, duration_ns, mean_rate / NS_PER_S, seed)


def ramp(start_rps, end_rps, *, count=None, duration_s=None, seed=None):
    """Poisson arrivals whose rate moves linearly from ``start_rps`` to ``end_rps``.

    With ``duration_s`` the ramp spans the whole duration. With ``count`` it spans the time in
    which ``count`` arrivals are expected, ``2 * count / (start_rps + end_rps)``; arrivals that
    fall later see ``end_rps``.
    """
    cdef Params p
    r0 = _check_rate("start_rps", start_rps, allow_zero=True)
    r1 = _check_rate("end_rps", end_rps)
    n, duration_ns = _check_extent(count, duration_s)
    ramp_ns = duration_ns if n is None else 2.0 * n / (r0 + r1) * NS_PER_S
    p.pattern = RAMP
    p.rate_per_ns = r0 / NS_PER_S
    p.end_per_ns = r1 / NS_PER_S
    p.ramp_ns = ramp_ns if ramp_ns > 0 else 1.0
    p.slope_per_ns2 = (p.end_per_ns - p.rate_per_ns) / p.ramp_ns
    return _generate(p, n, duration_ns, 0.5 * (r0 + r1) / NS_PER_S, seed)
