"""The greedy on a profile streamed from disk: 10⁷ units without holding the (N, K) matrices.

Reads the profile's `.npz` sidecar (written by `Profile.save`, stored uncompressed) block by
block straight from the file (offsets of the zip members; no full load, memory bounded by the
block size), with one budget on average nominal bits (n_params · bits, `MemoryCost`). The same
algorithm as the in-memory `greedy` (LP relaxation on the convex hulls, rounded down, then
`fill`), arranged in passes over the blocks:

1. hull of each block; the weighted histogram of segment log-efficiencies (`_log_buckets`)
   summed over blocks gives the threshold bucket;
2. hull again; segments above the threshold are taken, the threshold bucket's segments kept
   (few) and ordered globally as `lp_greedy` orders them: the same allocation and LP bound;
3. each `fill` pass gathers every block's best moves per candidate column (the top of the
   union of the blocks' tops is the global top) and applies them as `fill` does.

So it returns the in-memory greedy's allocation (tested), with its certified LP bound.
"""
from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitalloc.errors import bad
from bitalloc.fileio import read_json

BLOCK = 1 << 20  # units per block


@dataclass
class Member:
    """An uncompressed array inside an .npz: data offset in the file, dtype, shape."""

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple

    def rows(self, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of the (C-order) array, read from the file."""
        width = int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1
        n = (b - a) * width
        out = np.fromfile(self.path, dtype=self.dtype, count=n, offset=self.offset + a * width * self.dtype.itemsize)
        if len(out) != n:
            raise bad("sidecar", str(self.path), "is truncated")
        return out.reshape((b - a, *self.shape[1:]))

    def read(self) -> np.ndarray:
        return self.rows(0, self.shape[0])


def npz_members(path) -> dict[str, Member]:
    """The arrays of an uncompressed .npz (np.savez), located without reading them."""
    path = Path(path)
    out = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise bad("sidecar", str(path), "is compressed; streaming needs np.savez (stored) arrays")
            f.seek(info.header_offset)
            head = f.read(30)
            start = info.header_offset + 30 + int.from_bytes(head[26:28], "little") + int.from_bytes(head[28:30], "little")
            f.seek(start)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            if fortran and len(shape) > 1:
                raise bad("sidecar", str(path), f"array {info.filename} is Fortran-ordered")
            out[info.filename.removesuffix(".npy")] = Member(path, f.tell(), np.dtype(dtype), tuple(shape))
    return out


def stream_greedy(profile_path, budget: float, block: int = BLOCK, passes: int = 4, chunk: int = 4096):
    """Allocation at `budget` average nominal bits per weight for the sidecar profile at
    `profile_path`, the in-memory greedy's answer computed block by block (see module doc)."""
    from bitalloc.allocation import Allocation
    from bitalloc.columns import Names, UnitMap
    from bitalloc.solvers.frontier import frontier
    from bitalloc.solvers.hull import _log_buckets, apply_moves, fill_moves, top_moves

    t0 = time.perf_counter()
    path = Path(profile_path)
    head = read_json(path, "profile")
    if "sidecar" not in head:
        raise bad("profile", str(path), "has no .npz sidecar; streaming reads sidecar profiles (Profile.save(sidecar=True))")
    cols = npz_members(path.parent / head["sidecar"])
    sens, n_params = cols["sensitivity"], cols["n_params"]
    bits = np.asarray(head["bits"], dtype=np.float64)
    N, K = sens.shape
    if n_params.shape != (N,) or len(bits) != K:
        raise bad("sidecar", str(path), "sensitivity, n_params and bits disagree in shape")
    blocks = [(a, min(a + block, N)) for a in range(0, N, block)]

    def load(a, b):
        S = sens.rows(a, b).astype(np.float64, copy=False)
        if np.isnan(S).any() or (S < 0).any() or not np.isfinite(S).any(1).all():
            raise bad("sensitivity", f"units {a}..{b}", "must be >= 0 with at least one allowed candidate per unit")
        npar = n_params.rows(a, b).astype(np.float64)
        return S, npar[:, None] * bits[None, :]

    total_params = 0.0
    for a, b in blocks:
        total_params += float(n_params.rows(a, b).sum())
    cap = float(budget) * total_params
    # pass 1: threshold bucket
    hist = np.zeros(1 << 21)
    base_cost = base_obj = all_dc = 0.0
    for a, b in blocks:
        S, C = load(a, b)
        fr = frontier(S, C)
        u = np.arange(b - a)
        base_cost += float(C[u, fr.start].sum())
        base_obj += float(S[u, fr.start].sum())
        all_dc += float(fr.dc.sum())
        hist += np.bincount(_log_buckets(fr.eff.ravel()), weights=fr.dc.ravel(), minlength=len(hist))[:len(hist)]
    room = cap - base_cost
    if room < -1e-12 * max(abs(cap), 1.0):
        raise bad("budget", budget, "is below the smallest reachable average bits of this profile")
    choice = np.zeros(N, np.int8)
    everything = all_dc <= room
    cum = np.cumsum(hist)
    bt = int(np.searchsorted(cum, room, side="right"))
    before = cum[bt - 1] if bt > 0 else 0.0
    # pass 2: segments above the threshold; members of the threshold bucket
    obj = base_obj
    mem = []  # (flat index j·N + unit, eff, dc, ds, candidate reached)
    for a, b in blocks:
        S, C = load(a, b)
        fr = frontier(S, C)
        if everything:
            choice[a:b] = fr.candidate(fr.n_seg)
            continue
        eff = fr.eff
        bucket = _log_buckets(eff.ravel()).reshape(eff.shape)
        take = bucket < bt
        obj += float(np.add.reduce(fr.ds, where=take, axis=None))
        choice[a:b] = fr.candidate(take.sum(0))
        j, u = np.nonzero(bucket == bt)
        mem.append((j * N + a + u, eff[j, u], fr.dc[j, u], fr.ds[j, u], fr.to[j, u]))
    bound = obj
    if everything:
        bound = None
    else:
        flat, e, dc, ds, to = (np.concatenate(x) for x in zip(*mem)) if mem else (np.zeros(0),) * 5
        order = np.lexsort((flat, flat // N, -e))
        flat, e, dc, ds, to = flat[order], e[order], dc[order], ds[order], to[order]
        csum = before + np.cumsum(dc)
        n_fit = int(np.searchsorted(csum, room, side="right"))
        obj += float(ds[:n_fit].sum())
        units = (flat[:n_fit] % N).astype(np.int64)
        jj = flat[:n_fit] // N
        last = np.lexsort((jj, units))  # per unit, its furthest taken segment last
        choice[units[last]] = to[last].astype(np.int8)
        bound = obj
        if n_fit < len(flat):
            used = csum[n_fit - 1] if n_fit else before
            bound = obj + (room - used) / dc[n_fit] * ds[n_fit]
    # pass 3: fill
    chosen_cost = None
    for _ in range(passes):
        chosen_cost = 0.0
        for a, b in blocks:
            S, C = load(a, b)
            chosen_cost += float(C[np.arange(b - a), choice[a:b]].sum())
        left = cap - chosen_cost
        parts, cheapest = [], np.inf
        for a, b in blocks:
            S, C = load(a, b)
            mv, ch = fill_moves(S, C, choice[a:b].astype(np.int64), left, chunk, offset=a)
            parts.append(top_moves(mv, chunk))
            cheapest = min(cheapest, ch)
        moves = top_moves(tuple(np.concatenate(x) for x in zip(*parts)), chunk)
        left, moved = apply_moves(moves, choice, left, chunk)
        if not moved or left < cheapest:
            break
    objective = cost = 0.0
    for a, b in blocks:
        S, C = load(a, b)
        u = np.arange(b - a)
        objective += float(S[u, choice[a:b]].sum())
        cost += float(C[u, choice[a:b]].sum())
    if bound is None:
        bound = objective
    bound = min(bound, objective)
    names = Names(cols["names"].read())
    avg = cost / total_params
    gap = (objective - bound) / abs(objective) if objective else 0.0
    return Allocation(UnitMap(names, bits.astype(np.int8)[choice]), "optimal" if gap <= 1e-12 else "feasible", "greedy",
                      objective=objective, bound=bound, gap=gap, avg_bits=avg, totals={"avg_bits": avg},
                      budgets={"avg_bits": float(budget)}, wall_s=time.perf_counter() - t0,
                      meta={"lp_bound": bound, "streamed": {"blocks": len(blocks), "block": block}})
