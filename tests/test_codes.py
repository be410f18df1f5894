"""The bit order and the packing helpers of vhindex.index.codes, on hand-written cases."""

from __future__ import annotations

import numpy as np
import pytest

from vhindex.index.codes import (
    as_packed,
    code_to_hex,
    hamming_distances,
    hex_to_code,
    pack_codes,
    unpack_codes,
)


def test_documented_bit_order_16_bits():
    signs = -np.ones((1, 16), dtype=np.int8)
    signs[0, 0] = signs[0, 15] = 1
    packed = pack_codes(signs)
    assert packed.dtype == np.uint8 and packed.shape == (1, 2)
    assert code_to_hex(packed[0]) == "8001"


@pytest.mark.parametrize(
    ("set_bits", "hex_"),
    [([], "00"), ([0], "80"), ([7], "01"), ([1, 2], "60"), (list(range(8)), "ff")],
)
def test_single_byte_cases(set_bits, hex_):
    signs = -np.ones((1, 8))
    signs[0, set_bits] = 1
    assert code_to_hex(pack_codes(signs)[0]) == hex_
    np.testing.assert_array_equal(unpack_codes(hex_to_code(hex_, 8)[None]), signs.astype(np.int8))


def test_zero_is_a_cleared_bit_and_floats_are_accepted():
    assert code_to_hex(pack_codes(np.array([[0.0, 1.0, -1, 0, 0, 0, 0, 0.5]]))[0]) == "41"


def test_round_trip_random():
    rng = np.random.default_rng(0)
    for bits in (8, 64, 256):
        signs = rng.choice(np.array([-1, 1], dtype=np.int8), size=(20, bits))
        packed = pack_codes(signs)
        np.testing.assert_array_equal(unpack_codes(packed, bits), signs)
        for row in packed:
            np.testing.assert_array_equal(hex_to_code(code_to_hex(row), bits), row)
        np.testing.assert_array_equal(as_packed(signs), packed)
        assert as_packed(packed) is not None and np.array_equal(as_packed(packed), packed)


def test_hex_is_case_insensitive():
    np.testing.assert_array_equal(hex_to_code("aBcD", 16), [0xAB, 0xCD])


@pytest.mark.parametrize(
    ("text", "bits", "match"),
    [
        ("800", 16, "4 hex digits"),
        ("80010", 16, "4 hex digits"),
        ("80zz", 16, "not a hex string"),
        ("80 01 ", 24, "not a hex string"),  # bytes.fromhex alone would accept this as 2 bytes
        ("0x80", 16, "not a hex string"),
        ("80", 12, "multiple of 8"),
    ],
)
def test_hex_parse_errors(text, bits, match):
    with pytest.raises(ValueError, match=match):
        hex_to_code(text, bits)


def test_shape_and_value_errors():
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_codes(np.ones((2, 12)))
    with pytest.raises(ValueError, match="shape"):
        pack_codes(np.ones(8))
    with pytest.raises(ValueError, match="hold 16 bits, expected 8"):
        unpack_codes(np.zeros((1, 2), dtype=np.uint8), 8)
    with pytest.raises(ValueError, match="values in"):
        as_packed(np.array([[2, 1, 1, 1, 1, 1, 1, 1]]))


def test_hamming_oracle_on_hand_cases():
    a = hex_to_code("8001", 16)[None]
    b = np.stack([hex_to_code(h, 16) for h in ("8001", "0000", "ffff", "7ffe")])
    np.testing.assert_array_equal(hamming_distances(a, b), [[0, 2, 14, 16]])
    with pytest.raises(ValueError, match="bits"):
        hamming_distances(a, np.zeros((1, 1), dtype=np.uint8))
