"""llama.cpp as the judge: load a GGUF in llama.cpp itself, take its logits and perplexity, and
quantize with llama.cpp's own `llama_model_quantize` (file types, per-tensor type overrides,
importance matrix).

The library comes from the optional extra `llamacpp` (`pip install 'bitalloc[llamacpp]'`, i.e.
llama-cpp-python, which builds llama.cpp's libllama from the source it vendors; docs/llamacpp.md
has the build flags). Only its low-level ctypes API over the public `llama.h` is used
(`llama_model_load_from_file`, `llama_init_from_model`, `llama_decode`, `llama_get_logits`,
`llama_tokenize`, `llama_model_quantize`). Without it, `available()` is False and `library()`
raises a one-line BitallocError naming the install step.

Perplexity: each window of tokens is decoded alone from an empty cache with logits at every
position; its loss is the mean negative log-likelihood of tokens 1..n−1 (as transformers'
`labels=` loss); perplexity = exp(mean window loss). Windows are kept so two files measured on
the same tokens give paired per-window differences (`paired`).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitalloc.errors import BitallocError, bad

INSTALL = ("llama.cpp's library is not installed: pip install 'bitalloc[llamacpp]' (builds llama-cpp-python from "
           "source; see docs/llamacpp.md)")
_LOG_CB = None  # keeps the silencing callback alive


def available() -> bool:
    try:
        library()
        return True
    except BitallocError:
        return False


def library():
    """The `llama_cpp` module (llama-cpp-python's ctypes bindings), backend initialized, logs off."""
    global _LOG_CB
    try:
        import llama_cpp
    except Exception as e:  # ImportError, or the shared library failing to load
        raise BitallocError(f"{INSTALL} ({type(e).__name__}: {e})") from None
    if _LOG_CB is None:
        _LOG_CB = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_LOG_CB, ctypes.c_void_p())
        llama_cpp.llama_backend_init()
    return llama_cpp


class LlamaCppModel:
    """A GGUF loaded in llama.cpp (CPU). n_ctx: the longest window decoded at once; threads."""

    def __init__(self, path, n_ctx: int = 512, threads: int = 2):
        ll = library()
        self.ll, self.path = ll, Path(path)
        if not self.path.is_file():
            raise BitallocError(f"--gguf {str(self.path)!r}: no such file")
        mp = ll.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = ll.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise BitallocError(f"llama.cpp could not load {str(self.path)!r} (not a model GGUF it reads)")
        cp = ll.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = int(n_ctx)
        cp.n_threads = cp.n_threads_batch = int(threads)
        self.ctx = ll.llama_init_from_model(self.model, cp)
        if not self.ctx:
            ll.llama_model_free(self.model)
            raise BitallocError(f"llama.cpp could not create a context for {str(self.path)!r}")
        self.n_ctx = int(n_ctx)
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.ll.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.ll.llama_model_free(self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def tokenize(self, text: str, add_special: bool = False) -> np.ndarray:
        """llama.cpp's token ids of `text` (int64)."""
        raw = text.encode()
        cap = len(raw) + 16
        buf = (self.ll.llama_token * cap)()
        n = self.ll.llama_tokenize(self.vocab, raw, len(raw), buf, cap, add_special, True)
        if n < 0:
            cap = -n
            buf = (self.ll.llama_token * cap)()
            n = self.ll.llama_tokenize(self.vocab, raw, len(raw), buf, cap, add_special, True)
        return np.array(buf[:n], dtype=np.int64)

    def logits(self, tokens) -> np.ndarray:
        """(n, n_vocab) float32 logits at every position of one window, from an empty cache."""
        ll = self.ll
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = len(tokens)
        if not 0 < n <= self.n_ctx:
            raise bad("window length", n, f"must be 1..{self.n_ctx} tokens")
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise bad("token id", int(tokens.max()), f"must be below the vocabulary size {self.n_vocab}")
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        batch = ll.llama_batch_init(n, 0, 1)
        try:
            for i, t in enumerate(tokens):
                batch.token[i] = int(t)
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            batch.n_tokens = n
            rc = ll.llama_decode(self.ctx, batch)
            if rc != 0:
                raise BitallocError(f"llama.cpp: llama_decode returned {rc} on {str(self.path)!r}")
            ptr = ll.llama_get_logits(self.ctx)
            return np.ctypeslib.as_array(ptr, shape=(n, self.n_vocab)).copy()
        finally:
            ll.llama_batch_free(batch)

    def piece(self, token: int) -> str:
        """The text of one token, special tokens rendered (`<|im_end|>`)."""
        buf = ctypes.create_string_buffer(256)
        n = self.ll.llama_token_to_piece(self.vocab, int(token), buf, 256, 0, True)
        return buf.raw[:max(n, 0)].decode(errors="replace")

    def greedy(self, prompt: str, n: int = 16, add_special: bool = True) -> list[int]:
        """Greedy continuation of `prompt` (tokenized as llama.cpp does, BOS only if the file's
        `tokenizer.ggml.add_bos_token` says so), stopping after an end-of-generation token."""
        ids = list(self.tokenize(prompt, add_special=add_special))
        out = []
        for _ in range(n):
            nxt = int(self.logits(ids)[-1].argmax())
            out.append(nxt)
            ids.append(nxt)
            if self.ll.llama_vocab_is_eog(self.vocab, nxt) or len(ids) >= self.n_ctx:
                break
        return out

    def window_nll(self, tokens) -> float:
        """Mean negative log-likelihood of tokens[1:] given their prefixes (nats)."""
        z = self.logits(tokens)[:-1].astype(np.float64)
        m = z.max(1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(z - m).sum(1))
        nxt = np.asarray(tokens)[1:]
        return float(np.mean(lse - z[np.arange(len(nxt)), nxt]))


@dataclass
class RuntimePerplexity:
    """file: the GGUF; window_nll: (W,) mean NLL per window; perplexity = exp(mean); bytes: file size."""

    file: str
    window_nll: np.ndarray
    bytes: int

    @property
    def perplexity(self) -> float:
        return float(np.exp(np.mean(self.window_nll)))

    def to_json(self) -> dict:
        return {"file": self.file, "bytes": self.bytes, "perplexity": self.perplexity,
                "loss": float(np.mean(self.window_nll)), "windows": len(self.window_nll),
                "window_nll": [float(x) for x in self.window_nll]}


def perplexity(path, windows, threads: int = 2, progress=None) -> RuntimePerplexity:
    """Perplexity of the GGUF at `path` in llama.cpp on `windows` ((W, n) token ids)."""
    windows = np.asarray(windows, dtype=np.int64)
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise bad("windows", windows.shape, "must be (windows, tokens ≥ 2) token ids")
    out = []
    with LlamaCppModel(path, n_ctx=windows.shape[1], threads=threads) as m:
        for i, w in enumerate(windows):
            out.append(m.window_nll(w))
            if progress is not None:
                progress(i + 1, len(windows))
    return RuntimePerplexity(str(path), np.array(out), Path(path).stat().st_size)


def paired(a: RuntimePerplexity, b: RuntimePerplexity) -> tuple[float, float]:
    """(mean, standard error) of the per-window loss difference b − a on the same windows (nats);
    b is better than a beyond noise when mean + 2·SE < 0."""
    if a.window_nll.shape != b.window_nll.shape:
        raise bad("paired windows", (a.window_nll.shape, b.window_nll.shape), "must be the same windows")
    d = b.window_nll - a.window_nll
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")


# ---- llama.cpp's own quantizer -----------------------------------------------------------------
def ftype_id(name: str) -> int:
    """llama_ftype of a mix name: Q4_K_M → LLAMA_FTYPE_MOSTLY_Q4_K_M (F32 → ALL_F32)."""
    ll = library()
    key = "LLAMA_FTYPE_ALL_F32" if name.upper() == "F32" else f"LLAMA_FTYPE_MOSTLY_{name.upper()}"
    if not hasattr(ll, key):
        raise bad("llama.cpp file type", name, "e.g. Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_M, Q6_K, Q8_0")
    return int(getattr(ll, key))


def quantize(src, dst, ftype: str = "Q8_0", tensor_types: dict[str, str] | None = None,
             imatrix: dict[str, np.ndarray] | None = None, threads: int = 2, pure: bool = False) -> Path:
    """llama.cpp's `llama_model_quantize` of `src` into `dst`: file type `ftype` (its mix rules;
    `pure`: the ftype's base type everywhere), with `tensor_types` (tensor name → GGML type,
    written as anchored `tt_overrides` patterns; llama.cpp applies them only under a quantized
    ftype) and an importance matrix (tensor name → (cols,) E[x²]). Returns dst."""
    import re

    from gguf import GGMLQuantizationType

    ll = library()
    p = ll.llama_model_quantize_default_params()
    p.nthread = int(threads)
    p.ftype = ftype_id(ftype)
    p.allow_requantize = True
    p.pure = bool(pure)
    keep = []  # ctypes buffers must outlive the call
    if tensor_types:
        arr = (ll.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (name, qtype) in enumerate(tensor_types.items()):
            pat = f"^{re.escape(name)}$".encode()
            keep.append(pat)
            arr[i].pattern = pat
            arr[i].type = int(GGMLQuantizationType[qtype])
        arr[len(tensor_types)].pattern = None
        p.tt_overrides = arr
        keep.append(arr)
    if imatrix:
        arr = (ll.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, v) in enumerate(imatrix.items()):
            v = np.ascontiguousarray(v, dtype=np.float32)
            keep += [name.encode(), v]
            arr[i].name = keep[-2]
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = len(v)
        arr[len(imatrix)].name = None
        p.imatrix = arr
        keep.append(arr)
    dst = Path(dst)
    rc = ll.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    if rc != 0:
        raise BitallocError(f"llama.cpp: llama_model_quantize({src} → {dst}, {ftype}) returned {rc}")
    return dst


def tensor_types(path) -> dict[str, str]:
    """GGUF tensor name → GGML type name of a file."""
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def tensor_data_bytes(path) -> int:
    """Bytes of tensor data (unpadded) in a GGUF."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)


def requantize_check(src, ours, dst, imatrix=None, threads: int = 2) -> dict:
    """Write `ours`'s per-tensor types through llama.cpp's quantizer from `src` (e.g. the F32 GGUF)
    into `dst` (every 2-D tensor named in `tt_overrides`, `pure` for the rest), and compare:
    {same_types, types_differ (names), bytes and tensor-data bytes of both files}."""
    from gguf import GGUFReader

    mine = {t.name: t.tensor_type.name for t in GGUFReader(str(ours)).tensors if len(t.shape) >= 2}
    quantize(src, dst, "Q8_0", mine, imatrix=imatrix, threads=threads, pure=True)
    theirs = tensor_types(dst)
    differ = sorted(n for n in mine if theirs.get(n) != mine[n])
    return {"same_types": not differ, "types_differ": differ, "bytes_ours": Path(ours).stat().st_size,
            "bytes_llamacpp": Path(dst).stat().st_size, "tensor_bytes_ours": tensor_data_bytes(ours),
            "tensor_bytes_llamacpp": tensor_data_bytes(dst)}


def held_out_windows(gguf, n: int = 8, seq_len: int = 128, seed: int = 0) -> np.ndarray:
    """(n, seq_len) held-out token windows for SmolLM2-family files: the pydoc held-out split
    (the same text as the smollm2 task's quality), tokenized by llama.cpp with `gguf`'s vocabulary."""
    from bitalloc.models.data import pydoc_split, token_windows

    _, held = pydoc_split(seed)
    with LlamaCppModel(gguf, n_ctx=seq_len) as m:
        ids = m.tokenize(held)
    return token_windows(ids, n, seq_len, seed + 1)


def runtime_report(ggufs, n: int = 8, seq_len: int = 128, seed: int = 0, threads: int = 2, progress=None) -> dict:
    """Perplexity in llama.cpp of each GGUF on the same held-out windows; every file after the
    first gets its paired per-window loss difference to the first (mean, SE, nats)."""
    ggufs = [Path(g) for g in ggufs]
    for g in ggufs:
        if not g.is_file():
            raise BitallocError(f"--gguf {str(g)!r}: no such file")
    windows = held_out_windows(ggufs[0], n, seq_len, seed)
    res = [perplexity(g, windows, threads, progress) for g in ggufs]
    files = []
    for r in res:
        d = r.to_json()
        if r is not res[0]:
            mean, se = paired(res[0], r)
            d["vs_first"] = {"mean": mean, "se": se}
        files.append(d)
    return {"schema": "bitalloc.verify.llamacpp/1", "runtime": "llama.cpp", "windows": n, "seq_len": seq_len,
            "seed": seed, "files": files}
