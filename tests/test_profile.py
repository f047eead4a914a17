"""Profile and Allocation files (round trips, sidecar, bad input), unit carving, memory cost."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

import bitalloc
from bitalloc import Allocation, BitallocError, Profile, Unit
from bitalloc.hwcost.memory import MemoryCost
from bitalloc.units import carve

from conftest import profile_doc


def strict_loads(text: str):
    """json.loads that refuses NaN/Infinity (what other tools' strict parsers do)."""
    def no(name):
        raise AssertionError(f"non-standard JSON constant {name} written")
    return json.loads(text, parse_constant=no)


def assert_same_profile(a: Profile, b: Profile):
    assert a.names == b.names
    assert a.layers == b.layers
    assert a.kinds == b.kinds
    assert a.bits == b.bits and a.formats == b.formats
    for f in ("n_params", "macs", "rows", "cols"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert getattr(b, f).dtype == np.int64
    np.testing.assert_array_equal(a.sensitivity, b.sensitivity)  # inf (null) cells included
    assert a.meta == b.meta and a.extra == b.extra


# ---- Profile JSON ---------------------------------------------------------------------------
def rich_doc() -> dict:
    """Formats (two 4-bit candidates), null cells, extra top-level and per-unit fields."""
    return {
        "schema": "bitalloc.profile/1",
        "bits": [2, 4, 4, 8, 16],
        "formats": ["int2", "int4_g128", "fp4_e2m1", "int8", "fp16"],
        "units": [
            {"name": "model.layers.0.mlp.down_proj:g0", "layer": "model.layers.0.mlp.down_proj", "n_params": 73728,
             "macs": 73728, "shape": [576, 128], "index": [0, 128], "dtype": "bf16", "hessian_trace": 1.25},
            {"name": "model.layers.0.mlp.down_proj:g1", "layer": "model.layers.0.mlp.down_proj", "n_params": 73728,
             "macs": 73728, "shape": [576, 128], "index": [128, 256], "kind": "weight", "tags": ["a", {"b": None}]},
            {"name": "kv.0", "n_params": 1000, "kind": "kv"},
        ],
        "sensitivity": [[0.9, 0.2, 0.19, 0.003, 0.0], [0.5, None, 0.1, 0.001, 0.0], [None, 0.25, None, 0.0125, 0]],
        "meta": {"estimator": "fisher", "model": "test", "granularity": "group", "group_size": 128,
                 "settings": {"batches": 4, "seed": [1, 2]}},
        "provenance": {"tool": "on-device flow", "version": "2.1"},
        "note": "extra top-level fields are kept",
    }


def test_profile_json_round_trip(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(rich_doc()))
    p = Profile.load(path)
    assert p.formats == ["int2", "int4_g128", "fp4_e2m1", "int8", "fp16"]
    assert p.candidate_labels() == ["2", "int4_g128", "fp4_e2m1", "8", "16"]
    assert np.isinf(p.sensitivity[1, 1]) and np.isinf(p.sensitivity[2, 0])
    assert p.units[2].layer == "kv.0" and p.units[2].kind == "kv"
    assert p.units[0].index == (0, 128) and p.units[0].shape == (576, 128)
    assert p.extra == {"provenance": {"tool": "on-device flow", "version": "2.1"},
                       "note": "extra top-level fields are kept"}

    out = tmp_path / "q.json"
    p.save(out)
    text = out.read_text()
    doc = strict_loads(text)
    q = Profile.load(out)
    assert_same_profile(p, q)
    assert q.to_json() == p.to_json() == doc
    # every field of the input survives, per unit too
    src = rich_doc()
    for k in ("schema", "bits", "formats", "meta", "provenance", "note"):
        assert doc[k] == src[k]
    assert doc["sensitivity"] == [[float(v) if v is not None else None for v in row] for row in src["sensitivity"]]
    for got, want in zip(doc["units"], src["units"]):
        for k, v in want.items():
            if k == "kind" and v == "weight":
                continue  # the default is not written
            assert got[k] == v, k
    # saving again gives byte-identical text
    out2 = tmp_path / "r.json"
    q.save(out2)
    assert out2.read_text() == text


def test_profile_round_trip_from_units(tmp_path):
    units = [Unit("a", n_params=12, macs=5, shape=(3, 4)), Unit("b", "blk", "weight", 7)]
    p = Profile(units, [2, 3, 8], [[3.0, 1.0, 0.0], [np.inf, 2.0, 1.0]], meta={"estimator": "x"})
    assert not p.has_formats and "formats" not in p.to_json()
    p.save(tmp_path / "p.json")
    q = Profile.load(tmp_path / "p.json")
    assert_same_profile(p, q)
    assert q.units == units
    assert strict_loads((tmp_path / "p.json").read_text())["sensitivity"][1][0] is None


def big_profile(n: int = 50_000) -> Profile:
    rng = np.random.default_rng(0)
    g = np.arange(n)
    names = [f"model.layers.{i // 500}.mlp.down_proj:g{i % 500}" for i in range(n)]
    S = rng.random((n, 6))
    S[rng.random((n, 6)) < 0.05] = np.inf
    S[:, 0] = 1.0
    return Profile.from_columns(names, np.full(n, 576 * 128), [2, 3, 4, 5, 6, 8], S,
                                kinds=["weight" if i % 7 else "kv" for i in range(n)],
                                macs=g * 3, rows=np.full(n, 576), cols=np.full(n, 128),
                                formats=["int2", "int3", "int4", "int5", "int6", "mxfp8"],
                                meta={"granularity": "group", "group_size": 128}, extra={"run": {"id": 7}})


def test_sidecar_round_trip_large(tmp_path):
    p = big_profile()
    t0 = time.perf_counter()
    path = p.save(tmp_path / "big.profile.json")
    side = tmp_path / "big.profile.npz"
    assert side.exists(), "a 50k-unit profile gets an .npz sidecar by default"
    head = strict_loads(path.read_text())
    assert head["sidecar"] == "big.profile.npz" and head["n_units"] == 50_000
    assert "units" not in head and "sensitivity" not in head
    assert path.stat().st_size < 10_000
    q = Profile.load(path)
    elapsed = time.perf_counter() - t0
    assert_same_profile(p, q)
    assert q.layers[0] == "model.layers.0.mlp.down_proj"
    assert elapsed < 10, f"50k-unit save+load took {elapsed:.1f}s"
    # the sidecar is found next to the header, wherever the caller runs from
    assert Profile.load(str(path)).n_units == 50_000


def test_sidecar_forced_small_and_json_forced_large(tmp_path):
    p = Profile.from_columns(["a", "b"], [4, 8], [2, 4], [[1.0, 0.5], [np.inf, 0.2]])
    p.save(tmp_path / "s.json", sidecar=True)
    assert (tmp_path / "s.npz").exists()
    assert_same_profile(p, Profile.load(tmp_path / "s.json"))


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "count"])
def test_sidecar_damage(tmp_path, damage):
    p = Profile.from_columns([f"u{i}" for i in range(100)], np.arange(1, 101), [2, 4], np.ones((100, 2)))
    path = p.save(tmp_path / "p.json", sidecar=True)
    side = tmp_path / "p.npz"
    if damage == "missing":
        side.unlink()
        want = r"sidecar .*p\.npz'?: file not found"
    elif damage == "truncated":
        side.write_bytes(side.read_bytes()[: side.stat().st_size // 2])
        want = r"sidecar .*p\.npz'?: cannot be read"
    elif damage == "garbage":
        side.write_bytes(b"not a zip file at all")
        want = r"sidecar .*p\.npz'?: cannot be read"
    else:
        head = json.loads(path.read_text())
        head["n_units"] = 99
        path.write_text(json.dumps(head))
        want = r"n_units 99: sidecar holds 100 units"
    with pytest.raises(BitallocError, match=want) as e:
        Profile.load(path)
    assert str(tmp_path / "p.json") in str(e.value) and "\n" not in str(e.value)


# ---- bad profile files --------------------------------------------------------------------
def _set(path_keys, value):
    def f(d):
        obj = d
        for k in path_keys[:-1]:
            obj = obj[k]
        obj[path_keys[-1]] = value
    return f


def _text_sub(old, new):
    return ("text", old, new)


BAD = [  # (id, change to the document or its text, regex the message must match)
    ("malformed", ("raw", '{"schema": "bitalloc.profile/1", "bits": [2, 4, 8],, }'), r"not valid JSON \(line 1, column \d+"),
    ("truncated", ("truncate",), r"not valid JSON \(line \d+"),
    ("empty", ("raw", ""), r"not valid JSON"),
    ("top-level list", ("raw", "[1, 2]"), r"top level is list, expected a JSON object"),
    ("wrong schema", _set(["schema"], "bitalloc.profile/2"), r"schema 'bitalloc.profile/2': expected 'bitalloc.profile/1'"),
    ("no schema", lambda d: d.pop("schema"), r"schema None: expected"),
    ("row count", lambda d: d["sensitivity"].pop(), r"sensitivity '2 rows': must have one row per unit \(3\)"),
    ("row length", lambda d: d["sensitivity"][1].pop(), r"sensitivity\[1\] .*must be a list of 3 numbers"),
    ("NaN", ("text", "0.00390625", "NaN"), r"sensitivity\[0\]\[1\] NaN: not allowed"),
    ("Infinity", ("text", "0.0078125", "Infinity"), r"sensitivity\[1\]\[1\] Infinity: not allowed"),
    ("-Infinity", ("text", "0.0078125", "-Infinity"), r"sensitivity\[1\]\[1\] -Infinity: not allowed"),
    ("NaN in meta", ("text", '"test"', "NaN"), r"meta\.estimator NaN: not allowed"),
    ("overflow to inf", ("text", "0.0078125", "1e400"), r"sensitivity\[1\]\[1\] inf: must be a number >= 0"),
    ("string cell", _set(["sensitivity", 0, 0], "0.5"), r"sensitivity\[0\]\[0\] '0.5': must be a number"),
    ("negative", _set(["sensitivity", 2, 0], -0.5), r"sensitivity\[2\]\[0\] \(unit 'layers.2.proj'\) -0.5: must be >= 0"),
    ("all null", _set(["sensitivity", 1], [None, None, None]), r"sensitivity\[1\] \(unit 'layers.1.proj'\) 'all null'"),
    ("n_params 0", _set(["units", 1, "n_params"], 0), r"units\[1\]: unit 'layers.1.proj' n_params 0: must be a positive integer"),
    ("n_params negative", _set(["units", 0, "n_params"], -3), r"units\[0\]: unit 'layers.0.proj' n_params -3"),
    ("n_params float", _set(["units", 2, "n_params"], 1.5), r"units\[2\]: unit 'layers.2.proj' n_params 1.5"),
    ("n_params missing", lambda d: d["units"][0].pop("n_params"), r"units\[0\] .*must have 'name' and 'n_params'"),
    ("duplicate names", _set(["units", 2, "name"], "layers.0.proj"), r"units name 'layers.0.proj': unit names must be unique"),
    ("duplicate candidate", _set(["bits"], [2, 4, 4]), r"candidates '4 bits int4': each \(bits, format\) candidate must appear once"),
    ("duplicate format", lambda d: d.update(bits=[2, 4, 4], formats=["int2", "fp4", "fp4"]), r"candidates '4 bits fp4'"),
    ("bits missing", lambda d: d.pop("bits"), r"bits None: must be a non-empty list"),
    ("bits zero", _set(["bits"], [0, 4, 8]), r"bits 0: each candidate's bit-width must be an integer from 1 to 32"),
    ("formats length", lambda d: d.update(formats=["int2"]), r"formats \['int2'\]: must be a list of 3 format names"),
    ("units not a list", _set(["units"], {}), r"units 'dict': must be a list"),
    ("shape not a list", _set(["units", 0, "shape"], "576x576"), r"units\[0\]\.shape '576x576': must be a list of positive integers"),
    ("index bad", _set(["units", 0, "index"], 3), r"units\[0\]\.index 3: must be \[start, stop\]"),
    ("meta not object", _set(["meta"], [1]), r"meta \[1\]: must be a JSON object"),
]


@pytest.mark.parametrize("change,want", [(c, w) for _, c, w in BAD], ids=[i for i, _, _ in BAD])
def test_bad_profile_files(tmp_path, change, want):
    path = tmp_path / "bad.json"
    doc = profile_doc()
    if isinstance(change, tuple) and change[0] == "raw":
        text = change[1]
    elif isinstance(change, tuple) and change[0] == "truncate":
        text = json.dumps(doc, indent=1)
        text = text[: len(text) // 2]
    elif isinstance(change, tuple) and change[0] == "text":
        text = json.dumps(doc)
        assert change[1] in text
        text = text.replace(change[1], change[2], 1)
    else:
        change(doc)
        text = json.dumps(doc)
    path.write_text(text)
    with pytest.raises(BitallocError, match=want) as e:
        Profile.load(path)
    msg = str(e.value)
    assert msg.startswith(f"profile {str(path)!r}"), msg
    assert "\n" not in msg


def test_profile_doc_is_valid(tmp_path):
    """The base document the bad-file cases corrupt loads cleanly (so each case tests one thing)."""
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(profile_doc()))
    p = Profile.load(path)
    assert p.n_units == 3 and p.bits == [2, 4, 8]


def test_missing_file(tmp_path):
    with pytest.raises(BitallocError, match=r"profile '.*nope.json': no such file"):
        Profile.load(tmp_path / "nope.json")


def test_bad_columns_api():
    with pytest.raises(BitallocError, match=r"n_params"):
        Profile.from_columns(["a"], np.array([1.5]), [2, 4], [[1, 0]])
    with pytest.raises(BitallocError, match=r"sensitivity 'shape \(1, 3\)': must be \(1 units, 2 candidates\)"):
        Profile.from_columns(["a"], [4], [2, 4], [[1, 0, 0]])
    with pytest.raises(BitallocError, match=r"sensitivity\[0\]\[1\] \(unit 'a'\) 'NaN'"):
        Profile.from_columns(["a"], [4], [2, 4], [[1, np.nan]])
    with pytest.raises(BitallocError, match=r"units\[0\] 'str': must be a bitalloc.Unit"):
        Profile(["a"], [2], [[1.0]])
    with pytest.raises(BitallocError, match="unit name"):
        Unit("", n_params=3)


# ---- Allocation ---------------------------------------------------------------------------
@pytest.fixture
def allocation(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(rich_doc()))
    return bitalloc.solve(Profile.load(path), 6.0)


def test_allocation_json_round_trip(allocation, tmp_path):
    a = allocation
    assert a.status == "optimal" and a.formats is not None
    d = a.to_json()
    assert d["schema"] == "bitalloc.allocation/1"
    text = json.dumps(d)
    b = Allocation.from_json(strict_loads(text))
    assert b == a
    assert b.to_json() == d
    assert json.dumps(b.to_json()) == text
    path = a.save(tmp_path / "a.json")
    raw = path.read_text()
    c = Allocation.load(path)
    assert c == a and c.to_json() == d
    c.save(tmp_path / "b.json")
    assert (tmp_path / "b.json").read_text() == raw


def test_allocation_round_trip_infeasible_and_greedy(tmp_path):
    p = Profile.from_columns(["a", "b"], [10, 30], [2, 4, 8], [[3, 1, 0], [2, 1, 0.5]])
    for a in (bitalloc.solve(p, 1.0), bitalloc.solve(p, 3.0, solver="greedy")):
        d = a.to_json()
        assert "formats" not in d
        assert Allocation.from_json(json.loads(json.dumps(d))).to_json() == d
        a.save(tmp_path / f"{a.solver}.json")
        assert Allocation.load(tmp_path / f"{a.solver}.json") == a


def test_allocation_save_refuses_overwrite(allocation, tmp_path):
    path = tmp_path / "a.json"
    path.write_text("keep me")
    with pytest.raises(BitallocError, match="file exists"):
        allocation.save(path)
    assert path.read_text() == "keep me"
    allocation.save(path, force=True)
    assert Allocation.load(path) == allocation
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no temp files left


@pytest.mark.parametrize("change,want", [
    (lambda d: d.update(schema="bitalloc.allocation/9"), r"schema 'bitalloc.allocation/9'"),
    (lambda d: d.update(colour="red"), r"field 'colour'"),
    (lambda d: d.update(bits=[4, 4]), r"bits"),
    (lambda d: d.update(status="great"), r"status 'great'"),
])
def test_bad_allocation_files(allocation, tmp_path, change, want):
    d = allocation.to_json()
    change(d)
    path = tmp_path / "a.json"
    path.write_text(json.dumps(d))
    with pytest.raises(BitallocError, match=want) as e:
        Allocation.load(path)
    assert "\n" not in str(e.value)


# ---- units.carve --------------------------------------------------------------------------
LAYERS = [("model.layers.0.mlp.down_proj", (576, 1536), 884736), ("conv", (8, 3, 3, 3), 21600), ("head", (10, 300), 3000)]


def test_carve_layer():
    units = carve(LAYERS, "layer")
    assert [u.name for u in units] == [n for n, _, _ in LAYERS]
    assert [u.n_params for u in units] == [576 * 1536, 216, 3000]
    assert units[1].shape == (8, 27)  # conv kernel flattened to (out, in·kh·kw)
    assert [u.macs for u in units] == [884736, 21600, 3000]
    assert all(u.layer == u.name and u.index is None for u in units)


def test_carve_group_ragged():
    units = carve(LAYERS, "group", group_size=128)
    by_layer: dict[str, list[Unit]] = {}
    for u in units:
        by_layer.setdefault(u.layer, []).append(u)
    for name, shape, macs in LAYERS:
        us = by_layer[name]
        rows, cols = shape[0], math.prod(shape[1:])
        assert sum(u.n_params for u in us) == rows * cols
        assert len(us) == math.ceil(cols / 128)
        assert [u.name for u in us] == [f"{name}:g{g}" for g in range(len(us))]
        assert us[0].index == (0, min(128, cols)) and us[-1].index[1] == cols
        assert all(a.index[1] == b.index[0] for a, b in zip(us, us[1:]))  # contiguous, no overlap
        assert all(u.shape == (rows, u.index[1] - u.index[0]) for u in us)
        assert sum(u.macs for u in us) <= macs
    down = by_layer["model.layers.0.mlp.down_proj"]
    assert len(down) == 12 and down[3].name == "model.layers.0.mlp.down_proj:g3"
    assert down[3].index == (384, 512) and down[3].n_params == 576 * 128
    head = by_layer["head"]  # 300 columns: groups of 128, 128 and a ragged 44
    assert [u.n_params for u in head] == [1280, 1280, 440]
    assert head[-1].index == (256, 300) and head[-1].shape == (10, 44)
    assert [u.macs for u in head] == [1280, 1280, 440]


def test_carve_channel():
    units = carve(LAYERS, "channel")
    head = [u for u in units if u.layer == "head"]
    assert len(head) == 10 and sum(u.n_params for u in head) == 3000
    assert head[5].name == "head:c5" and head[5].index == (5, 6) and head[5].shape == (1, 300)
    down = [u for u in units if u.layer == "model.layers.0.mlp.down_proj"]
    assert len(down) == 576 and {u.n_params for u in down} == {1536}
    assert len({u.name for u in units}) == len(units)


def test_carve_errors():
    with pytest.raises(BitallocError, match="granularity 'tensor'"):
        carve(LAYERS, "tensor")
    with pytest.raises(BitallocError, match="group_size 0"):
        carve(LAYERS, "group", group_size=0)


def test_carved_units_make_a_profile_whose_overhead_counts_ragged_groups():
    units = carve([("head", (10, 300), 3000)], "group", group_size=128)
    p = Profile(units, [4, 16], np.ones((3, 2)) * [1.0, 0.0])
    c = MemoryCost(count_overhead=True, group_size=128).overhead(p)
    np.testing.assert_array_equal(c, [[320, 0], [320, 0], [320, 0]])  # 10 rows × one group × 32 bits each


# ---- MemoryCost overhead ------------------------------------------------------------------
def memory_profile(meta=None) -> Profile:
    units = [Unit("u1", n_params=3000, shape=(10, 300)),   # 10 rows × ceil(300/128)=3 groups = 30
             Unit("u2", n_params=512, shape=(4, 128)),     # 4 rows × 1 group = 4
             Unit("u3", n_params=1000)]                    # no shape: one row of 1000 → 8 groups
    return Profile(units, [4, 8, 16], np.ones((3, 3)), meta=meta)


def test_memory_cost_nominal():
    p = memory_profile()
    c = MemoryCost().costs(p)
    np.testing.assert_array_equal(c, [[12000, 24000, 48000], [2048, 4096, 8192], [4000, 8000, 16000]])
    assert MemoryCost().scale(p) == 4512
    assert MemoryCost().total(p, np.array([0, 1, 2])) == pytest.approx((12000 + 4096 + 16000) / 4512)


def test_memory_cost_overhead_hand_computed():
    p = memory_profile()
    m = MemoryCost(count_overhead=True, group_size=128)  # 16-bit scale + 16-bit zero per group
    np.testing.assert_array_equal(m.overhead(p), [[960, 960, 0], [128, 128, 0], [256, 256, 0]])
    np.testing.assert_array_equal(m.costs(p), [[12960, 24960, 48000], [2176, 4224, 8192], [4256, 8256, 16000]])
    assert m.resource == "avg_bits_with_overhead" and MemoryCost().resource == "avg_bits"
    # all at 4 bits: (12000 + 2048 + 4000 + 960 + 128 + 256) / 4512
    assert m.total(p, np.zeros(3, int)) == pytest.approx(19392 / 4512)
    # symmetric (no zero point) and group 64: u1 10×5 = 50 groups, u2 4×2 = 8, u3 16
    sym = MemoryCost(count_overhead=True, group_size=64, zero_bits=0)
    np.testing.assert_array_equal(sym.overhead(p)[:, 0], [800, 128, 256])


def test_memory_cost_group_size_and_outliers_from_meta():
    p = memory_profile(meta={"group_size": 300, "outlier_fraction": 0.01})
    m = MemoryCost(count_overhead=True)
    # groups: u1 10×1, u2 4×1, u3 ceil(1000/300)=4; outliers: round(0.01·n) × 32 bits
    want = np.array([10 * 32 + 30 * 32, 4 * 32 + 5 * 32, 4 * 32 + 10 * 32], float)
    np.testing.assert_array_equal(m.overhead(p)[:, 0], want)
    np.testing.assert_array_equal(m.overhead(p)[:, 2], [0, 0, 0])  # fp16 keeps no metadata
    assert MemoryCost(count_overhead=True, group_size=128, outlier_fraction=0.0).overhead(p)[0, 0] == 960


def test_memory_cost_bad_options():
    with pytest.raises(BitallocError, match="group_size 0"):
        MemoryCost(group_size=0)
    with pytest.raises(BitallocError, match="scale_bits -1"):
        MemoryCost(scale_bits=-1)
    with pytest.raises(BitallocError, match="outlier_fraction 1.5"):
        MemoryCost(outlier_fraction=1.5)


def test_allocation_reports_both_averages():
    p = memory_profile(meta={"group_size": 128})
    a = bitalloc.solve(p, 4.0)
    assert a.bits == {"u1": 4, "u2": 4, "u3": 4}
    assert a.avg_bits == pytest.approx(4.0)
    assert a.avg_bits_with_overhead == pytest.approx(19392 / 4512)
    assert a.totals == {"avg_bits": pytest.approx(4.0), "avg_bits_with_overhead": pytest.approx(19392 / 4512)}
    b = bitalloc.solve(p, 19392 / 4512, count_overhead=True)
    assert b.bits == {"u1": 4, "u2": 4, "u3": 4} and b.budgets == {"avg_bits_with_overhead": 19392 / 4512}
    with_less = bitalloc.solve(p, 4.0, count_overhead=True)
    assert with_less.status == "infeasible"
    assert with_less.min_budgets == {"avg_bits_with_overhead": pytest.approx(19392 / 4512)}
