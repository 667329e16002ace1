"""Deep Compression storage: weight sharing, entropy coding, relative positions, and the codec kinds built on them."""
import base64
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.compress import codebook, codec, entropy
from engine.compress.quantize import dequantize, quantize_tensor

ROOT = Path(__file__).resolve().parents[1]


def _pruned(shape: tuple[int, ...], zeros: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w[torch.rand(shape, generator=g) < zeros] = 0
    return w


def _kinds(blob: bytes) -> dict[str, str]:
    return {e["name"]: e["kind"] for e in codec.read_header(blob)[0]["tensors"]}


def _assert_round_trip(state: dict[str, torch.Tensor], blob: bytes) -> None:
    back = codec.decode(blob)
    assert back.keys() == state.keys()
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


# --- weight sharing ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 4, 8, 10])
def test_share_keeps_zeros_zero_and_uses_at_most_2_pow_bits_values(bits):
    w = _pruned((64, 48), 0.7)
    meta = codebook.share(w, bits)
    d = codebook.dense(meta)
    assert d.dtype == torch.float32 and d.shape == w.shape
    assert torch.equal(d == 0, w == 0)  # pruned weights stay exactly zero, the others are never zero
    assert len(torch.unique(d[d != 0])) <= meta.centroids.numel() <= 2 ** bits
    assert torch.equal(meta.positions, torch.nonzero(w.reshape(-1), as_tuple=True)[0])
    assert meta.assignments.dtype == (torch.uint8 if bits <= 8 else torch.int16)
    idx = meta.assignments.long()
    for j in range(meta.centroids.numel()):  # every centroid is the mean of its cluster (none empty)
        members = w.reshape(-1)[meta.positions][idx == j]
        assert members.numel() > 0 and abs(float(members.double().mean()) - float(meta.centroids[j])) < 1e-6


def test_share_uses_every_code_and_is_vectorised():
    w = _pruned((1536, 384), 0.0, seed=1)
    codebook.share(w[:8], 4)  # warm up
    t = time.perf_counter()
    meta = codebook.share(w, 4)
    elapsed = time.perf_counter() - t
    assert meta.centroids.numel() == 16 and torch.all(meta.centroids[1:] > meta.centroids[:-1])
    assert elapsed < 1.0, elapsed  # ~0.04 s here; a Python loop over 590k weights would take seconds
    err = (codebook.dense(meta) - w).pow(2).mean()
    assert err < 0.02  # 16 levels on a unit Gaussian: optimal (Lloyd-Max) ~0.0095, uniform grid ~0.02


def test_share_edge_cases():
    zero = codebook.share(torch.zeros(3, 4), 4)
    assert zero.centroids.numel() == 0 and zero.positions.numel() == 0 and torch.equal(codebook.dense(zero),
                                                                                        torch.zeros(3, 4))
    one = codebook.share(torch.tensor([0.0, -2.5, 0.0]), 3)
    assert torch.equal(codebook.dense(one), torch.tensor([0.0, -2.5, 0.0]))
    few = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, 2.0]])  # fewer distinct values than codes: kept exactly
    assert torch.equal(codebook.dense(codebook.share(few, 4)), few)
    with pytest.raises(ValueError):
        codebook.share(torch.tensor([1.0, float("nan")]), 4)
    with pytest.raises(ValueError):
        codebook.share(few, 16)


def test_retie_moves_centroids_to_cluster_means():
    w = _pruned((40, 30), 0.5, seed=2)
    meta = codebook.share(w, 3)
    g = torch.Generator().manual_seed(3)
    grad = torch.randn(w.shape, generator=g) * (w != 0)
    lr = 0.01
    trained = codebook.dense(meta) - lr * grad  # one plain SGD step on the dense weights
    new = codebook.retie(trained, meta)
    assert new.positions is meta.positions and new.assignments is meta.assignments
    idx = meta.assignments.long()
    g_flat = grad.reshape(-1)[meta.positions]
    for j in range(meta.centroids.numel()):
        in_j = idx == j
        assert abs(float(new.centroids[j]) - float(trained.reshape(-1)[meta.positions][in_j].mean())) < 1e-6
        # = a step on the shared centroid with the cluster's gradients averaged
        assert abs(float(new.centroids[j]) - (float(meta.centroids[j]) - lr * float(g_flat[in_j].mean()))) < 1e-6
    d = codebook.dense(new)
    assert torch.equal(d == 0, w == 0) and len(torch.unique(d[d != 0])) <= 8


# --- entropy coding ---------------------------------------------------------------------------------------------

def _entropy_bits(s: np.ndarray) -> float:
    p = np.bincount(s) / s.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum()) * s.size


@pytest.mark.parametrize("stream", [
    np.random.default_rng(0).integers(0, 65536, 5000),
    np.random.default_rng(1).geometric(0.05, 20000) - 1,
    np.zeros(0, np.int64), np.array([7]), np.array([65535]), np.full(1000, 3), np.array([0, 1, 1, 0, 9]),
], ids=["uniform-65536", "geometric", "empty", "one", "max", "constant", "gappy"])
def test_entropy_round_trips(stream):
    buf = entropy.encode(stream)
    assert np.array_equal(entropy.decode(buf, stream.size), stream)


def test_entropy_length_is_near_the_empirical_entropy():
    s = np.random.default_rng(4).choice(6, 10_000, p=[0.6, 0.2, 0.1, 0.05, 0.03, 0.02])
    h = _entropy_bits(s)
    coded = len(entropy.encode(s)) * 8
    print(f"skewed 10k stream: {coded / s.size:.4f} bits/symbol vs entropy {h / s.size:.4f} (+{coded / h - 1:.2%})")
    assert coded <= 1.03 * h


@pytest.mark.parametrize("numel,positions", [
    (100, []), (100, [0]), (100, [99]), (100, list(range(100))), (10_000, list(range(0, 10_000, 997))),
    (3_000_000, [5, 70_000, 2_999_999]),
    (50_000, np.flatnonzero(np.random.default_rng(5).random(50_000) < 0.1).tolist()),
])
def test_positions_round_trip(numel, positions):
    p = np.array(positions, np.int64)
    buf = entropy.encode_positions(p, numel)
    assert np.array_equal(entropy.decode_positions(buf, p.size, numel), p)


def test_positions_choose_the_escape_step_by_cost():
    regular = np.arange(0, 1_000_000, 1000)
    buf = entropy.encode_positions(regular, 1_000_000)
    assert buf[0] > 0 and len(buf) < 40  # one gap value: almost free with a large step, ~11 bits a weight as a bitmap
    iid = np.flatnonzero(np.random.default_rng(6).random(20_000) < 0.3)
    buf = entropy.encode_positions(iid, 20_000)
    h = 20_000 * -(0.3 * np.log2(0.3) + 0.7 * np.log2(0.7))
    assert len(buf) * 8 < 1.03 * h  # i.i.d. positions: the entropy-coded bitmap (step 1) is optimal


@pytest.mark.parametrize("buf,count", [
    (b"", 1), (b"\x80" * 100, 1), (b"\xff\xff\xff\xff\x0f", 1), (b"\x01\x05", 10 ** 9), (b"\x02\x03\x02", 5),
    (b"\x02\x03\x02\x01\x02\x03", 5), (b"\x03\x00\x05\x05", 5), (b"\x02\x02\x03" + b"\0\0\0\0", 5), (b"\x01\x05\x00", 5),
])
def test_entropy_rejects_crafted_streams(buf, count):
    with pytest.raises(ValueError):
        entropy.decode(buf, count)


# --- the codec --------------------------------------------------------------------------------------------------

def _new_kind_state(dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict]:
    metas = {"shared": codebook.share(_pruned((48, 40), 0.8, seed=7), 4),
             "shared.zero": codebook.share(torch.zeros(5, 6), 4),
             "shared.one": codebook.share(torch.tensor([1.5]), 2),
             "shared.empty": codebook.share(torch.zeros(0, 4), 4),
             "quant.pruned": quantize_tensor(_pruned((40, 51), 0.9, seed=8), 3, 4)}
    state = {k: codebook.dense(m).to(dtype) for k, m in metas.items() if isinstance(m, codebook.CodebookMeta)}
    state["quant.pruned"] = dequantize(metas["quant.pruned"]).to(dtype)
    state["sparse"] = _pruned((100, 100), 0.99, seed=9).to(dtype)
    state["bias"] = torch.linspace(-1, 1, 7).to(dtype)
    return state, metas


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_new_kinds_round_trip_exactly(dtype):
    state, metas = _new_kind_state(dtype)
    blob = codec.encode(state, metas, dtype)
    kinds = _kinds(blob)
    assert kinds == {"shared": "codebook", "shared.zero": "codebook", "shared.one": "codebook",
                     "shared.empty": "codebook", "quant.pruned": "quant-sparse", "sparse": "sparse-offsets",
                     "bias": "dense"}
    assert codec.read_header(blob)[0]["format"] == 2
    _assert_round_trip(state, blob)


def test_only_the_smaller_form_is_kept():
    w = _pruned((64, 64), 0.55, seed=10)
    meta = quantize_tensor(w, 4, None)
    state = {"w": dequantize(meta), "f": w}
    blob = codec.encode(state, {"w": meta}, torch.float32)
    sizes = {e["name"]: e["length"] for e in codec.read_header(blob)[0]["tensors"]}
    for name, kinds in [("w", ("quant", "quant-sparse")), ("f", ("sparse", "sparse-offsets"))]:
        others = [codec._blob(parts)[0] for _, parts in codec._candidates(state[name], {"w": meta}.get(name),
                                                                            torch.float32, True)]
        assert len(others) == 2 and sizes[name] == min(len(o) for o in others) and _kinds(blob)[name] in kinds
    _assert_round_trip(state, blob)


def _legacy_state() -> dict[str, torch.Tensor]:
    a = torch.arange(96, dtype=torch.float32)
    w = ((torch.arange(48, dtype=torch.float32).reshape(6, 8) * 7) % 11 - 5) / 4
    return {"dense": (a[:5] - 2) / 4, "sparse": torch.where(a % 3 == 0, (a - 40) / 8, torch.zeros(())),
            "w": dequantize(quantize_tensor(w, 3, 4)), "half": (a[:4] / 3).to(torch.bfloat16), "steps": torch.tensor(7)}


# `_legacy_state()` written by the codec before codebooks (format 1: dense, sparse bitmap, 3-bit per-group quant).
LEGACY = (
    "Q0RCMYYCAAB7ImZvcm1hdCI6MSwidGVuc29ycyI6W3sibmFtZSI6ImRlbnNlIiwic2hhcGUiOls1XSwia2luZCI6ImRlbnNlIiwiZHR5cGUiOiJm"
    "bG9hdDMyIiwib2Zmc2V0IjowLCJsZW5ndGgiOjIwLCJ6bGliIjpmYWxzZSwicGFydHMiOlsyMF19LHsibmFtZSI6InNwYXJzZSIsInNoYXBlIjpb"
    "OTZdLCJraW5kIjoic3BhcnNlIiwibm56IjozMiwiZHR5cGUiOiJmbG9hdDMyIiwib2Zmc2V0IjoyMCwibGVuZ3RoIjoxNDAsInpsaWIiOmZhbHNl"
    "LCJwYXJ0cyI6WzEyLDEyOF19LHsibmFtZSI6InciLCJzaGFwZSI6WzYsOF0sImtpbmQiOiJxdWFudCIsImJpdHMiOjMsImdyb3VwX3NpemUiOjQs"
    "ImNvZGVzX3NoYXBlIjpbNiwyLDRdLCJkdHlwZSI6ImZsb2F0MzIiLCJvZmZzZXQiOjE2MCwibGVuZ3RoIjo3OCwiemxpYiI6ZmFsc2UsInBhcnRz"
    "IjpbMTgsNDgsMTJdfSx7Im5hbWUiOiJoYWxmIiwic2hhcGUiOls0XSwia2luZCI6ImRlbnNlIiwiZHR5cGUiOiJiZmxvYXQxNiIsIm9mZnNldCI6"
    "MjM4LCJsZW5ndGgiOjgsInpsaWIiOmZhbHNlLCJwYXJ0cyI6WzhdfSx7Im5hbWUiOiJzdGVwcyIsInNoYXBlIjpbXSwia2luZCI6ImRlbnNlIiwi"
    "ZHR5cGUiOiJpbnQ2NCIsIm9mZnNldCI6MjQ2LCJsZW5ndGgiOjgsInpsaWIiOmZhbHNlLCJwYXJ0cyI6WzhdfV19AAAAvwAAgL4AAAAAAACAPgAA"
    "AD+SSSSSSSSSSSSSSSQAAKDAAACUwAAAiMAAAHjAAABgwAAASMAAADDAAAAYwAAAAMAAANC/AACgvwAAYL8AAAC/AAAAvgAAgD4AACA/AACAPwAA"
    "sD8AAOA/AAAIQAAAIEAAADhAAABQQAAAaEAAAIBAAACMQAAAmEAAAKRAAACwQAAAvEAAAMhAAADUQBX4Oz2IOxmOxj4MxoO/BoOxX27btj4AAIA+"
    "JUmSPgAAgD4lSZI+JUmSPiVJkj4lSZI+AACAPiVJkj4AAIA+btu2PgQDBAIDBAMDBQMEBAAAqz4rP4A/BwAAAAAAAAA="
)


def test_files_written_before_codebooks_still_decode():
    _assert_round_trip(_legacy_state(), base64.b64decode(LEGACY))


def test_a_file_without_new_kinds_stays_format_1():
    state = {"w": torch.linspace(-1, 1, 300).reshape(30, 10), "b": torch.zeros(10)}
    blob = codec.encode(state, {}, torch.float32)
    assert blob[8:9] == b"{" and codec.read_header(blob)[0]["format"] == 1
    _assert_round_trip(state, blob)


def _rebuilt(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return codec.MAGIC + struct.pack("<I", len(raw)) + raw + data


def test_damaged_and_crafted_files_raise_codec_error_quickly():
    state, metas = _new_kind_state(torch.float32)
    good = codec.encode(state, metas, torch.float32)
    header, base = codec.read_header(good)
    data = good[base:]
    t = time.perf_counter()
    for n in range(0, len(good), 7):  # truncated anywhere
        with pytest.raises(codec.CodecError):
            codec.decode(good[:n])
    flipped = caught = 0
    for e in header["tensors"]:  # a flipped bit in entropy-coded positions or symbols never gives wrong weights
        if e["kind"] in ("codebook", "quant-sparse", "sparse-offsets") and not e["zlib"]:
            coded = e["parts"][0] + (e["parts"][1] if e["kind"] != "sparse-offsets" else 0)
            for i in range(base + e["offset"], base + e["offset"] + coded):
                for mask in (0x01, 0x10, 0x80):
                    bad = bytearray(good)
                    bad[i] ^= mask
                    flipped += 1
                    try:
                        _assert_round_trip(state, bytes(bad))  # harmless: e.g. the escape step of an empty stream
                    except codec.CodecError:
                        caught += 1
    assert flipped > 1000 and caught >= 0.99 * flipped
    mutations = [
        ("codebook", lambda e: e.update(nnz=10 ** 12)), ("codebook", lambda e: e.update(nnz=e["nnz"] + 1)),
        ("codebook", lambda e: e.update(k=10 ** 6)), ("codebook", lambda e: e.update(k=e["k"] - 1)),
        ("codebook", lambda e: e.update(bits=40)), ("codebook", lambda e: e.update(dtype="int64")),
        ("codebook", lambda e: e.update(shape=[2 ** 31, 2 ** 31])), ("codebook", lambda e: e.update(shape=[2 ** 28])),
        ("codebook", lambda e: e.update(parts=e["parts"][:2])), ("quant-sparse", lambda e: e.update(nnz=10 ** 9)),
        ("quant-sparse", lambda e: e.update(codes_shape=[10, 4, 10 ** 8])), ("quant-sparse", lambda e: e.update(bits=2)),
        ("sparse-offsets", lambda e: e.update(nnz=e["nnz"] - 1)), ("sparse-offsets", lambda e: e.update(shape=[50, 50])),
    ]
    for kind, mutate in mutations:
        h = json.loads(json.dumps(header))
        mutate(next(e for e in h["tensors"] if e["kind"] == kind and e.get("nnz")))
        with pytest.raises(codec.CodecError):
            codec.decode(_rebuilt(h, data))
    for bad_header in [dict(header, format=3), dict(header, tensors=[dict(header["tensors"][0], kind="exec")])]:
        with pytest.raises(codec.CodecError):
            codec.decode(_rebuilt(bad_header, data))
    compressed_garbage = zlib.compress(b'{"format": 2, "tensors": [' * 10 ** 6)
    with pytest.raises(codec.CodecError):
        codec.decode(codec.MAGIC + struct.pack("<I", len(compressed_garbage)) + compressed_garbage)
    assert time.perf_counter() - t < 10


def test_digits_mlp_pruned_and_shared_stores_25x_smaller():
    state = load_file(str(ROOT / "sample_models" / "digits-mlp.safetensors"))
    baseline = len(codec.encode(state, {}, torch.float32))
    shared, metas = dict(state), {}
    for name in ("fc1.weight", "fc2.weight", "classifier.weight"):
        w = state[name].clone()
        w[w.abs() <= w.abs().flatten().kthvalue(int(0.9 * w.numel())).values] = 0  # 90 % zeros, by |w|
        metas[name] = codebook.share(w, 4)
        shared[name] = codebook.dense(metas[name])
    blob = codec.encode(shared, metas, torch.float32)
    _assert_round_trip(shared, blob)
    header, base = codec.read_header(blob)
    part = {"positions": 0, "assignments": 0, "centroids": 0, "biases": 0}
    for e in header["tensors"]:
        if e["kind"] == "codebook":
            for key, n in zip(("positions", "assignments", "centroids"), e["parts"]):
                part[key] += n
        else:
            part["biases"] += e["length"]
    print(f"digits-mlp: {len(blob)} bytes vs {baseline} fp32 ({baseline / len(blob):.1f}x); "
          f"header {base} bytes, " + ", ".join(f"{k} {v}" for k, v in part.items()))
    assert base + sum(part.values()) == len(blob)
    assert baseline / len(blob) >= 25
