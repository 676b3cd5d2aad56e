import numpy as np
import numpy.typing as npt

Seed = int | np.random.SeedSequence

def uniform(
    rate_rps: float, *, count: int | None = ..., duration_s: float | None = ...
) -> npt.NDArray[np.int64]: ...  # int64_t[::1] nanoseconds
def poisson(
    rate_rps: float, *, count: int | None = ..., duration_s: float | None = ..., seed: Seed
) -> npt.NDArray[np.int64]: ...
def gamma(
    rate_rps: float, shape: float, *, count: int | None = ..., duration_s: float | None = ...,
    seed: Seed,
) -> npt.NDArray[np.int64]: ...
def burst(
    base_rps: float, burst_rps: float, burst_s: float, period_s: float, *,
    count: int | None = ..., duration_s: float | None = ..., seed: Seed,
) -> npt.NDArray[np.int64]: ...
def ramp(
    start_rps: float, end_rps: float, *, count: int | None = ..., duration_s: float | None = ...,
    seed: Seed,
) -> npt.NDArray[np.int64]: ...
