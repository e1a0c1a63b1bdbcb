"""Launch-size arithmetic for the Triton launchers, in plain Python ints: triton.cdiv and
triton.next_power_of_2 are constexpr functions in recent Triton (3.9 here), whose every host call unwraps its
arguments (about 2 us; an autoencoder training step made 38 such calls, 12% of its Python time on
the CI machine with the launches stubbed out). Same results as Triton's."""


def cdiv(x: int, y: int) -> int:
    return (x + y - 1) // y


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n (0 for 0, as Triton's)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0
