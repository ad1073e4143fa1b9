"""bitsandbytes' weight formats in numpy: int8 row-wise absmax (LLM.int8's ``CB``/``SCB``) and 4-bit NF4/FP4 codes
with block-wise absmax scales, optionally double-quantized (QLoRA).

Every step is the float32 arithmetic of bitsandbytes 0.50's own PyTorch reference kernels
(``bitsandbytes/backends/default/ops.py``), so codes, scales and dequantized weights are bit-identical to it:

* 4-bit: blocks of ``blocksize`` (64) values share ``absmax = max |w|``; ``w * (1 / absmax)`` is clipped to [-1, 1]
  and mapped to the nearest of 16 code values (ties to the lower one), two codes a byte, high nibble first.
* double quantization: the float32 absmax values minus their mean (``offset``) are quantized again in blocks of 256
  with the signed 8-bit dynamic map (``nested_absmax``, ``nested_quant_map``).
* int8: the weight is rounded to float16 (``Int8Params``), each row scaled by ``127 / max |row|`` and rounded half to
  even.

Two documented differences from bitsandbytes' *compiled* CPU kernel (``libbitsandbytes_cpu``): it quantizes the
nested absmax with an approximate division, which picks the other neighbour for about 0.15 % of values lying near
the middle of two codes, and ``offset`` is torch's float32 mean while this module rounds the exact mean (they can
differ in the last bit). Dequantization is exact table lookup times scale, the same in all of them.
"""
import numpy as np

BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256
INT8_SCALE = np.float32(7.874015718698502e-3)  # 1 / 127 as bitsandbytes writes it

# NormalFloat4 (QLoRA, Dettmers et al. 2023): quantiles of N(0, 1) normalised to [-1, 1], as published.
NF4_CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
    0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)


def _fp4_code():
    """FP4 (1 sign, 2 exponent, 1 mantissa bit, exponent bias 2) in bit-pattern order, scaled to [-1, 1]."""
    magnitudes = np.array([0, 0.0625, 8, 12, 4, 6, 2, 3], np.float32)
    return np.concatenate([magnitudes, -magnitudes]) / np.float32(12)


FP4_CODE = _fp4_code()
CODES = {"nf4": NF4_CODE, "fp4": FP4_CODE}


def _linspace(start, end, steps):
    """``torch.linspace`` in float32 (each half stepped from its own end)."""
    start, end = np.float32(start), np.float32(end)
    index = np.arange(steps)
    step = np.float64(end - start) / (steps - 1)
    return np.where(index < steps // 2, start + step * index, end - step * (steps - 1 - index)).astype(np.float32)


def dynamic_map():
    """bitsandbytes' signed 8-bit dynamic quantization map (``create_dynamic_map()``): 256 sorted values, a
    dynamic exponent (10^-6 .. 10^0) and a shrinking linear fraction, plus 0 and 1."""
    values = [np.array([0.0, 1.0], np.float32)]
    for exponent in range(7):
        bounds = _linspace(0.1, 1.0, 2 ** exponent + 1)
        means = np.float32(10.0 ** (exponent - 6)) * ((bounds[:-1] + bounds[1:]) / np.float32(2))
        values += [means, -means]
    return np.sort(np.concatenate(values))


DYNAMIC_MAP = dynamic_map()


def _nearest_code(scaled, code):
    """Index of the nearest value of ``code`` for each of ``scaled`` (ties to the lower value)."""
    order = np.argsort(code, kind="stable")
    ordered = code[order]
    midpoints = (ordered[:-1] + ordered[1:]) / np.float32(2)
    return order[np.searchsorted(midpoints, scaled, side="left")].astype(np.uint8)


def _blockwise_absmax(values, blocksize):
    """``(absmax, scaled)``: absmax of each block of the flat float32 ``values`` (a last partial block included)
    and the values scaled into [-1, 1] as bitsandbytes does (full blocks multiply by the reciprocal, the partial
    block divides)."""
    n = values.size
    full = n - n % blocksize
    blocks = values[:full].reshape(-1, blocksize)
    absmax = np.abs(blocks).max(axis=1) if full else np.zeros(0, np.float32)
    scaled = (blocks * (np.float32(1) / np.maximum(absmax, np.float32(1e-38)))[:, None]).reshape(-1)
    if full < n:
        last = np.maximum(np.abs(values[full:]).max(), np.float32(1e-38))
        absmax = np.concatenate([absmax, [last]]).astype(np.float32)
        scaled = np.concatenate([scaled, values[full:] / last])
    return absmax.astype(np.float32), np.clip(scaled, -1, 1).astype(np.float32)


def quantize_blockwise(values, code=DYNAMIC_MAP, blocksize=NESTED_BLOCKSIZE):
    """``(codes uint8, absmax float32)``: 8-bit block-wise quantization of a flat float32 array."""
    absmax, scaled = _blockwise_absmax(np.asarray(values, np.float32).reshape(-1), blocksize)
    return _nearest_code(scaled, code), absmax


def dequantize_blockwise(codes, absmax, code=DYNAMIC_MAP, blocksize=NESTED_BLOCKSIZE):
    """The flat float32 values of :func:`quantize_blockwise`'s output."""
    return _scale_blocks(code[np.asarray(codes).reshape(-1)], absmax, blocksize)


def _scale_blocks(values, absmax, blocksize):
    """``values`` (flat float32) times the absmax of their block."""
    n = values.size
    padded = np.zeros(absmax.size * blocksize, np.float32)
    padded[:n] = values
    return (padded.reshape(-1, blocksize) * absmax[:, None]).reshape(-1)[:n]


def mean_float32(values):
    """The float32 mean of ``values``, from the exact (float64) sum."""
    return np.float32(np.asarray(values, np.float64).mean())


def quantize_4bit(weight, quant_type="nf4", blocksize=BLOCKSIZE, compress_statistics=False):
    """Quantize a float array to 4-bit codes.

    Returns ``{"weight": packed uint8 (ceil(n / 2), 1), "absmax": float32 (blocks,)}``; with
    ``compress_statistics`` the absmax is uint8 codes and ``nested_absmax`` (float32, one per 256 scales) and
    ``nested_offset`` (float32 scalar) are added.
    """
    values = np.asarray(weight, np.float32).reshape(-1)
    absmax, scaled = _blockwise_absmax(values, blocksize)
    if scaled.size % 2:
        scaled = np.concatenate([scaled, np.zeros(1, np.float32)])
    codes = _nearest_code(scaled, CODES[quant_type])
    state = {"weight": ((codes[0::2] << 4) | codes[1::2]).reshape(-1, 1), "absmax": absmax}
    if compress_statistics:
        offset = mean_float32(absmax)
        state["absmax"], state["nested_absmax"] = quantize_blockwise(absmax - offset)
        state["nested_offset"] = offset
    return state


def dequantize_absmax(absmax, nested_absmax=None, nested_offset=None):
    """The float32 block scales (undoing the double quantization when ``nested_absmax`` is given)."""
    if nested_absmax is None:
        return np.asarray(absmax, np.float32)
    return dequantize_blockwise(absmax, np.asarray(nested_absmax, np.float32)) + np.float32(nested_offset)


def dequantize_4bit(packed, absmax, shape, quant_type="nf4", blocksize=BLOCKSIZE, nested_absmax=None,
                    nested_offset=None):
    """The float32 weight of shape ``shape`` from :func:`quantize_4bit`'s codes and scales."""
    packed = np.asarray(packed, np.uint8).reshape(-1)
    codes = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)
    scales = dequantize_absmax(absmax, nested_absmax, nested_offset)
    return _scale_blocks(CODES[quant_type][codes], scales, blocksize)[: int(np.prod(shape))].reshape(shape)


def quantize_int8(weight):
    """``(int8 codes, float32 row absmax "SCB")`` of a 2-D float array, rounded through float16 first as
    bitsandbytes' ``Int8Params`` does; all-zero rows get zero codes."""
    weight = np.asarray(weight).astype(np.float16).astype(np.float32)
    row_absmax = np.abs(weight).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = weight * ((np.float32(1) / row_absmax) * np.float32(127))[:, None]  # torch's 127 / x
    return np.nan_to_num(np.round(scaled), nan=0.0).astype(np.int8), row_absmax.astype(np.float32)


def dequantize_int8(codes, row_absmax):
    """The float32 weight of :func:`quantize_int8`'s output."""
    return np.asarray(codes).astype(np.float32) * np.asarray(row_absmax, np.float32)[:, None] * INT8_SCALE
