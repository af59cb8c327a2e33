"""One conformance suite for every ``CODECS`` entry (and a few non-default settings).

decode(encode(x)) within the codec's stated error, unbiasedness of the stochastic
quantisers, encoded sizes equal to the documented formulas, seeded
reproducibility, malformed payloads rejected with CodecError.
"""

from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np
import pytest

from fedpers.codecs import CODECS, CodecError
from fedpers.codecs import _format as fmt
from fedpers.codecs import _sparse as sp
from fedpers.codecs.qsgd import QSGDCodec
from fedpers.codecs.randk import RandKCodec
from fedpers.codecs.sign import ScaledSignCodec
from fedpers.codecs.topk import TopKCodec
from fedpers.codecs.uniform import UniformQuantizer

# every registry entry with its defaults, plus settings the defaults do not reach:
# per-tensor scales, generic bit widths (qsgd s=3 -> 3 bits, s=300 -> 10 bits),
# quantised and sign sparse values, a dense top-k that picks the bitmap
VARIANTS = {
    **CODECS,
    "q8-per-tensor": UniformQuantizer(bits=8, block=0),
    "q4-block-7": UniformQuantizer(bits=4, block=7),
    "qsgd-s1": QSGDCodec(levels=1, block=64),
    "qsgd-s3": QSGDCodec(levels=3),
    "qsgd-s300": QSGDCodec(levels=300, block=0),
    "sign-per-tensor": ScaledSignCodec(block=0),
    "topk-fp16": TopKCodec(fraction=0.05, values="fp16"),
    "topk-q8-dense": TopKCodec(fraction=0.5, values="q8"),
    "topk-sign": TopKCodec(fraction=0.01, values="sign"),
    "randk-sign": RandKCodec(fraction=0.05, values="sign"),
    "randk-q8": RandKCodec(fraction=0.1, values="q8"),
    "randk-fp16": RandKCodec(fraction=0.02, values="fp16"),
}
LOSSY = {k: c for k, c in VARIANTS.items() if c.lossy}
UNBIASED = {k: c for k, c in LOSSY.items() if c.unbiased}


def sample(seed: int = 0) -> dict[str, np.ndarray]:
    """Shapes that hit the edge cases: empty, scalar, one value, odd sizes, > one block."""
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(0, 0.05, (16, 1, 5, 5)).astype(np.float32),
        "fc.weight": rng.normal(0, 1e-3, (37, 29)).astype(np.float32),
        "fc.bias": rng.normal(0, 1, (7,)).astype(np.float32),
        "scalar": np.array(0.37, np.float32),
        "one": np.array([-2.5], np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "const": np.full((13,), 0.25, np.float32),
        "zeros": np.zeros((9,), np.float32),
        "spiky": np.concatenate([np.zeros(600, np.float32), [1e3], np.ones(99)]).astype(
            np.float32),
    }


def test_registry_names_and_protocol():
    for name, codec in CODECS.items():
        assert codec.name == name
        for attr in ("encode", "decode", "encoded_nbytes", "error_bound", "build",
                     "lossy", "unbiased"):
            assert hasattr(codec, attr), (name, attr)
    assert not CODECS["none"].lossy
    assert {k for k, c in CODECS.items() if c.unbiased and c.lossy} == {"q8", "q4", "q2", "qsgd"}


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_decode_encode_within_stated_error(name, seed):
    codec = VARIANTS[name]
    x = sample(seed)
    decoded = codec.decode(codec.encode(x, np.random.default_rng(seed)), x)
    assert list(decoded) == list(x)
    for k, v in x.items():
        assert decoded[k].shape == v.shape and decoded[k].dtype == v.dtype, k
        assert np.isfinite(decoded[k]).all(), k
        err = float(np.linalg.norm((decoded[k].astype(np.float64) - v).reshape(-1)))
        assert err <= codec.error_bound(v) * (1 + 1e-6) + 1e-12, (k, err, codec.error_bound(v))


@pytest.mark.parametrize("name", VARIANTS)
def test_encoded_size_is_the_formula(name):
    codec = VARIANTS[name]
    x = sample()
    payload = codec.encode(x, np.random.default_rng(0))
    for k, v in x.items():
        got = payload[k].nbytes
        if isinstance(codec, TopKCodec):
            assert got == codec.nbytes_given(v.size, codec.select(v.reshape(-1))), k
            assert got <= codec.encoded_nbytes(v.shape), k  # the stated upper bound
        else:
            assert got == codec.encoded_nbytes(v.shape), k
        if codec.lossy:
            assert payload[k].dtype == np.uint8 and payload[k].ndim == 1


def _expected_nbytes(name: str, n: int) -> int:
    """The size formulas of the module docstrings, written out independently."""
    blocks = math.ceil(n / 512)
    k = math.ceil(0.01 * n)
    gap = 1 if n - 1 <= 255 else 2 if n - 1 <= 65535 else 4  # largest possible gap: n - 1
    # Rice, parameter b: a byte for b, k b-bit remainders, unary quotients of gaps that
    # sum to at most n - k
    rice = min(1 + math.ceil(k * b / 8) + math.ceil((((n - k) >> b) + k) / 8)
               for b in range(17))
    return {
        "none": 4 * n,
        "fp16": 8 + 2 * n,
        "q8": 12 + 8 * blocks + n,
        "q4": 12 + 8 * blocks + math.ceil(n / 2),
        "q2": 12 + 8 * blocks + math.ceil(n / 4),
        "qsgd": 14 + 4 * blocks + math.ceil(4 * n / 8),        # s = 7: 4-bit codes
        "sign": 12 + 4 * blocks + math.ceil(n / 8),
        "topk": 12 + 4 * k + min(gap * k, math.ceil(n / 8), rice),   # upper bound
        "randk": 20 + 4 * k,
    }[name]


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("n", [1, 511, 512, 1000, 1_000_000])
def test_default_sizes_match_the_documented_formulas(name, n):
    assert CODECS[name].encoded_nbytes((n,)) == _expected_nbytes(name, n)


def test_one_million_values_compress_as_documented():
    n = 1_000_000
    raw = 4 * n
    ratios = {name: raw / CODECS[name].encoded_nbytes((n,)) for name in CODECS}
    assert ratios["fp16"] == pytest.approx(2, rel=1e-3)
    assert ratios["q8"] == pytest.approx(4, rel=0.02)
    assert ratios["q4"] == pytest.approx(8, rel=0.04)
    assert ratios["q2"] == pytest.approx(16, rel=0.07)
    assert ratios["sign"] == pytest.approx(32, rel=0.07)
    assert ratios["randk"] == pytest.approx(100, rel=1e-3)


@pytest.mark.parametrize("name", UNBIASED)
def test_stochastic_quantisers_are_unbiased(name):
    """Mean of many decodes -> x, within 6 standard errors (variance <= step^2 / 4)."""
    codec = UNBIASED[name]
    rng = np.random.default_rng(7)
    x = {"v": rng.normal(0, 1, 40).astype(np.float32)}
    draws = 3000
    total = np.zeros(40, np.float64)
    for i in range(draws):
        total += codec.decode(codec.encode(x, np.random.default_rng(1000 + i)), x)["v"]
    v = x["v"].astype(np.float64)
    if isinstance(codec, UniformQuantizer):
        m = fmt.blocked(x["v"], codec.block)
        step = np.repeat((m.max(1) - m.min(1)) / ((1 << codec.bits) - 1),
                         fmt.block_sizes(40, codec.block))
    else:
        norms = np.sqrt(fmt.block_sums(v * v, codec.block))
        step = np.repeat(norms / codec.levels, fmt.block_sizes(40, codec.block))
    tolerance = 6 * (step / 2) / np.sqrt(draws) + 1e-6 * np.abs(v)
    bias = total / draws - v
    assert (np.abs(bias) <= tolerance).all(), np.max(np.abs(bias) / tolerance)


def test_the_unbiasedness_check_detects_a_biased_codec():
    """Sanity check of the test above: scaled sign of a skewed vector is visibly biased."""
    codec = CODECS["sign"]
    x = {"v": np.array([3.0, 0.1, 0.1, 0.1], np.float32)}
    assert not np.allclose(codec.decode(codec.encode(x, np.random.default_rng(0)), x)["v"],
                           x["v"], atol=0.5)


@pytest.mark.parametrize("name", VARIANTS)
def test_seeded_reproducibility(name):
    codec = VARIANTS[name]
    x = sample(3)
    a = codec.encode(x, np.random.default_rng(11))
    b = codec.encode(x, np.random.default_rng(11))
    assert all(np.array_equal(a[k], b[k]) for k in x)
    stochastic = codec.unbiased and codec.lossy or isinstance(codec, RandKCodec)
    if stochastic:
        c = codec.encode(x, np.random.default_rng(12))
        assert not all(np.array_equal(a[k], c[k]) for k in x)


# ------------------------------------------------------------------ malformed payloads
def _valid(codec, seed: int = 0):
    x = {"w": np.random.default_rng(seed).normal(0, 1, 1100).astype(np.float32)}
    return x, codec.encode(x, np.random.default_rng(seed))


def _with_header(buf: np.ndarray, **fields) -> np.ndarray:
    magic, tag, a, b, n = fmt.HEADER.unpack(buf[:8].tobytes())
    vals = {"magic": magic, "tag": tag, "a": a, "b": b, "n": n, **fields}
    out = buf.copy()
    out[:8] = np.frombuffer(fmt.HEADER.pack(vals["magic"], vals["tag"], vals["a"], vals["b"],
                                            vals["n"]), np.uint8)
    return out


MALFORMED = {
    "truncated": (lambda b: b[:-1], "wrong length"),
    "trailing byte": (lambda b: np.concatenate([b, np.zeros(1, np.uint8)]), "wrong length"),
    "header only half there": (lambda b: b[:5], "wrong length"),
    "empty": (lambda b: b[:0], "wrong length"),
    "bad magic": (lambda b: _with_header(b, magic=0x00), "magic"),
    "other codec's tag": (lambda b: _with_header(b, tag=99), "codec tag"),
    "wrong element count": (lambda b: _with_header(b, n=1099), "elements"),
    "float32 instead of bytes": (lambda b: b.astype(np.float32), "uint8"),
    "2-D bytes": (lambda b: b.reshape(1, -1), "1-D uint8"),
}


@pytest.mark.parametrize("name", LOSSY)
@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_payload_raises_codec_error(name, case):
    codec = LOSSY[name]
    x, payload = _valid(codec)
    mutate, message = MALFORMED[case]
    with pytest.raises(CodecError, match=message):
        codec.decode({"w": mutate(payload["w"])}, x)


@pytest.mark.parametrize("name", LOSSY)
def test_unknown_array_name_is_rejected(name):
    codec = LOSSY[name]
    x, payload = _valid(codec)
    with pytest.raises(CodecError, match="unexpected array 'zzz'"):
        codec.decode({"zzz": payload["w"]}, x)



def test_sparse_codecs_reject_bad_tags_and_indices():
    # the 11 largest values 100 apart: u8 gaps (11 bytes) beat their Rice code (13)
    w = np.random.default_rng(0).normal(0, 1, 1100).astype(np.float32)
    w[::100] = 50.0
    x = {"w": w}
    topk = TopKCodec(fraction=0.01)
    buf = topk.encode(x, np.random.default_rng(0))["w"]
    with pytest.raises(CodecError, match="unknown value dtype tag 9"):
        topk.decode({"w": _with_header(buf, a=9)}, x)
    with pytest.raises(CodecError, match="unknown index dtype tag 7"):
        topk.decode({"w": _with_header(buf, b=7)}, x)
    # k = 11 values, u8 gaps at the end: make the gaps point past the end
    assert fmt.HEADER.unpack(buf[:8].tobytes())[3] == 1  # u8 gaps
    bad = buf.copy()
    start = 8 + 4 + 4 * 11
    bad[start:start + 11] = 255
    with pytest.raises(CodecError, match="out of range"):
        topk.decode({"w": bad}, x)
    repeated = buf.copy()
    repeated[start + 1] = 0  # a zero gap: the same index twice
    with pytest.raises(CodecError, match="not strictly increasing"):
        topk.decode({"w": repeated}, x)
    k_wrong = buf.copy()
    k_wrong[8:12] = np.frombuffer(struct.pack("<I", 12), np.uint8)
    with pytest.raises(CodecError, match="this run keeps 11"):
        topk.decode({"w": k_wrong}, x)
    dense = TopKCodec(fraction=0.5)  # the bitmap index: count must match k
    dbuf = dense.encode(x, np.random.default_rng(0))["w"]
    assert fmt.HEADER.unpack(dbuf[:8].tobytes())[3] == 0  # bitmap
    flipped = dbuf.copy()
    flipped[-5] ^= 0x01
    with pytest.raises(CodecError, match="bitmap marks"):
        dense.decode({"w": flipped}, x)


def _rice_payload(n: int = 20_000, fraction: float = 0.01, values: str = "fp32"):
    x = {"w": np.random.default_rng(1).normal(0, 1, n).astype(np.float32)}
    codec = TopKCodec(fraction=fraction, values=values)
    buf = codec.encode(x, np.random.default_rng(0))["w"]
    assert fmt.HEADER.unpack(buf[:8].tobytes())[3] == sp.INDEX_RICE
    return codec, x, buf


def test_rice_positions_round_trip_at_the_documented_size():
    """Random positions at several densities: the Rice code returns them exactly, and its
    size is the bit count written out: a parameter byte, k b-bit remainders, and
    sum(gap >> b) + k unary bits, b chosen as the smallest."""
    rng = np.random.default_rng(3)
    for n, k in [(46_730, 468), (20_000, 200), (1_000_000, 1000), (5000, 15), (300, 40)]:
        idx = np.sort(rng.choice(n, k, replace=False))
        tag, parts = sp.encode_indices(idx, n)
        buf = fmt.join(parts)
        gaps = np.diff(idx, prepend=-1) - 1
        rice = min(1 + math.ceil(k * b / 8) + math.ceil((int((gaps >> b).sum()) + k) / 8)
                   for b in range(17))
        assert buf.nbytes == min(rice, math.ceil(n / 8),
                                 k * (1 if gaps.max() < 255 else 2 if gaps.max() < 65535
                                      else 4)) == sp.index_nbytes(n, k, idx)
        if n // k >= 20:  # sparse: Rice is the smallest, ~log2(n / k) + 2 bits per index
            assert tag == sp.INDEX_RICE, (n, k)
            assert buf.nbytes * 8 / k < math.log2(n / k) + 3, (n, k)
        r = fmt.Reader(buf, "w")
        assert np.array_equal(sp.decode_indices(r, n, k, tag), idx)
        r.finish()


def test_rice_positions_reject_malformed_codes():
    codec, x, buf = _rice_payload()
    n, k = 20_000, 200
    rice_at = 8 + 4 + 4 * k  # after the header, k and the fp32 values
    assert codec.decode({"w": buf}, x)["w"].shape == (n,)
    big_b = buf.copy()
    big_b[rice_at] = 17
    with pytest.raises(CodecError, match="Rice parameter 17"):
        codec.decode({"w": big_b}, x)
    b = int(buf[rice_at])
    unary_at = rice_at + 1 + math.ceil(k * b / 8)
    ones = buf.copy()
    ones[unary_at:] = 0xFF  # no terminators at all
    with pytest.raises(CodecError, match="Rice code ends after 0 of 200"):
        codec.decode({"w": ones}, x)
    far = buf.copy()
    far[unary_at:unary_at + 40] = 0xFF  # long quotients: the last index leaves the tensor
    far = np.concatenate([far, np.zeros(40, np.uint8)])
    with pytest.raises(CodecError, match="out of range|wrong length"):
        codec.decode({"w": far}, x)
    extra = np.concatenate([buf, np.zeros(1, np.uint8)])
    with pytest.raises(CodecError, match=r"wrong length: 1 byte\(s\) after"):
        codec.decode({"w": extra}, x)
    padded = buf.copy()
    padded[-1] |= 0x80
    with pytest.raises(CodecError, match="padding bits|out of range|ends after"):
        codec.decode({"w": padded}, x)


def test_sign_values_are_the_mean_magnitude_with_each_sign():
    """STC's ternary coding: every kept value is +-mean(|kept|), the rest zero."""
    codec, x, buf = _rice_payload(values="sign")
    out = codec.decode({"w": buf}, x)["w"]
    idx = codec.select(x["w"])
    kept = x["w"][idx]
    assert np.count_nonzero(out) == idx.size
    np.testing.assert_allclose(out[idx], np.sign(kept) * np.abs(kept).mean(), rtol=1e-6)
    assert buf.nbytes == codec.nbytes_given(x["w"].size, idx)
    negative = buf.copy()
    negative[12:16] = np.frombuffer(np.array([-1.0], "<f4").tobytes(), np.uint8)
    with pytest.raises(CodecError, match="negative sign scale"):
        codec.decode({"w": negative}, x)


def test_quantisers_reject_bad_scales_codes_and_settings():
    x = {"w": np.random.default_rng(0).normal(0, 1, 1100).astype(np.float32)}
    q8 = CODECS["q8"]
    buf = q8.encode(x, np.random.default_rng(0))["w"]
    nan_scale = buf.copy()
    nan_scale[12:16] = np.frombuffer(np.array([np.nan], "<f4").tobytes(), np.uint8)
    with pytest.raises(CodecError, match="non-finite"):
        q8.decode({"w": nan_scale}, x)
    with pytest.raises(CodecError, match="4-bit codes, this run uses 8"):
        q8.decode({"w": _with_header(buf, a=4)}, x)
    with pytest.raises(CodecError, match="block size 512, this run uses 256"):
        dataclasses.replace(q8, block=256).decode({"w": buf}, x)
    qsgd = QSGDCodec(levels=5)  # codes 0..10 in 4 bits: 11..15 are invalid
    qbuf = qsgd.encode(x, np.random.default_rng(0))["w"]
    bad = qbuf.copy()
    bad[-100] = 0xFF
    with pytest.raises(CodecError, match="code 15 above 10"):
        qsgd.decode({"w": bad}, x)
    with pytest.raises(CodecError, match="levels"):
        QSGDCodec(levels=6).decode({"w": qbuf}, x)


def test_random_corruption_never_escapes_as_another_error():
    """Flip random bytes of valid payloads: CodecError or a well-formed decode, nothing else."""
    rng = np.random.default_rng(0)
    for name, codec in LOSSY.items():
        x, payload = _valid(codec)
        for _ in range(60):
            buf = payload["w"].copy()
            pos = rng.integers(0, buf.size, size=rng.integers(1, 4))
            buf[pos] = rng.integers(0, 256, size=pos.size)
            try:
                out = codec.decode({"w": buf}, x)
            except CodecError:
                continue
            assert out["w"].shape == x["w"].shape, name
