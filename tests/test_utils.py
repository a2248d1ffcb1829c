"""Tests for tfx.utils: tltorch parity, the tensorization search, warnings and errors."""

from __future__ import annotations

import itertools
import logging
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tfx.utils
from tfx._errors import ShapeError, TfxWarning
from tfx.utils import balanced_tensorization, get_tensorized_shape, tensorizations

# --------------------------------------------------------------------------- #
# Reference results from the real tltorch 0.5.0 (torch 2.13.0, CPU), generated
# in a scratch venv by this script (abridged: the one run printed the two lists
# below, which are pasted here as printed):
#
#   import itertools
#   from tltorch.utils import get_tensorized_shape
#   PAIRS = [(768, 3072), (3072, 768), (4096, 4096), (1024, 4096), (4096, 11008),
#            (11008, 4096), (30522, 768), (768, 30522), (512, 512), (512, 2048),
#            (1024, 1024), (100, 10), (10, 100), (64, 64), (11, 4096), (4096, 97)]
#   for (i, o), order, md in itertools.product(PAIRS, [None, 2, 3, 4], [2, 4]):
#       a, b = get_tensorized_shape(i, o, order=order, min_dim=md, verbose=False)
#       good = (len(a) == order if order else len(a) >= 2) and min(a + b) >= md
#       print("TENSORIZES" if good else "DEGENERATE", ((i, o, order, md), (a, b)))
#
# TLTORCH_TENSORIZES: tltorch returned `order` factors (or >= 2 for order=None),
# all >= min_dim; tfx must agree exactly and stay silent.
# TLTORCH_DEGENERATE: tltorch silently returned fewer factors; tfx returns the
# same shapes but warns.
# --------------------------------------------------------------------------- #

TLTORCH_TENSORIZES = [
    ((768, 3072, None, 2), ((2, 2, 2, 2, 2, 2, 2, 2, 3), (2, 2, 2, 2, 2, 2, 2, 4, 6))),
    ((768, 3072, None, 4), ((4, 4, 4, 12), (4, 4, 12, 16))),
    ((768, 3072, 2, 2), ((16, 48), (24, 128))),
    ((768, 3072, 2, 4), ((16, 48), (16, 192))),
    ((768, 3072, 3, 2), ((4, 12, 16), (8, 16, 24))),
    ((768, 3072, 3, 4), ((4, 12, 16), (12, 16, 16))),
    ((768, 3072, 4, 2), ((4, 4, 4, 12), (4, 6, 8, 16))),
    ((768, 3072, 4, 4), ((4, 4, 4, 12), (4, 4, 12, 16))),
    ((3072, 768, None, 2), ((2, 2, 2, 2, 2, 2, 3, 4, 4), (2, 2, 2, 2, 2, 2, 2, 2, 3))),
    ((3072, 768, None, 4), ((4, 4, 12, 16), (4, 4, 4, 12))),
    ((3072, 768, 2, 2), ((16, 192), (16, 48))),
    ((3072, 768, 2, 4), ((16, 192), (16, 48))),
    ((3072, 768, 3, 2), ((12, 16, 16), (4, 12, 16))),
    ((3072, 768, 3, 4), ((12, 16, 16), (4, 12, 16))),
    ((3072, 768, 4, 2), ((4, 4, 12, 16), (4, 4, 4, 12))),
    ((3072, 768, 4, 4), ((4, 4, 12, 16), (4, 4, 4, 12))),
    (
        (4096, 4096, None, 2),
        ((2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2), (2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2)),
    ),
    ((4096, 4096, None, 4), ((4, 4, 4, 4, 4, 4), (4, 4, 4, 4, 4, 4))),
    ((4096, 4096, 2, 2), ((16, 256), (16, 256))),
    ((4096, 4096, 2, 4), ((16, 256), (16, 256))),
    ((4096, 4096, 3, 2), ((16, 16, 16), (16, 16, 16))),
    ((4096, 4096, 3, 4), ((16, 16, 16), (16, 16, 16))),
    ((4096, 4096, 4, 2), ((4, 4, 16, 16), (4, 4, 16, 16))),
    ((4096, 4096, 4, 4), ((4, 4, 16, 16), (4, 4, 16, 16))),
    ((1024, 4096, None, 2), ((2, 2, 2, 2, 2, 2, 2, 2, 2, 2), (2, 2, 2, 2, 2, 2, 2, 2, 4, 4))),
    ((1024, 4096, None, 4), ((4, 4, 4, 4, 4), (4, 4, 4, 4, 16))),
    ((1024, 4096, 2, 2), ((16, 64), (16, 256))),
    ((1024, 4096, 2, 4), ((16, 64), (16, 256))),
    ((1024, 4096, 3, 2), ((4, 16, 16), (16, 16, 16))),
    ((1024, 4096, 3, 4), ((4, 16, 16), (16, 16, 16))),
    ((1024, 4096, 4, 2), ((4, 4, 4, 16), (4, 4, 16, 16))),
    ((1024, 4096, 4, 4), ((4, 4, 4, 16), (4, 4, 16, 16))),
    ((4096, 11008, None, 2), ((2, 2, 2, 2, 2, 2, 4, 4, 4), (2, 2, 2, 2, 2, 2, 2, 2, 43))),
    ((4096, 11008, None, 4), ((4, 4, 4, 4, 16), (4, 4, 4, 4, 43))),
    ((4096, 11008, 2, 2), ((16, 256), (43, 256))),
    ((4096, 11008, 2, 4), ((16, 256), (43, 256))),
    ((4096, 11008, 3, 2), ((16, 16, 16), (16, 16, 43))),
    ((4096, 11008, 3, 4), ((16, 16, 16), (16, 16, 43))),
    ((4096, 11008, 4, 2), ((4, 4, 16, 16), (4, 4, 16, 43))),
    ((4096, 11008, 4, 4), ((4, 4, 16, 16), (4, 4, 16, 43))),
    ((11008, 4096, None, 2), ((2, 2, 2, 2, 2, 2, 2, 2, 43), (2, 2, 2, 2, 2, 2, 2, 4, 8))),
    ((11008, 4096, None, 4), ((4, 4, 4, 4, 43), (4, 4, 4, 4, 16))),
    ((11008, 4096, 2, 2), ((43, 256), (32, 128))),
    ((11008, 4096, 2, 4), ((43, 256), (16, 256))),
    ((11008, 4096, 3, 2), ((16, 16, 43), (8, 16, 32))),
    ((11008, 4096, 3, 4), ((16, 16, 43), (16, 16, 16))),
    ((11008, 4096, 4, 2), ((4, 4, 16, 43), (4, 8, 8, 16))),
    ((11008, 4096, 4, 4), ((4, 4, 16, 43), (4, 4, 16, 16))),
    ((30522, 768, None, 2), ((2, 3, 5087), (2, 4, 96))),
    ((30522, 768, None, 4), ((6, 5087), (16, 48))),
    ((30522, 768, 2, 2), ((6, 5087), (8, 96))),
    ((30522, 768, 2, 4), ((6, 5087), (16, 48))),
    ((30522, 768, 3, 2), ((2, 3, 5087), (2, 4, 96))),
    ((768, 30522, None, 2), ((4, 12, 16), (2, 3, 5087))),
    ((768, 30522, None, 4), ((16, 48), (6, 5087))),
    ((768, 30522, 2, 2), ((16, 48), (6, 5087))),
    ((768, 30522, 2, 4), ((16, 48), (6, 5087))),
    ((768, 30522, 3, 2), ((4, 12, 16), (2, 3, 5087))),
    ((512, 512, None, 2), ((2, 2, 2, 2, 2, 2, 2, 2, 2), (2, 2, 2, 2, 2, 2, 2, 2, 2))),
    ((512, 512, None, 4), ((4, 4, 4, 8), (4, 4, 4, 8))),
    ((512, 512, 2, 2), ((16, 32), (16, 32))),
    ((512, 512, 2, 4), ((16, 32), (16, 32))),
    ((512, 512, 3, 2), ((4, 8, 16), (4, 8, 16))),
    ((512, 512, 3, 4), ((4, 8, 16), (4, 8, 16))),
    ((512, 512, 4, 2), ((4, 4, 4, 8), (4, 4, 4, 8))),
    ((512, 512, 4, 4), ((4, 4, 4, 8), (4, 4, 4, 8))),
    ((512, 2048, None, 2), ((2, 2, 2, 2, 2, 2, 2, 2, 2), (2, 2, 2, 2, 2, 2, 2, 4, 4))),
    ((512, 2048, None, 4), ((4, 4, 4, 8), (4, 4, 8, 16))),
    ((512, 2048, 2, 2), ((16, 32), (16, 128))),
    ((512, 2048, 2, 4), ((16, 32), (16, 128))),
    ((512, 2048, 3, 2), ((4, 8, 16), (8, 16, 16))),
    ((512, 2048, 3, 4), ((4, 8, 16), (8, 16, 16))),
    ((512, 2048, 4, 2), ((4, 4, 4, 8), (4, 4, 8, 16))),
    ((512, 2048, 4, 4), ((4, 4, 4, 8), (4, 4, 8, 16))),
    ((1024, 1024, None, 2), ((2, 2, 2, 2, 2, 2, 2, 2, 2, 2), (2, 2, 2, 2, 2, 2, 2, 2, 2, 2))),
    ((1024, 1024, None, 4), ((4, 4, 4, 4, 4), (4, 4, 4, 4, 4))),
    ((1024, 1024, 2, 2), ((16, 64), (16, 64))),
    ((1024, 1024, 2, 4), ((16, 64), (16, 64))),
    ((1024, 1024, 3, 2), ((4, 16, 16), (4, 16, 16))),
    ((1024, 1024, 3, 4), ((4, 16, 16), (4, 16, 16))),
    ((1024, 1024, 4, 2), ((4, 4, 4, 16), (4, 4, 4, 16))),
    ((1024, 1024, 4, 4), ((4, 4, 4, 16), (4, 4, 4, 16))),
    ((100, 10, None, 2), ((5, 20), (2, 5))),
    ((100, 10, 2, 2), ((5, 20), (2, 5))),
    ((10, 100, None, 2), ((2, 5), (4, 25))),
    ((10, 100, 2, 2), ((2, 5), (4, 25))),
    ((64, 64, None, 2), ((2, 2, 2, 2, 2, 2), (2, 2, 2, 2, 2, 2))),
    ((64, 64, None, 4), ((4, 4, 4), (4, 4, 4))),
    ((64, 64, 2, 2), ((4, 16), (4, 16))),
    ((64, 64, 2, 4), ((4, 16), (4, 16))),
    ((64, 64, 3, 2), ((4, 4, 4), (4, 4, 4))),
    ((64, 64, 3, 4), ((4, 4, 4), (4, 4, 4))),
    ((64, 64, 4, 2), ((2, 2, 4, 4), (2, 2, 4, 4))),
]
TLTORCH_DEGENERATE = [
    ((30522, 768, 3, 4), ((6, 5087), (16, 48))),
    ((30522, 768, 4, 2), ((2, 3, 5087), (2, 4, 96))),
    ((30522, 768, 4, 4), ((6, 5087), (16, 48))),
    ((768, 30522, 3, 4), ((16, 48), (6, 5087))),
    ((768, 30522, 4, 2), ((4, 12, 16), (2, 3, 5087))),
    ((768, 30522, 4, 4), ((16, 48), (6, 5087))),
    ((100, 10, None, 4), ((100,), (10,))),
    ((100, 10, 2, 4), ((100,), (10,))),
    ((100, 10, 3, 2), ((5, 20), (2, 5))),
    ((100, 10, 3, 4), ((100,), (10,))),
    ((100, 10, 4, 2), ((5, 20), (2, 5))),
    ((100, 10, 4, 4), ((100,), (10,))),
    ((10, 100, None, 4), ((10,), (100,))),
    ((10, 100, 2, 4), ((10,), (100,))),
    ((10, 100, 3, 2), ((2, 5), (4, 25))),
    ((10, 100, 3, 4), ((10,), (100,))),
    ((10, 100, 4, 2), ((2, 5), (4, 25))),
    ((10, 100, 4, 4), ((10,), (100,))),
    ((64, 64, 4, 4), ((4, 4, 4), (4, 4, 4))),
    ((11, 4096, None, 2), ((11,), (4096,))),
    ((11, 4096, None, 4), ((11,), (4096,))),
    ((11, 4096, 2, 2), ((11,), (4096,))),
    ((11, 4096, 2, 4), ((11,), (4096,))),
    ((11, 4096, 3, 2), ((11,), (4096,))),
    ((11, 4096, 3, 4), ((11,), (4096,))),
    ((11, 4096, 4, 2), ((11,), (4096,))),
    ((11, 4096, 4, 4), ((11,), (4096,))),
    ((4096, 97, None, 2), ((4096,), (97,))),
    ((4096, 97, None, 4), ((4096,), (97,))),
    ((4096, 97, 2, 2), ((4096,), (97,))),
    ((4096, 97, 2, 4), ((4096,), (97,))),
    ((4096, 97, 3, 2), ((4096,), (97,))),
    ((4096, 97, 3, 4), ((4096,), (97,))),
    ((4096, 97, 4, 2), ((4096,), (97,))),
    ((4096, 97, 4, 4), ((4096,), (97,))),
]


Case = tuple[tuple[int, int, "int | None", int], tuple[tuple[int, ...], tuple[int, ...]]]


def _case_id(case: Case) -> str:
    (in_features, out_features, order, min_dim), _ = case
    return f"{in_features}x{out_features}-order{order}-min{min_dim}"


@pytest.mark.parametrize("case", TLTORCH_TENSORIZES, ids=_case_id)
def test_get_tensorized_shape_matches_tltorch(case: Case) -> None:
    (in_features, out_features, order, min_dim), expected = case
    assert get_tensorized_shape(in_features, out_features, order, min_dim) == expected


@pytest.mark.parametrize("case", TLTORCH_DEGENERATE, ids=_case_id)
def test_get_tensorized_shape_warns_where_tltorch_lowers_the_order(case: Case) -> None:
    (in_features, out_features, order, min_dim), expected = case
    with pytest.warns(
        TfxWarning, match=r"(?s)Could not tensorize .* instead: .*\(as tltorch does\)"
    ):
        got = get_tensorized_shape(in_features, out_features, order, min_dim)
    assert got == expected


def test_reference_table_is_large_enough() -> None:
    assert len(TLTORCH_TENSORIZES) + len(TLTORCH_DEGENERATE) >= 30


def test_get_tensorized_shape_keywords_match_tltorch() -> None:
    got = get_tensorized_shape(
        in_features=768, out_features=3072, order=3, min_dim=2, verbose=False
    )
    assert got == ((4, 12, 16), (8, 16, 24))


def test_get_tensorized_shape_accepts_integer_scalars() -> None:
    np = pytest.importorskip("numpy")
    got = get_tensorized_shape(np.int64(768), np.int32(3072), order=np.int64(3))
    assert got == ((4, 12, 16), (8, 16, 24))
    assert all(type(f) is int for f in got[0] + got[1])


# --------------------------------------------------------------------------- #
# Warnings
# --------------------------------------------------------------------------- #


def test_get_tensorized_shape_warns_for_prime_in_features() -> None:
    with pytest.warns(TfxWarning, match=r"in_features=11 is prime") as record:
        got = get_tensorized_shape(11, 4096, order=3)
    assert got == ((11,), (4096,))
    message = str(record[0].message)
    assert "order 1 (no tensorization)" in message
    assert "in_features=12 (= 2 x 2 x 3)" in message
    assert "in_tensorized_features=" in message


def test_get_tensorized_shape_warns_for_prime_out_features_with_automatic_order() -> None:
    with pytest.warns(TfxWarning, match=r"out_features=97 is prime") as record:
        got = get_tensorized_shape(4096, 97)
    assert got == ((4096,), (97,))
    assert "out_features=98 (= 7 x 14)" in str(record[0].message)


def test_get_tensorized_shape_warns_and_suggests_the_order_that_fits() -> None:
    with pytest.warns(TfxWarning, match=r"out_features=10 splits into at most 2 factor") as record:
        got = get_tensorized_shape(4096, 10, order=3)
    assert got == ((16, 256), (2, 5))
    assert "order=2" in str(record[0].message)


def test_get_tensorized_shape_warns_when_size_below_min_dim() -> None:
    with pytest.warns(TfxWarning, match=r"in_features=3 is smaller than min_dim=4"):
        got = get_tensorized_shape(3, 4096, order=1, min_dim=4)
    assert got == ((3,), (4096,))


def test_get_tensorized_shape_warning_points_at_the_caller() -> None:
    with pytest.warns(TfxWarning) as record:
        get_tensorized_shape(13, 64, order=2)
    assert record[0].filename == __file__


def test_get_tensorized_shape_skips_padding_hint_when_it_would_quadruple_the_layer() -> None:
    with pytest.warns(TfxWarning, match=r"in_features=3 is prime") as record:
        get_tensorized_shape(3, 10, order=5)
    assert "in_features=32" not in str(record[0].message)


def test_get_tensorized_shape_handles_huge_order_quickly() -> None:
    with pytest.warns(TfxWarning, match=r"ask for the order that fits: order=2"):
        got = get_tensorized_shape(4096, 10, order=10**6)
    assert got == ((16, 256), (2, 5))


# --------------------------------------------------------------------------- #
# Deliberate differences from tltorch
# --------------------------------------------------------------------------- #


def test_get_tensorized_shape_finds_split_that_tltorch_greedy_misses() -> None:
    # tltorch 0.5 returns ((8, 125), (64, 64)): its greedy split of 1000 with
    # min_dim=6 stops at 8 x 125 although 10 x 10 x 10 exists.
    assert get_tensorized_shape(1000, 4096, order=3, min_dim=6) == ((10, 10, 10), (8, 8, 64))


def test_get_tensorized_shape_pads_with_ones_when_min_dim_is_one() -> None:
    # tltorch 0.5 recurses forever for min_dim=1.
    assert get_tensorized_shape(11, 4096, order=3, min_dim=1) == ((1, 1, 11), (16, 16, 16))


def test_get_tensorized_shape_verbose_logs_instead_of_printing(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.INFO, logger="tfx.utils"):
        get_tensorized_shape(768, 3072, order=3, verbose=True)
    assert "Tensorizing (in, out)=(768, 3072) -> ((4, 12, 16), (8, 16, 24))" in caplog.text
    assert capsys.readouterr().out == ""


def test_get_tensorized_shape_is_quiet_by_default(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="tfx.utils"):
        get_tensorized_shape(768, 3072, order=3)
    assert caplog.records == []


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_features": 0}, r"(?s)in_features=0 is not a valid feature count.*>= 1.*Fix:"),
        ({"in_features": -768}, r"in_features=-768 is not a valid feature count"),
        ({"out_features": 0}, r"out_features=0 is not a valid feature count"),
        ({"in_features": 768.0}, r"(?s)in_features=768.0 .*got float"),
        ({"out_features": "3072"}, r"(?s)out_features='3072' .*got str"),
        ({"in_features": True}, r"(?s)in_features=True .*got bool"),
        ({"order": 0}, r"(?s)order=0 is not a valid tensorization order.*Fix: pass order=None"),
        ({"order": -2}, r"order=-2 is not a valid tensorization order"),
        ({"order": 2.5}, r"(?s)order=2.5 .*got float"),
        ({"min_dim": 0}, r"(?s)min_dim=0 is not a valid smallest factor.*Fix: pass min_dim >= 1"),
        ({"min_dim": -1}, r"min_dim=-1 is not a valid smallest factor"),
    ],
)
def test_get_tensorized_shape_raises_on_invalid_input(
    kwargs: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {"in_features": 768, "out_features": 3072, "order": 3, "min_dim": 2}
    args.update(kwargs)
    with pytest.raises(ShapeError, match=match):
        get_tensorized_shape(**args)  # type: ignore[arg-type]


def test_shape_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"in_features=0"):
        get_tensorized_shape(0, 10)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 2, 2), r"n=0 is not a valid size to tensorize"),
        ((12, 0, 2), r"order=0 is not a valid tensorization order"),
        ((12, 2, 0), r"min_dim=0 is not a valid smallest factor"),
        ((12.0, 2, 2), r"(?s)n=12.0 .*got float"),
    ],
)
@pytest.mark.parametrize("function", [tensorizations, balanced_tensorization])
def test_tensorizations_raise_on_invalid_input(
    function: object, args: tuple[object, object, object], match: str
) -> None:
    n, order, min_dim = args
    with pytest.raises(ShapeError, match=match):
        function(n, order, min_dim=min_dim)  # type: ignore[operator]


# --------------------------------------------------------------------------- #
# tensorizations, balanced_tensorization
# --------------------------------------------------------------------------- #


def test_tensorizations_lists_non_increasing_tuples_most_balanced_first() -> None:
    assert tensorizations(24, 3) == [(4, 3, 2), (6, 2, 2)]
    assert tensorizations(144, 3)[:3] == [(6, 6, 4), (8, 6, 3), (9, 4, 4)]


def test_tensorizations_empty_for_prime_and_order_one_is_identity() -> None:
    assert tensorizations(97, 2) == []
    assert tensorizations(97, 1) == [(97,)]
    assert tensorizations(3, 1, min_dim=4) == []


def test_tensorizations_min_dim_one_pads_with_ones() -> None:
    assert tensorizations(4, 3, min_dim=1) == [(2, 2, 1), (4, 1, 1)]
    assert tensorizations(1, 2, min_dim=1) == [(1, 1)]


def test_tensorizations_returns_a_fresh_list() -> None:
    first = tensorizations(24, 3)
    first.append((24, 1, 1))
    first.reverse()
    assert tensorizations(24, 3) == [(4, 3, 2), (6, 2, 2)]


@pytest.mark.parametrize("order", [2, 3, 4, 5, 6])
def test_tensorizations_handles_large_highly_composite_sizes(order: int) -> None:
    found = tensorizations(720720, order)
    assert found and all(math.prod(t) == 720720 and len(t) == order for t in found)
    assert len(set(found)) == len(found)


def test_balanced_tensorization_examples() -> None:
    assert balanced_tensorization(4096, 3) == (16, 16, 16)
    assert balanced_tensorization(3072, 3) == (16, 16, 12)
    assert balanced_tensorization(1_000_000, 6) == (10, 10, 10, 10, 10, 10)
    # 720720 = 2^4 3^2 5 7 11 13: 13 must be a factor, and 13 is reached.
    assert balanced_tensorization(720720, 6) == (13, 11, 10, 9, 8, 7)
    assert balanced_tensorization(11, 2) is None
    assert balanced_tensorization(24, 3, min_dim=3) is None


def test_all_lists_the_public_functions() -> None:
    # The tensorization search lives with the core; tfx.utils is its tltorch path.
    defined_here = {
        name
        for name, value in vars(tfx.utils).items()
        if not name.startswith("_")
        and getattr(value, "__module__", None) == "tfx.tensors._tensorize"
    }
    reexported = {
        "FactorList",
        "ComplexFactorList",
        "ParameterList",
    }  # tltorch.utils' classes, kept at its path
    assert sorted(tfx.utils.__all__) == sorted(defined_here | reexported)
    assert all(hasattr(tfx.utils, name) for name in reexported)
    assert all(">>> " in (getattr(tfx.utils, name).__doc__ or "") for name in defined_here)


# --------------------------------------------------------------------------- #
# Properties
# --------------------------------------------------------------------------- #

sizes = st.integers(min_value=1, max_value=50_000)
orders = st.integers(min_value=1, max_value=6)
min_dims = st.integers(min_value=1, max_value=8)


def _brute_force(n: int, order: int, min_dim: int) -> list[tuple[int, ...]]:
    candidates = sorted((d for d in range(min_dim, n + 1) if n % d == 0), reverse=True)
    # combinations_with_replacement of a descending list yields non-increasing tuples.
    combos = itertools.combinations_with_replacement(candidates, order)
    return sorted(t for t in combos if math.prod(t) == n)


@given(in_features=sizes, out_features=sizes, order=st.none() | orders, min_dim=min_dims)
def test_get_tensorized_shape_properties(
    in_features: int, out_features: int, order: int | None, min_dim: int
) -> None:
    if order is None:
        target, lo = 2, max(min_dim, 2)
    else:
        target, lo = order, min_dim
    valid = all(tensorizations(n, target, min_dim=lo) for n in (in_features, out_features))
    if valid:
        in_shape, out_shape = get_tensorized_shape(in_features, out_features, order, min_dim)
        assert (len(in_shape) == order) if order is not None else (len(in_shape) >= 2)
        assert min(in_shape + out_shape) >= min_dim
    else:
        with pytest.warns(TfxWarning, match=r"Could not tensorize"):
            in_shape, out_shape = get_tensorized_shape(in_features, out_features, order, min_dim)
    assert math.prod(in_shape) == in_features
    assert math.prod(out_shape) == out_features
    assert len(in_shape) == len(out_shape)
    assert list(in_shape) == sorted(in_shape) and list(out_shape) == sorted(out_shape)


@given(n=st.integers(min_value=1, max_value=200_000), order=orders, min_dim=min_dims)
def test_tensorizations_properties(n: int, order: int, min_dim: int) -> None:
    found = tensorizations(n, order, min_dim=min_dim)
    assert found == sorted(found)
    assert len(set(found)) == len(found)
    for t in found:
        assert len(t) == order
        assert math.prod(t) == n
        assert list(t) == sorted(t, reverse=True)
        assert min(t) >= min_dim
    assert balanced_tensorization(n, order, min_dim=min_dim) == (found[0] if found else None)


@given(
    n=st.integers(min_value=1, max_value=240),
    order=st.integers(min_value=1, max_value=4),
    min_dim=st.integers(min_value=1, max_value=5),
)
def test_tensorizations_equal_brute_force(n: int, order: int, min_dim: int) -> None:
    assert tensorizations(n, order, min_dim=min_dim) == _brute_force(n, order, min_dim)


@given(n=st.integers(min_value=2, max_value=200_000), order=orders)
def test_balanced_tensorization_minimises_the_largest_factor(n: int, order: int) -> None:
    best = balanced_tensorization(n, order)
    if best is None:
        assert tensorizations(n, order) == []
    else:
        assert best[0] ** order >= n
        assert best[0] == min(t[0] for t in tensorizations(n, order))
