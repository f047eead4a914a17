"""FpgaCost: LUT, DSP and BRAM of a fully unrolled (hls4ml io_parallel style) dense/conv layer.

Per layer at candidate weight width b_w and activation width b_a, with reuse factor R (each
multiplier is reused R times per inference, as in hls4ml):

- multipliers = ceil(n_params / R)                                    (Duarte et al. 2018, hls4ml,
  JINST 13 P07027: "the number of multipliers ... is n_weights / reuse factor")
- narrow products (b_w <= `lut_max_bits`) become LUT logic: LUTs ≈ c · b_w · b_a per multiplier,
  plus an accumulator adder of (b_w + b_a + log2 fan-in) LUTs. The c · b_w · b_a form is the
  effective bit-operations (EBOPs) of HGQ (Sun et al. 2024, arXiv:2405.00645), which tracks the
  LUT use of hls4ml firmware for small widths; c = `lut_per_bit_product` (default 1.0).
- wider products go to DSP slices, several per slice when the DSP type packs them:
  DSP48E2 (27x18): two multiplies of <= 8 bits sharing an operand per slice (AMD WP486, "Deep
  Learning with INT8 Optimization on Xilinx Devices"); DSP58 (27x24, Versal): three int8
  multiplies in INT8 dot-product mode (AMD AM004, Versal DSP Engine); DSP48E1 (25x18): one.
  Wider than the slice: ceil(b_w / A) · ceil(b_a / B) slices per multiply.
- weights are constants in the fabric at R = 1 (no BRAM); at R > 1 they sit in BRAM18
  (18 Kib, up to 36 bits wide): max(ceil(n_params · b_w / R / 36), ceil(n_params · b_w / 18432)).

Candidates kept in floating point (fp16/bf16/fp32) are priced as b-bit fixed point (hls4ml
ap_fixed). Minifloat, OCP MX and NVFP4 candidates are infeasible: hls4ml's io_parallel layers
take ap_fixed/ap_int weights, with no minifloat element or shared block-scale datapath.
A unit gets its share of its layer. Metrics: `lut`, `dsp`, `bram` (BRAM18 blocks).
"""
from __future__ import annotations

import math

import numpy as np

from bitalloc.errors import bad
from bitalloc.hwcost import register
from bitalloc.hwcost.layers import layer_view
from bitalloc.hwcost.device.target import TargetCost
from bitalloc.hwcost.weight_bytes import MINIFLOAT, family_of

METRICS = ("lut", "dsp", "bram")
# dsp type → (A, B) multiplier port widths, multiplies packed per slice when both widths <= 8
DSP_TYPES = {"dsp48e1": ((25, 18), 1), "dsp48e2": ((27, 18), 2), "dsp58": ((27, 24), 3)}
BRAM18_BITS = 18432
BRAM18_WIDTH = 36


@register("fpga")
class FpgaCost(TargetCost):
    classes = ("fpga",)
    units = {"": 1.0, "k": 1e3}

    def __init__(self, metric: str = "lut", device: str | None = None, unit: str = "", reuse_factor: int = 1,
                 a_bits: int = 8, lut_max_bits: int = 4, lut_per_bit_product: float = 1.0, dsp_type: str | None = None):
        if metric not in METRICS:
            raise bad("fpga metric", metric, f"allowed: {', '.join(METRICS)}")
        self.metric = metric
        self.base_resource = metric
        super().__init__(device, unit, None)
        self.resource = f"{unit}{metric}"
        for f, v in (("reuse_factor", reuse_factor), ("a_bits", a_bits), ("lut_max_bits", lut_max_bits)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(f, v, "must be a positive integer")
        if not lut_per_bit_product > 0:
            raise bad("lut_per_bit_product", lut_per_bit_product, "must be > 0")
        dsp_type = dsp_type or self.device.dsp_type
        if dsp_type not in DSP_TYPES:
            raise bad("dsp_type", dsp_type, f"allowed: {', '.join(DSP_TYPES)}")
        self.reuse_factor, self.a_bits_fixed, self.lut_max_bits = reuse_factor, a_bits, lut_max_bits
        self.lut_per_bit_product, self.dsp_type = lut_per_bit_product, dsp_type

    def kernels(self, profile):  # every fixed-point width is synthesizable; minifloat formats are not
        return [None if family_of(f) in MINIFLOAT + ("external",) else True for f in profile.format_objects]

    def dsps_per_multiply(self, b_w: int) -> float:
        (A, B), pack = DSP_TYPES[self.dsp_type]
        b_a = self.a_bits_fixed
        if b_w <= 8 and b_a <= 8:
            return 1.0 / pack
        return float(min(math.ceil(b_w / A) * math.ceil(b_a / B), math.ceil(b_w / B) * math.ceil(b_a / A)))

    def layer_costs(self, profile) -> np.ndarray:
        lv = layer_view(profile)
        R, b_a = self.reuse_factor, self.a_bits_fixed
        mults = np.ceil(lv.n_params / R)
        out = np.zeros((len(lv.names), len(profile.bits)))
        for k, b in enumerate(profile.bits):
            in_lut = b <= self.lut_max_bits
            if self.metric == "lut":
                if in_lut:
                    adder = b + b_a + np.ceil(np.log2(np.maximum(lv.cols, 2)))
                    out[:, k] = mults * (self.lut_per_bit_product * b * b_a + adder)
            elif self.metric == "dsp":
                if not in_lut:
                    out[:, k] = np.ceil(mults * self.dsps_per_multiply(b))
            elif R > 1:
                out[:, k] = np.maximum(np.ceil(lv.n_params * b / R / BRAM18_WIDTH), np.ceil(lv.n_params * b / BRAM18_BITS))
        return out
