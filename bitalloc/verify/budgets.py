"""Verify an applied allocation from the weights, and measure what it costs in quality.

Budgets are recomputed from the quantized model and its packed tensors, never read from the
allocation file:
- per unit: the model's weights equal what the packed tensors decode to; no group of
  `group_size` input columns holds more than 2^bits distinct values; the packed levels take
  exactly ceil(n·bits/8) bytes;
- totals: average bits per weight counted from the packed level tensors (nominal: levels ×
  bits, without the < 8 padding bits of each unit's last byte) and with the scale/zero tensors
  (metadata overhead), next to MemoryCost's figures for the same units and bits; every other
  budget of the allocation is recomputed by its cost model on the measured bits.
Any excess is a failure naming the unit or resource and the figures (`Report.ok` is False; the
CLI exits 1).

Quality (`verify(task, ...)`): the task's held-out metric (perplexity, embedding cosine,
accuracy) of the unquantized model, of the allocation, and with `baselines` of uniform
allocations at the budget's floor and ceiling bits and of random allocations at the budget
(baselines.py; mean ± standard deviation and range over `seeds`), all with the same quantizer.
The task's model is restored to its unquantized weights afterwards.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from bitalloc.allocation import Allocation
from bitalloc.errors import BitallocError, bad
from bitalloc.solvers.compiled import fits
from bitalloc.verify.kv import kv_cache_quantized, kv_failures, kv_rows

SCHEMA = "bitalloc.verify.budgets/1"
HIGHER_IS_BETTER = {"accuracy": True, "agreement": True, "cosine": True, "cosine_min": True, "perplexity": False,
                    "loss": False, "kl": False}


@dataclass
class BudgetReport:
    """units: per unit {name, bits, n_params, level_bits, meta_bits, max_levels}; totals:
    measured and MemoryCost figures (bits per weight); budgets: [{resource, total, budget, ok,
    source}]; failures: one line each."""

    units: list[dict]
    totals: dict
    budgets: list[dict]
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def profile_of(records: list[dict], group_size: int, symmetric: bool = False, kv_config: dict | None = None):
    """(Profile with one zero-score candidate per distinct (bits, format), choice (N,)) for
    cost models to price the measured bits of these unit records (weight units, and kv units with
    kind `kv` priced under `kv_config`, the packed KV quantization settings)."""
    from bitalloc.profile import Profile
    from bitalloc.units import Unit

    cands = sorted({(int(r["bits"]), r["format"]) for r in records})
    index = {c: k for k, c in enumerate(cands)}
    units = [Unit(r["name"], r["layer"], r.get("kind", "weight"), n_params=int(r["n_params"]), macs=int(r.get("macs", 0)),
                  shape=tuple(r["shape"]), index=tuple(r["index"]) if r.get("index") is not None else None,
                  axis=r.get("axis")) for r in records]
    choice = np.array([index[(int(r["bits"]), r["format"])] for r in records], dtype=np.int64)
    p = Profile(units, [b for b, _ in cands], np.zeros((len(units), len(cands))), formats=[f for _, f in cands],
                meta={"group_size": group_size, "symmetric": symmetric, **({"kv": kv_config} if kv_config else {})})
    return p, choice


def cost_model_for(resource: str):
    """A registered cost model (default options) whose resource is `resource`, else None."""
    from bitalloc.hwcost import COST_MODELS

    for name in COST_MODELS.names():
        try:
            m = COST_MODELS.create(name)
        except (BitallocError, TypeError):
            continue
        if m.resource == resource:
            return m
    return None


def check_budgets(packed, model=None, allocation: Allocation | None = None, constraints=(), task=None,
                  expected: dict | None = None) -> BudgetReport:
    """Recompute every budget from `packed` (a pack.PackedModel) and, when given, `model`'s
    weights (see the module docstring). allocation: the budgets to hold (default: the one stored
    in the packed file); constraints: extra bitalloc.Constraint objects to check; task: the
    model's Task, to record its layer graph when a budget is a peak SRAM; expected: the
    quantizer settings the file must have been written with ({group_size, symmetric, zero}, any
    subset; default: the allocation's meta["storage"], i.e. its profile's)."""
    from bitalloc.quant.codec import decode_unit

    from bitalloc.hwcost.memory import MemoryCost

    settings = packed.settings
    g = int(settings["group_size"])
    alloc = allocation or Allocation.from_json(packed.allocation, where="packed allocation")
    failures: list[str] = []
    if packed.codes:  # the weight quantizer's settings (a kv-only file quantizes no weights)
        failures += settings_failures(settings, {**alloc.meta.get("storage", {}), **(expected or {})})
    failures += stray_tensors(packed)
    filled = set(alloc.meta.get("filled_units", ()))
    weights = _model_weights(model, {c.record["layer"] for c in packed.codes}) if model is not None else {}
    rows = []
    for c in packed.codes:
        r, n, b = c.record, int(c.record["n_params"]), c.bits
        name = r["name"]
        if name not in alloc.bits:
            failures.append(f"unit {name}: in the packed file but not in the allocation")
        elif alloc.bits[name] != b:
            failures.append(f"unit {name}: packed at {b} bits, the allocation says {alloc.bits[name]}")
        fmt = c.format
        if name in alloc.bits and alloc.format_of(name) != fmt:
            failures.append(f"unit {name}: packed as {fmt.name}, the allocation says {alloc.format_of(name).name}")
        decoded = decode_unit(c, settings)
        block = _block(weights[r["layer"]], r) if weights else decoded
        if weights and not np.array_equal(block, _as_model_dtype(decoded, model, r["layer"])):
            diff = float(np.abs(block - decoded).max())
            failures.append(f"unit {name}: the model's weights differ from the packed tensors (max |diff| {diff:.3g})")
        if c.weight is not None:
            level_bits, meta_bits, levels = 16 * n, 0, None
            stored = packed.tensors[f"{name}.weight"].nbytes * 8
            if stored != 16 * n:
                failures.append(f"unit {name}: float weight takes {stored} bits, expected {16 * n}")
        else:
            qbytes = packed.tensors[f"{name}.q"].nbytes
            if qbytes != -(-n * b // 8):
                failures.append(f"unit {name}: packed levels take {qbytes} bytes, {b} bits x {n} weights need {-(-n * b // 8)}")
            level_bits = n * b
            meta_bits = sum(packed.tensors[f"{name}.{p}"].nbytes * 8 for p in META_PARTS if f"{name}.{p}" in packed.tensors)
            gb = fmt.block or g  # input columns per scale: MX 32, NVFP4 16, `_g<N>`, else the group size
            levels = max_distinct_per_group(block, gb)
            if levels > 2 ** b:
                failures.append(f"unit {name}: a block of {gb} columns holds {levels} distinct values > 2^{b} = {2 ** b}")
            failures += storage_failures(c, level_bits + meta_bits, settings)
            failures += scale_zero_failures(c, packed.tensors, settings)
        rows.append({"name": name, "bits": b, "n_params": n, "level_bits": level_bits, "meta_bits": meta_bits,
                     "max_levels": levels, **({"filled": True} if name in filled else {})})
    kv_units, kv_recs = kv_rows(packed.kv)  # KV caches: bits per token, geometry from the model's config
    failures += kv_failures(packed.kv, alloc, {c.name for c in packed.codes})
    rows += kv_units
    held = [u for u in rows if u["name"] not in filled]  # the units the budgets were set for
    n_total = sum(u["n_params"] for u in rows)
    n_held = sum(u["n_params"] for u in held) or 1
    measured = {"avg_bits": sum(u["level_bits"] for u in held) / n_held,
                "avg_bits_with_overhead": sum(u["level_bits"] + u["meta_bits"] for u in held) / n_held}
    records = [c.record for c in packed.codes if c.name not in filled] + kv_recs
    profile, choice = profile_of(records or [c.record for c in packed.codes], g, bool(settings.get("symmetric")),
                                 (packed.kv or {}).get("config"))
    totals = {"n_params": n_total, **measured,
              "file_bits_per_weight": sum(t.nbytes for t in packed.tensors.values()) * 8 / max(n_total, 1),
              "memory_cost_avg_bits": MemoryCost().total(profile, choice),
              "memory_cost_avg_bits_with_overhead": MemoryCost(count_overhead=True, group_size=g).total(profile, choice)}
    if filled:
        totals.update(filled_units=len(filled), filled_bits=alloc.meta.get("filled_bits"),
                      n_params_allocated=sum(u["n_params"] for u in held),
                      model_avg_bits=sum(u["level_bits"] for u in rows) / max(n_total, 1))
    stated = alloc.avg_bits_with_overhead
    if stated is not None and not fits(measured["avg_bits_with_overhead"], stated):
        failures.append(f"avg_bits_with_overhead {measured['avg_bits_with_overhead']:.4f} counted from the bytes stored "
                        f"> {stated:.4f} that the allocation was solved for (file: group size {g}, "
                        f"{'symmetric' if settings.get('symmetric') else settings.get('zero', 'int') + ' zero-point'}, "
                        f"{_scale_dtypes(packed)} scales)")
    if task is not None and any(c.get("cost", {}).get("options", {}).get("metric") == "sram" for c in alloc.constraints):
        from bitalloc.hwcost.graph import attach_graph

        attach_graph(profile, task)  # peak SRAM over the real layer graph, as at solve time
    budgets = recheck_budgets(alloc, profile, choice, measured, failures)
    for con in constraints:
        total = con.cost.total(profile, choice)
        budgets.append({"resource": con.cost.resource, "total": total, "budget": con.budget,
                        "ok": fits(total, con.budget), "source": f"cost model {con.cost.name}"})
    for bud in budgets:
        if not bud["ok"]:
            top = sorted(held, key=lambda u: -u["bits"] * u["n_params"])[:3]
            shown = ", ".join(f"{u['name']} {u['bits']} bits x {u['n_params']:,}" for u in top)
            failures.append(f"budget {bud['resource']}: {bud['total']:.6g} > {bud['budget']:.6g} "
                            f"(from the {bud['source']}, {n_held:,} weights; largest units: {shown})")
    return BudgetReport(rows, totals, budgets, failures)


def recheck_budgets(alloc: Allocation, profile, choice: np.ndarray, measured: dict, failures: list[str]) -> list[dict]:
    """[{resource, total, budget, ok, source, solve_total}] of every budget of `alloc`, each
    from its cost model rebuilt from the stored spec (Allocation.constraints; average bits from
    the packed tensors); appends to `failures` an edited constraint list (its digest), a budget
    that disagrees with the list, a spec that cannot be rebuilt, and a recomputed total that is
    not the one the solver reported (a spec or unit shapes changed since the solve)."""
    from bitalloc.allocation import constraints_digest
    from bitalloc.hwcost.base import CostModel

    out = []
    if alloc.constraints_sha256 is not None and constraints_digest(alloc.constraints) != alloc.constraints_sha256:
        failures.append("allocation constraints: edited after the solve (their sha256 is not the stored "
                        f"{alloc.constraints_sha256[:12]})")
    specs = {c["resource"]: c for c in alloc.constraints}
    for resource, cap in alloc.budgets.items():
        c = specs.get(resource)
        if c is not None and float(c["budget"]) != float(cap):
            failures.append(f"budget {resource}: {cap:g} in budgets but {c['budget']:g} in constraints (edited?)")
    for resource in list(alloc.budgets) + [r for r in specs if r not in alloc.budgets]:
        c = specs.get(resource)
        cap = float(c["budget"]) if c is not None else float(alloc.budgets[resource])
        if c is not None:
            try:
                cm = CostModel.from_spec(c["cost"])
            except BitallocError as e:
                failures.append(f"budget {resource}: its cost model cannot be rebuilt from the allocation: {e}")
                continue
            if cm.resource != resource:
                failures.append(f"budget {resource}: the stored spec builds a model of {cm.resource} (edited?)")
                continue
            spec = c["cost"]
        else:  # an allocation without specs: the registered model with default options
            cm = cost_model_for(resource) if resource not in measured else None
            if cm is None and resource not in measured:
                raise bad("allocation budget", resource, "no registered cost model computes this resource and the "
                          "allocation stores no cost-model spec for it")
            spec = None
        try:
            model_total = cm.total(profile, choice) if cm is not None else None
        except BitallocError as e:  # e.g. KV bytes from a file written without its kv records
            failures.append(f"budget {resource}: cannot be recomputed from the packed file: {e}")
            continue
        if resource in measured:
            total, source = measured[resource], "packed tensors"
        else:
            total, source = model_total, f"cost model {cm.name}" + (f" on {cm.device.name}" if getattr(cm, "device", None) else "")
            if cm.resource == "kv_bytes_per_token":
                source += " on the packed kv records (geometry from the model's config)"
        solve_total = alloc.totals.get(resource)
        check = model_total if model_total is not None else total
        if spec is not None and solve_total is not None and abs(check - solve_total) > 1e-6 * max(1.0, abs(solve_total)):
            failures.append(f"budget {resource}: recomputed {check:.6g} but the solver reported {solve_total:.6g} "
                            "(the allocation's spec or the model's units changed since the solve)")
        out.append({"resource": resource, "total": total, "budget": cap, "ok": fits(total, cap), "source": source,
                    "solve_total": solve_total, "spec": spec})
    return out


SETTINGS_KEYS = ("group_size", "symmetric", "zero")


def settings_failures(settings: dict, expected: dict) -> list[str]:
    """A failure for each quantizer setting of the file that differs from `expected` (the
    allocation's profile, or what the command asked for)."""
    out = []
    for key in SETTINGS_KEYS:
        if key in expected and expected[key] is not None and settings.get(key) != expected[key]:
            out.append(f"quantizer {key}: the file has {settings.get(key)!r}, the allocation's profile "
                       f"was estimated with {expected[key]!r}")
    return out


def stray_tensors(packed) -> list[str]:
    """A failure for each stored tensor that belongs to no unit (bytes the budgets would not count)."""
    own = {f"{c.name}.{p}" for c in packed.codes for p in ("q", "weight", *META_PARTS)}
    stray = sorted(set(packed.tensors) - own)
    if not stray:
        return []
    extra = sum(packed.tensors[k].nbytes for k in stray)
    return [f"{len(stray)} tensor(s) of no unit, {extra:,} bytes: {', '.join(stray[:3])}"]


def scale_zero_failures(code, tensors: dict, settings: dict) -> list[str]:
    """For an integer unit (a codec.UnitCode): its scales must be float16 (rows, groups of
    `group_size` columns) and its zero-points absent (symmetric), packed at the unit's bits (int)
    or float16 (float)."""
    from bitalloc.quant.pack import SCALE_DTYPE, is_block_float

    if is_block_float(code.format):
        return []
    record = code.record
    name, b = record["name"], int(record["bits"])
    rows, cols = (int(x) for x in record["shape"])
    g = int(settings["group_size"])
    groups = (rows, -(-cols // min(g, cols)))
    out = []
    s = tensors.get(f"{name}.scale")
    if s is not None and (s.dtype != SCALE_DTYPE or s.shape != groups):
        out.append(f"unit {name}: scales stored as {s.dtype} {tuple(s.shape)}, expected float16 {groups} "
                   f"(groups of {g} input columns)")
    z = tensors.get(f"{name}.zero")
    if settings.get("symmetric"):
        if z is not None:
            out.append(f"unit {name}: zero-points stored ({z.nbytes:,} bytes) for a symmetric quantizer")
    elif z is not None:
        if settings.get("zero") == "int":
            want = -(-groups[0] * groups[1] * b // 8)
            if z.dtype != np.uint8 or z.ndim != 1 or z.size != want:
                out.append(f"unit {name}: int zero-points stored as {z.dtype} {tuple(z.shape)}, expected {want} "
                           f"uint8 bytes ({b} bits x {groups[0] * groups[1]} groups)")
        elif z.dtype != SCALE_DTYPE or z.shape != groups:
            out.append(f"unit {name}: float zero-points stored as {z.dtype} {tuple(z.shape)}, expected float16 {groups}")
    return out


def _scale_dtypes(packed) -> str:
    return "/".join(sorted({str(t.dtype) for k, t in packed.tensors.items() if k.endswith(".scale")})) or "no"


META_PARTS = ("scale", "zero", "tscale")  # a unit's tensors besides its levels (pack.py)


def storage_failures(code, stored_bits: int, settings: dict) -> list[str]:
    """For a minifloat unit (a codec.UnitCode: per-group FP, MX, NVFP4): [a failure] unless its
    packed levels and scales take exactly its format's `storage_bits` (what MemoryCost with
    overhead charges)."""
    from bitalloc.quant.pack import is_block_float
    from bitalloc.quant.integer import quantizer_for

    fmt = code.format
    if not is_block_float(fmt):
        return []
    rows, cols = (int(x) for x in code.record["shape"])
    want = int(quantizer_for(fmt, int(settings["group_size"])).storage_bits(rows, cols))
    if stored_bits != want:
        return [f"unit {code.name}: {fmt.name} levels and scales take {stored_bits} bits, the format stores {want}"]
    return []


def max_distinct_per_group(block: np.ndarray, group_size: int) -> int:
    """Most distinct values in any row's group of `group_size` consecutive columns of `block`."""
    rows, cols = block.shape
    g = min(group_size, cols)
    ng = -(-cols // g)
    x = np.pad(block, ((0, 0), (0, ng * g - cols)), mode="edge") if ng * g != cols else block
    s = np.sort(x.reshape(rows * ng, g), axis=1)
    return int(1 + (np.diff(s, axis=1) != 0).sum(axis=1).max()) if g > 1 else 1


def _model_weights(model, layers) -> dict[str, np.ndarray]:
    mods = dict(model.named_modules())
    out = {}
    for layer in layers:
        if layer not in mods:
            raise BitallocError(f"layer {layer!r} of the packed units is not in the model; the file is for another model")
        from bitalloc.models.layers import weight2d

        out[layer] = weight2d(mods[layer]).detach().float().cpu().numpy()
    return out


def _block(W: np.ndarray, r: dict) -> np.ndarray:
    if r.get("index") is None:
        return W
    a, b = r["index"]
    return W[a:b] if r["axis"] == 0 else W[:, a:b]


def _as_model_dtype(x: np.ndarray, model, layer: str) -> np.ndarray:
    import torch

    dtype = dict(model.named_modules())[layer].weight.dtype
    return x if dtype == torch.float32 else torch.from_numpy(x).to(dtype).float().numpy()


@contextlib.contextmanager
def restored(model, layers):
    """Inside: change `layers`' weights freely (the yielded function puts them back early);
    on exit they are back as they were."""
    mods = dict(model.named_modules())
    saved = {n: mods[n].weight.detach().clone() for n in layers}
    try:
        yield lambda: _put(mods, saved)
    finally:
        _put(mods, saved)


def _put(mods, saved):
    import torch

    with torch.no_grad():
        for n, w in saved.items():
            mods[n].weight.copy_(w)


@dataclass
class Report:
    """model, settings (quantizer), budget (BudgetReport), quality rows, budget_bits (the
    average bits per weight the baselines are held to)."""

    model: str
    settings: dict
    budget: BudgetReport
    quality: list[dict]
    budget_bits: float | None = None

    @property
    def ok(self) -> bool:
        return self.budget.ok

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "model": self.model, "ok": self.ok, "quantizer": self.settings,
                "budget_bits": self.budget_bits, "failures": self.budget.failures, "totals": self.budget.totals,
                "budgets": self.budget.budgets, "quality": self.quality, "units": self.budget.units}

    def tables(self) -> str:
        """Markdown: the budgets, then the quality rows."""
        t = self.budget.totals
        lines = ["| resource | measured | MemoryCost | budget | ok | source |", "|---|---:|---:|---:|---|---|"]
        for res in ("avg_bits", "avg_bits_with_overhead"):
            bud = next((b for b in self.budget.budgets if b["resource"] == res), None)
            lines.append(f"| {res} | {t[res]:.4f} | {t['memory_cost_' + res]:.4f} | "
                         f"{'—' if bud is None else format(bud['budget'], '.4g')} | "
                         f"{'—' if bud is None else '✓' if bud['ok'] else '✗ EXCEEDED'} | packed tensors |")
        for b in self.budget.budgets:
            if b["resource"] not in ("avg_bits", "avg_bits_with_overhead"):
                lines.append(f"| {b['resource']} | {b['total']:.6g} | — | {b['budget']:.6g} | "
                             f"{'✓' if b['ok'] else '✗ EXCEEDED'} | {b['source']} |")
        lines.append(f"\nfile: {t['file_bits_per_weight']:.4f} bits per weight over {t['n_params']:,} weights "
                     f"(levels, scales, zeros, padding)")
        if self.quality:
            metrics = [k for k in self.quality[0] if k in HIGHER_IS_BETTER]
            lines += ["", "| allocation | bits/weight | " + " | ".join(metrics) + " |",
                      "|---|---:|" + "---:|" * len(metrics)]
            for row in self.quality:
                cells = [_cell(row, m) for m in metrics]
                bits = "—" if row.get("avg_bits") is None else f"{row['avg_bits']:.4f}"
                lines.append(f"| {row['name']} | {bits} | " + " | ".join(cells) + " |")
        if self.budget.failures:
            lines += ["", "FAILED:"] + [f"- {f}" for f in self.budget.failures]
        return "\n".join(lines)


def _cell(row: dict, m: str) -> str:
    v = row.get(m)
    if v is None:
        return "—"
    if f"{m}_std" in row:
        return f"{v:.4g} ± {row[m + '_std']:.2g} ({row[m + '_min']:.4g}–{row[m + '_max']:.4g})"
    return f"{v:.4g}"


def verify(task, allocation=None, packed=None, quantizer="rtn", *, group_size: int = 128, symmetric: bool = False,
           zero: str = "int", options: dict | None = None, baselines: bool = False, seeds: int = 3,
           constraints=(), progress=None) -> Report:
    """Apply `allocation` to `task.model` (or load the `packed` file into it), check every budget
    from the weights, and measure held-out quality against the unquantized model and, with
    `baselines`, uniform and random allocations at the same budget (see the module docstring).

    task: a bitalloc Task (models.load_task); allocation: Allocation, path or {unit: bits}
    (default: the one stored in `packed`); packed: path of a packed file (its quantizer settings
    win over the arguments); seeds: random baselines (>= 3 recommended); progress(status) gets one
    line per evaluation. The model's weights are restored before returning.
    """
    from bitalloc.verify.baselines import average_bits, bracket, random_at_budget, uniform
    from bitalloc.apply.quantize import Settings, apply, as_allocation
    from bitalloc.quant.pack import read

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise bad("seeds", seeds, "must be a positive integer")
    pk = read(packed) if packed is not None else None
    if allocation is None and pk is None:
        raise bad("allocation", None, "give an allocation, a packed file, or both")
    alloc = as_allocation(allocation) if allocation is not None else Allocation.from_json(pk.allocation, "packed allocation")
    if pk is not None:
        s = pk.settings
        quantizer, options = s["name"], s.get("options", {})
        group_size, symmetric, zero = int(s["group_size"]), bool(s["symmetric"]), s["zero"]
    settings = Settings(quantizer if isinstance(quantizer, str) else quantizer.name, dict(options or {}),
                        group_size, symmetric, zero)
    kw = dict(group_size=group_size, symmetric=symmetric, zero=zero, options=options, calib=task.calib,
              forward=task.loss, macs=task.macs)
    note = progress or (lambda s: None)
    model = task.model
    layers = sorted({s.split(":")[0] for s in alloc.bits})
    quality: list[dict] = []
    with restored(model, [n for n in layers if n in dict(model.named_modules())]) as reset:
        note("unquantized")
        quality.append({"name": "unquantized", "avg_bits": None, **task.quality(model)})
        if pk is not None:
            pk.load_into(model)
        else:
            pk = apply(model, alloc, quantizer, **kw).packed()
        report = check_budgets(pk, model, alloc, constraints, task=task)
        note("allocation")
        with kv_cache_quantized(model, pk.kv):  # the allocation's kv units, if any, quantize the cache
            quality.append({"name": f"allocation ({alloc.solver})", "avg_bits": report.totals["avg_bits"],
                            **task.quality(model)})
        budget = alloc.budgets.get("avg_bits", report.totals["avg_bits"])
        if baselines:
            names = [c.name for c in pk.codes]
            n_params = {c.name: int(c.record["n_params"]) for c in pk.codes}
            lo, hi = bracket(budget)
            for b in sorted({lo, hi}):
                reset()
                note(f"uniform {b}")
                apply(model, uniform(names, b), quantizer, **kw)
                over = "" if b <= budget + 1e-9 else ", over budget"
                quality.append({"name": f"uniform {b} bits{over}", "avg_bits": float(b), **task.quality(model)})
            if hi > lo:
                runs = []
                for seed in range(seeds):
                    reset()
                    note(f"random seed {seed}")
                    bits = random_at_budget(names, [n_params[s] for s in names], budget, seed)
                    apply(model, bits, quantizer, **kw)
                    runs.append({"avg_bits": average_bits(bits, n_params), **task.quality(model)})
                quality.append(_summary(f"random at the budget ({seeds} seeds)", runs))
    return Report(task.name, settings.to_json(), report, quality, budget)


def _summary(name: str, runs: list[dict]) -> dict:
    out = {"name": name, "seeds": len(runs)}
    for k in runs[0]:
        v = np.array([r[k] for r in runs], dtype=np.float64)
        out[k] = float(v.mean())
        if k != "avg_bits":
            out.update({f"{k}_std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, f"{k}_min": float(v.min()),
                        f"{k}_max": float(v.max())})
    out["runs"] = runs
    return out
