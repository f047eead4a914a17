"""host-cpu: times plan kernels on this machine with torch, one thread: the stand-in device that
proves the plan → measure → solve flow with real measurements.

Kernels (by the candidate's format, as the `host-cpu` device spec lists them):
- `torch_s8` (int8): torch's quantized int8 Linear / Conv2d (fbgemm/x86 engine; per-channel
  int8 weights, uint8 activations); `torch._int_mm` for a linear if torch.ao is unavailable;
- `torch_f32` (fp16/bf16/fp32): fp32 linear / conv2d; 16-bit weights are stored in 16 bits and
  converted to fp32 on every call;
- `torch_unpack_f32` (int2..int7): weights bit-packed into bytes (8 // bits codes per byte),
  unpacked, dequantized with per-channel scale and zero point, then the fp32 op, every call.
Each kernel: `warmup` untimed calls, then `repeats` calls timed one by one with
time.perf_counter_ns; the median is reported.
"""
from __future__ import annotations

import platform
import statistics
import time
import warnings

from bitalloc.hwcost.device.runners import register
from bitalloc.hwcost.device.runners.base import Runner, Timing, Unsupported


@register("host-cpu")
class HostCpuRunner(Runner):
    device = "host-cpu"

    def __init__(self, warmup: int = 3, repeats: int = 20, threads: int = 1, seed: int = 0):
        super().__init__(warmup, repeats)
        try:
            import torch
        except ImportError:
            from bitalloc.errors import BitallocError

            raise BitallocError("runner host-cpu needs torch: pip install 'bitalloc[torch]'") from None

        self.torch = torch
        self._threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        self.threads = threads
        self.gen = torch.Generator().manual_seed(seed)
        if "x86" in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = "x86"

    def close(self) -> None:
        self.torch.set_num_threads(self._threads)

    def header(self) -> dict:
        return {"device": self.device, "core": _cpu_name(), "clock_hz": "", "runtime": f"torch {self.torch.__version__}",
                "timer": "time.perf_counter_ns", "warmup": self.warmup, "repeats": self.repeats, "threads": self.threads}

    def time(self, entry) -> Timing:
        try:
            fn = self._build(entry)
        except Unsupported as e:
            return Timing(None, "unsupported", note=str(e))
        except MemoryError:
            return Timing(None, "oom")
        try:
            for _ in range(self.warmup):
                fn()
            ts = []
            for _ in range(self.repeats):
                t0 = time.perf_counter_ns()
                fn()
                ts.append(time.perf_counter_ns() - t0)
        except MemoryError:
            return Timing(None, "oom")
        except RuntimeError as e:
            return Timing(None, "oom" if "out of memory" in str(e).lower() else "error", note=str(e).splitlines()[0])
        return Timing(statistics.median(ts) * 1e-9, "ok", self.repeats)

    # ---- kernels ------------------------------------------------------------------------
    def _build(self, e):
        torch = self.torch
        F = torch.nn.functional
        s = e.shape
        if e.op == "linear":
            x = torch.randn(s["pos"], s["in"], generator=self.gen)
            wshape = (s["out"], s["in"])
        else:
            x = torch.randn(s["n"], s["c"], s["h"], s["w"], generator=self.gen)
            wshape = (s["k"], s["c"] // s["groups"], s["kh"], s["kw"])
        w = torch.randn(*wshape, generator=self.gen) * 0.1
        bias = torch.zeros(wshape[0])

        def op(weight):
            if e.op == "linear":
                return F.linear(x, weight, bias)
            return F.conv2d(x, weight, bias, stride=s["stride"], padding=s["pad"], groups=s["groups"])

        if e.kernel == "torch_s8":
            return self._int8(e, x, w, bias)
        if e.kernel == "torch_f32":
            if e.w_bits >= 32:
                return lambda: op(w)
            w16 = w.to(torch.bfloat16 if e.format == "bf16" else torch.float16)
            return lambda: op(w16.float())
        if e.kernel == "torch_unpack_f32":
            if not 1 <= e.w_bits <= 7:
                raise Unsupported(f"{e.w_bits}-bit unpack")
            packed, scale, zero, n = _pack(torch, w, e.w_bits)
            bits, per = e.w_bits, 8 // e.w_bits

            def run():
                codes = torch.stack([(packed >> (j * bits)) & ((1 << bits) - 1) for j in range(per)]).reshape(-1)[:n]
                wq = (codes.reshape(wshape[0], -1).float() - zero) * scale
                return op(wq.reshape(wshape))
            return run
        raise Unsupported(f"kernel {e.kernel}")

    def _int8(self, e, x, w, bias):
        torch = self.torch
        s = e.shape
        scales = w.reshape(w.shape[0], -1).abs().amax(1).clamp_min(1e-8) / 127
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import torch.ao.nn.quantized as nnq
            except ImportError:
                nnq = None
            if nnq is None:
                if e.op != "linear" or not hasattr(torch, "_int_mm"):
                    raise Unsupported("int8 conv without torch.ao")
                a = torch.randint(-128, 127, (max(s["pos"], 17), s["in"]), dtype=torch.int8, generator=self.gen)
                b = torch.randint(-128, 127, (s["in"], s["out"]), dtype=torch.int8, generator=self.gen)
                return lambda: torch._int_mm(a, b)
            qw = torch.quantize_per_channel(w, scales.double(), torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
            if e.op == "linear":
                mod = nnq.Linear(s["in"], s["out"])
            else:
                mod = nnq.Conv2d(s["c"], s["k"], (s["kh"], s["kw"]), stride=s["stride"], padding=s["pad"], groups=s["groups"])
            mod.set_weight_bias(qw, bias)
            mod.scale, mod.zero_point = 0.05, 128
            xq = torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)

        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return mod(xq)
        return run


def _pack(torch, w, bits: int):
    """Asymmetric per-channel codes of `w` (out, ...) at `bits`, bit-packed 8 // bits per byte:
    (packed uint8, scale (out, 1), zero (out, 1), number of codes)."""
    w2 = w.reshape(w.shape[0], -1)
    lo, hi = w2.amin(1, keepdim=True).clamp(max=0), w2.amax(1, keepdim=True).clamp(min=0)
    levels = (1 << bits) - 1
    scale = ((hi - lo) / levels).clamp_min(1e-8)
    zero = torch.round(-lo / scale)
    codes = torch.clamp(torch.round(w2 / scale) + zero, 0, levels).to(torch.uint8).reshape(-1)
    n, per = codes.numel(), 8 // bits
    pad = (-n) % per
    codes = torch.cat([codes, torch.zeros(pad, dtype=torch.uint8)]).reshape(per, -1)
    packed = torch.zeros(codes.shape[1], dtype=torch.uint8)
    for j in range(per):
        packed |= codes[j] << (j * bits)
    return packed, scale, zero, n


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
