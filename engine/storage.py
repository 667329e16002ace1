"""The compressed storage format: what a compressed model really costs on disk.

`size_bytes` is always the length of this encoding, so the number shown is the number a user gets
when exporting. Per tensor: b-bit codes bit-packed with fp32 scales and uint8 zero points; float
tensors that are mostly zero stored as a bitmap plus the non-zero values; each blob then passes
through DEFLATE (its Huffman stage plays the part of Deep Compression's entropy coding) when that
makes it smaller. Written by hand because no maintained library packs sub-byte codes with
per-channel scales into one portable file; `decode` round-trips it exactly.
"""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import torch

from engine.transforms.quantize import QuantMeta, dequantize

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


def encode(state: dict[str, torch.Tensor], quant: dict[str, QuantMeta], precision_dtype: torch.dtype) -> bytes:
    """Serialise a model state: quantized weights as packed codes, the rest as (sparse) floats."""
    entries, blobs, offset = [], [], 0
    for name, tensor in state.items():
        entry: dict = {"name": name, "shape": list(tensor.shape)}
        meta = quant.get(name)
        if meta is not None:
            parts = [_pack_bits(meta.codes.numpy().reshape(-1), meta.bits), _raw(meta.scale.float()),
                     _raw(meta.zero_point)]
            entry.update(kind="quant", bits=meta.bits, group_size=meta.group_size, codes_shape=list(meta.codes.shape),
                         dtype=str(precision_dtype).removeprefix("torch."))
        elif tensor.is_floating_point() and tensor.numel() >= 64 and float((tensor == 0).float().mean()) > 0.5:
            mask = (tensor != 0).reshape(-1)
            parts = [np.packbits(mask.cpu().numpy()).tobytes(), _raw(tensor.reshape(-1)[mask])]
            entry.update(kind="sparse", nnz=int(mask.sum()), dtype=str(tensor.dtype).removeprefix("torch."))
        else:
            parts = [_raw(tensor)]
            entry.update(kind="dense", dtype=str(tensor.dtype).removeprefix("torch."))
        data, zipped, lengths = _blob(parts)
        entry.update(offset=offset, length=len(data), zlib=zipped, parts=lengths)
        entries.append(entry)
        blobs.append(data)
        offset += len(data)
    header = json.dumps({"format": 1, "tensors": entries}, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + b"".join(blobs)


def decode(buf: bytes) -> dict[str, torch.Tensor]:
    """Rebuild the exact tensors `encode` was given (quantized weights as their on-grid float values)."""
    if buf[:4] != MAGIC:
        raise ValueError("not a compressed model file (bad magic)")
    (hlen,) = struct.unpack("<I", buf[4:8])
    header = json.loads(buf[8:8 + hlen])
    base = 8 + hlen
    out: dict[str, torch.Tensor] = {}
    for e in header["tensors"]:
        data = buf[base + e["offset"]: base + e["offset"] + e["length"]]
        if e["zlib"]:
            data = zlib.decompress(data)
        parts, pos = [], 0
        for n in e["parts"]:
            parts.append(data[pos:pos + n])
            pos += n
        shape = tuple(e["shape"])
        count = int(np.prod(shape)) if shape else 1
        dtype = _DT[e["dtype"]]
        if e["kind"] == "quant":
            cshape = tuple(e["codes_shape"])
            ncodes = int(np.prod(cshape))
            codes = torch.from_numpy(_unpack_bits(parts[0], e["bits"], ncodes).reshape(cshape).copy())
            groups = cshape[0] * cshape[1]
            scale = _from_raw(parts[1], torch.float32, groups).reshape(cshape[:2])
            zp = _from_raw(parts[2], torch.uint8, groups).reshape(cshape[:2])
            meta = QuantMeta(e["bits"], e["group_size"], shape, scale, zp, codes)
            out[e["name"]] = dequantize(meta).to(dtype)
        elif e["kind"] == "sparse":
            mask = torch.from_numpy(np.unpackbits(np.frombuffer(parts[0], np.uint8))[:count].astype(bool))
            flat = torch.zeros(count, dtype=dtype)
            flat[mask] = _from_raw(parts[1], dtype, e["nnz"])
            out[e["name"]] = flat.reshape(shape)
        else:
            out[e["name"]] = _from_raw(parts[0], dtype, count).reshape(shape)
    return out
