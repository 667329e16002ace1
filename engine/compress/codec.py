"""The compressed storage format: what a compressed model really costs on disk.

`size_bytes` is always the length of this encoding, so the number shown is the number a user gets
when exporting. Per tensor, the smallest of its candidate forms:
- quant: b-bit codes bit-packed, with fp32 scales and uint8 zero points;
- quant-sparse (pruned, then quantized): the non-zero weights' positions as entropy-coded relative
  offsets, and their codes (minus the zero point) entropy-coded, with the same scales and zero points;
- codebook (k-means weight sharing, `codebook.CodebookMeta`): positions as entropy-coded relative
  offsets, entropy-coded cluster indices, and the centroids in the precision dtype;
- sparse / sparse-offsets (mostly-zero floats): a bitmap, or entropy-coded relative offsets, plus the
  non-zero values; dense: the raw values.
That is Deep Compression's storage (Han et al., 2016: pruning, weight sharing, relative index coding,
entropy coding), with rANS (`entropy`) in place of Huffman. Each blob then passes through DEFLATE when
that makes it smaller (raw floats, bitmaps). Alternatives are only tried for tensors that are more than
half zeros, so a dense model encodes as fast as before. Written by hand because no maintained library
packs sub-byte codes with per-channel scales, or codebooks with sparse positions, into one portable
file; `decode` round-trips it exactly. Files holding only the original kinds keep "format": 1.
"""
from __future__ import annotations

import json
import math
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from engine.compress import entropy
from engine.compress.codebook import MAX_BITS, CodebookMeta
from engine.compress.quantize import QuantMeta, dequantize
from engine.core.errors import RecipeError
from engine.core.recipe import parse_json

MAGIC = b"CDB1"
_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32,
       torch.uint8: np.uint8, torch.bool: np.bool_}
_DT = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
       "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}
ZLIB_MIN = 256  # smaller blobs are not worth a compression attempt


def _raw(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def _from_raw(buf: bytes, dtype: torch.dtype, count: int) -> torch.Tensor:
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.frombuffer(buf, np.int16, count).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.frombuffer(buf, _NP[dtype], count).copy())


def _pack_bits(codes: np.ndarray, bits: int) -> bytes:
    bitplanes = np.unpackbits(codes.astype(np.uint8).reshape(-1, 1), axis=1)[:, 8 - bits:]
    return np.packbits(bitplanes.reshape(-1)).tobytes()


def _unpack_bits(buf: bytes, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(buf, np.uint8))[: count * bits].reshape(count, bits)
    full = np.zeros((count, 8), np.uint8)
    full[:, 8 - bits:] = planes
    return np.packbits(full, axis=1).reshape(-1)


def _blob(parts: list[bytes]) -> tuple[bytes, bool, list[int]]:
    raw = b"".join(parts)
    lengths = [len(p) for p in parts]
    if len(raw) >= ZLIB_MIN:
        packed = zlib.compress(raw, 6)
        if len(packed) < len(raw):
            return packed, True, lengths
    return raw, False, lengths


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _codebook(meta: CodebookMeta, precision_dtype: torch.dtype) -> tuple[dict, list[bytes]]:
    # Centroids stored in the precision dtype: casting commutes with the gather, so the decoded tensor is
    # exactly dense(meta).to(precision_dtype).
    parts = [entropy.encode_positions(meta.positions.cpu().numpy(), math.prod(meta.shape)),
             entropy.encode(meta.assignments.cpu().numpy().astype(np.int64)), _raw(meta.centroids.to(precision_dtype))]
    return dict(kind="codebook", bits=meta.bits, k=meta.centroids.numel(), nnz=meta.positions.numel(),
                dtype=_dtype_name(precision_dtype)), parts


def _quant(meta: QuantMeta, precision_dtype: torch.dtype, alternatives: bool) -> list[tuple[dict, list[bytes]]]:
    codes = meta.codes.detach().cpu().numpy().reshape(-1)
    scale, zp = _raw(meta.scale.float()), _raw(meta.zero_point)
    common = dict(bits=meta.bits, group_size=meta.group_size, codes_shape=list(meta.codes.shape),
                  dtype=_dtype_name(precision_dtype))
    out = [(dict(kind="quant", **common), [_pack_bits(codes, meta.bits), scale, zp])]
    if not alternatives:
        return out
    # Pruned then quantized: a weight is zero where its code is its group's zero point.
    zp_each = np.repeat(meta.zero_point.detach().cpu().numpy().reshape(-1), meta.codes.shape[-1])
    nonzero = np.flatnonzero(codes != zp_each)
    if 2 * nonzero.size < codes.size:
        shifted = (codes[nonzero].astype(np.int64) - zp_each[nonzero]) % (1 << meta.bits)
        out.append((dict(kind="quant-sparse", nnz=int(nonzero.size), **common),
                    [entropy.encode_positions(nonzero, codes.size), entropy.encode(shifted), scale, zp]))
    return out


def _candidates(tensor: torch.Tensor, meta: QuantMeta | CodebookMeta | None, precision_dtype: torch.dtype,
                alternatives: bool) -> list[tuple[dict, list[bytes]]]:
    """The ways to store one tensor; `encode` keeps the smallest. Alternatives are tried only for mostly-zero
    tensors, so a dense model encodes as fast as ever."""
    if isinstance(meta, CodebookMeta):
        if tuple(meta.shape) != tuple(tensor.shape):
            raise ValueError(f"codebook shape {meta.shape} does not match the tensor's {tuple(tensor.shape)}")
        return [_codebook(meta, precision_dtype)]
    if meta is not None:
        return _quant(meta, precision_dtype, alternatives)
    dtype = _dtype_name(tensor.dtype)
    if tensor.is_floating_point() and tensor.numel() >= 64 and float((tensor == 0).float().mean()) > 0.5:
        flat = tensor.detach().cpu().reshape(-1)
        mask = flat != 0
        values, nnz = _raw(flat[mask]), int(mask.sum())
        out = [(dict(kind="sparse", nnz=nnz, dtype=dtype), [np.packbits(mask.numpy()).tobytes(), values])]
        if alternatives:
            positions = torch.nonzero(mask, as_tuple=True)[0].numpy()
            out.append((dict(kind="sparse-offsets", nnz=nnz, dtype=dtype),
                        [entropy.encode_positions(positions, flat.numel()), values]))
        return out
    return [(dict(kind="dense", dtype=dtype), [_raw(tensor)])]


def _encode_one(item: tuple[str, torch.Tensor, QuantMeta | CodebookMeta | None, torch.dtype, bool]
                ) -> tuple[dict, bytes, bool, list[int]]:
    name, tensor, meta, precision_dtype, alternatives = item
    best = None
    for fields, parts in _candidates(tensor, meta, precision_dtype, alternatives):
        data, zipped, lengths = _blob(parts)
        if best is None or len(data) < len(best[1]):
            best = ({"name": name, "shape": list(tensor.shape), **fields}, data, zipped, lengths)
    return best


NEW_KINDS = ("codebook", "sparse-offsets", "quant-sparse")  # format 2; a file without them stays format 1
# Elements a file may hold in those kinds, all tensors together. Their zeros cost almost no bytes, so
# without a cap a few hundred crafted bytes could make the decoder allocate tens of GB; at the cap the
# worst case is a few GB (Pillow caps image pixels the same way). Larger models (> 134 M parameters) are
# stored in the original kinds; shared weights beyond it are refused.
MAX_CODED = 2 ** 27


def encode(state: dict[str, torch.Tensor], quant: dict[str, QuantMeta | CodebookMeta],
           precision_dtype: torch.dtype) -> bytes:
    """Serialise a model state: quantized weights as packed codes, shared weights as codebooks, the rest as
    (sparse) floats; each tensor in whichever candidate form is smallest."""
    shared = sum(math.prod(m.shape) for m in quant.values() if isinstance(m, CodebookMeta))
    if shared > MAX_CODED:
        raise ValueError(f"{shared} shared weights: more than the {MAX_CODED} a file may hold")
    alternatives = sum(t.numel() for t in state.values()) <= MAX_CODED
    items = [(name, tensor, quant.get(name), precision_dtype, alternatives) for name, tensor in state.items()]
    # DEFLATE releases the GIL: tensors compress side by side (a transformer's 90 MB took 4.4 s on one core).
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        entries, blobs, offset = [], [], 0
        for entry, data, zipped, lengths in pool.map(_encode_one, items):
            entry.update(offset=offset, length=len(data), zlib=zipped, parts=lengths)
            entries.append(entry)
            blobs.append(data)
            offset += len(data)
    fmt = 2 if any(e["kind"] in NEW_KINDS for e in entries) else 1
    header = json.dumps({"format": fmt, "tensors": entries}, separators=(",", ":")).encode()
    if fmt == 2:  # the JSON header is ~10 % of a small pruned and shared model; DEFLATE halves it
        header = min(header, zlib.compress(header, 9), key=len)
    return MAGIC + struct.pack("<I", len(header)) + header + b"".join(blobs)


MAX_ELEMENTS = 2 ** 31  # per file: far above any model this tool measures, far below what would exhaust memory
MAX_HEADER = 2 ** 24  # bytes of JSON: a 1,000-tensor model's header is ~150 KB
_ITEM = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "uint8": 1, "bool": 1}


class CodecError(ValueError):
    """The bytes are not a valid compressed model file (damaged, truncated or crafted)."""


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise CodecError(what)


def _int(v: object, lo: int = 0, hi: int = MAX_ELEMENTS) -> int:
    _need(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, f"bad integer {v!r:.40}")
    return int(v)


def read_header(buf: bytes) -> tuple[dict, int]:
    """The file's JSON header (plain, or DEFLATE-compressed in format 2) and where the tensor data starts."""
    _need(buf[:4] == MAGIC, "not a compressed model file (bad magic)")
    (hlen,) = struct.unpack("<I", buf[4:8])
    _need(hlen <= len(buf) - 8, "header longer than the file")
    header = buf[8:8 + hlen]
    if header[:1] != b"{":
        inflater = zlib.decompressobj()
        header = inflater.decompress(header, MAX_HEADER + 1)
        _need(inflater.eof and len(header) <= MAX_HEADER, "bad compressed header")
    try:
        header = parse_json(header, "header", limit=None)  # its size is bounded above
    except RecipeError as exc:
        raise CodecError(str(exc)) from None
    _need(isinstance(header, dict) and isinstance(header.get("tensors"), list), "header has no tensor list")
    _need(header.get("format") in (1, 2), "unknown format")
    return header, 8 + hlen


def decode(buf: bytes) -> dict[str, torch.Tensor]:
    """Rebuild the exact tensors `encode` was given (quantized and shared weights as their float values).

    Every length, shape and count in the header is checked against the bytes before anything is
    allocated or decompressed, and the file's tensors together may hold at most MAX_ELEMENTS elements
    (MAX_CODED in the entropy-coded kinds), so a damaged or crafted file is a CodecError, never a crash
    or a bomb."""
    try:
        header, base = read_header(buf)
        end, left, coded = len(buf), MAX_ELEMENTS, MAX_CODED
        out: dict[str, torch.Tensor] = {}
        for e in header["tensors"]:
            _need(isinstance(e, dict) and isinstance(e.get("name"), str), "tensor entry without a name")
            new = e.get("kind") in NEW_KINDS
            t = out[e["name"]] = _decode_one(e, buf, base, end, min(left, coded) if new else left)
            left -= t.numel()
            coded -= t.numel() if new else 0
        return out
    except CodecError:
        raise
    except (struct.error, zlib.error, json.JSONDecodeError, RecursionError, KeyError, TypeError, ValueError,
            RuntimeError) as exc:
        raise CodecError(f"not a valid compressed model file: {type(exc).__name__}: {str(exc)[:120]}") from None


def _positions(e: dict, part: bytes, count: int, numel: int) -> torch.Tensor:
    try:
        return torch.from_numpy(entropy.decode_positions(part, count, numel))
    except ValueError as exc:
        raise CodecError(f"{e['name']}: positions: {exc}") from None


def _symbols(e: dict, part: bytes, count: int, below: int) -> np.ndarray:
    """`count` entropy-coded symbols, each < below."""
    try:
        out = entropy.decode(part, count)
    except ValueError as exc:
        raise CodecError(f"{e['name']}: symbols: {exc}") from None
    _need(count == 0 or int(out.max()) < below, f"{e['name']}: symbol out of range")
    return out


def _decode_one(e: dict, buf: bytes, base: int, end: int, left: int) -> torch.Tensor:
    shape = tuple(_int(d) for d in e["shape"])
    count = math.prod(shape)
    _need(count <= left and e.get("dtype") in _DT, f"{e['name']}: bad shape or dtype, or too many elements")
    dtype, item = _DT[e["dtype"]], _ITEM[e["dtype"]]
    offset, length = _int(e["offset"], hi=end), _int(e["length"], hi=end)
    _need(base + offset + length <= end, f"{e['name']}: data runs past the end of the file")
    lengths = [_int(n) for n in e["parts"]]
    expected = sum(lengths)
    data = buf[base + offset: base + offset + length]
    if e["zlib"]:
        inflater = zlib.decompressobj()
        data = inflater.decompress(data, expected + 1)  # never inflate past what the header declares
        _need(inflater.eof and not inflater.unconsumed_tail, f"{e['name']}: compressed data does not match its size")
    _need(len(data) == expected, f"{e['name']}: data length does not match the header")
    parts, pos = [], 0
    for n in lengths:
        parts.append(data[pos:pos + n])
        pos += n
    kind = e["kind"]
    if kind in ("quant", "quant-sparse"):
        bits = _int(e["bits"], 1, 8)
        cshape = tuple(_int(d) for d in e["codes_shape"])
        _need(len(cshape) == 3 and shape and cshape[0] == shape[0], f"{e['name']}: bad code shape")
        ncodes, groups = math.prod(cshape), cshape[0] * cshape[1]
        _need(ncodes <= left and cshape[1] * cshape[2] >= count // max(shape[0], 1),
              f"{e['name']}: codes do not cover the tensor")
        group = e.get("group_size")
        _need(group is None or _int(group, 1) == cshape[2], f"{e['name']}: bad group size")
        if kind == "quant":
            _need(lengths == [-(-ncodes * bits // 8), groups * 4, groups], f"{e['name']}: bad part lengths")
        else:
            _need(len(lengths) == 4 and lengths[2:] == [groups * 4, groups], f"{e['name']}: bad part lengths")
        scale = _from_raw(parts[-2], torch.float32, groups).reshape(cshape[:2])
        zp = _from_raw(parts[-1], torch.uint8, groups).reshape(cshape[:2])
        if kind == "quant":
            codes = _unpack_bits(parts[0], bits, ncodes)
        else:  # zero point everywhere, then the non-zero weights' codes, stored as (code - zero point) mod 2**bits
            nnz = _int(e["nnz"], hi=ncodes)
            at = _positions(e, parts[0], nnz, ncodes).numpy()
            shifted = _symbols(e, parts[1], nnz, 1 << bits)
            _need(nnz == 0 or int(shifted.min()) > 0, f"{e['name']}: a stored code is its zero point")
            codes = np.repeat(zp.numpy().reshape(-1), cshape[2])
            codes[at] = (shifted + codes[at]) % (1 << bits)
        codes = torch.from_numpy(codes.reshape(cshape).copy())
        return dequantize(QuantMeta(bits, group, shape, scale, zp, codes)).to(dtype)
    if kind == "sparse":
        nnz = _int(e["nnz"], hi=count)
        _need(lengths == [-(-count // 8), nnz * item], f"{e['name']}: bad part lengths")
        mask = torch.from_numpy(np.unpackbits(np.frombuffer(parts[0], np.uint8))[:count].astype(bool))
        _need(int(mask.sum()) == nnz, f"{e['name']}: mask does not match the value count")
        flat = torch.zeros(count, dtype=dtype)
        flat[mask] = _from_raw(parts[1], dtype, nnz)
        return flat.reshape(shape)
    if kind == "sparse-offsets":
        nnz = _int(e["nnz"], hi=count)
        _need(len(lengths) == 2 and lengths[1] == nnz * item, f"{e['name']}: bad part lengths")
        flat = torch.zeros(count, dtype=dtype)
        flat[_positions(e, parts[0], nnz, count)] = _from_raw(parts[1], dtype, nnz)
        return flat.reshape(shape)
    if kind == "codebook":
        bits, nnz = _int(e["bits"], 1, MAX_BITS), _int(e["nnz"], hi=count)
        k = _int(e["k"], hi=1 << bits)
        _need(dtype.is_floating_point and len(lengths) == 3 and lengths[2] == k * item and (k > 0 or nnz == 0),
              f"{e['name']}: bad codebook or part lengths")
        at = _positions(e, parts[0], nnz, count)
        assignments = torch.from_numpy(_symbols(e, parts[1], nnz, k)).long()
        flat = torch.zeros(count, dtype=dtype)
        flat[at] = _from_raw(parts[2], dtype, k)[assignments]
        return flat.reshape(shape)
    _need(kind == "dense" and lengths == [count * item], f"{e['name']}: bad tensor kind or length")
    return _from_raw(parts[0], dtype, count).reshape(shape)
