"""Hardware cost models: peak SRAM against a hand-computed liveness maximum, flash/latency/FPGA
formulas, device profiles (strict reading, fit, unsupported rows), constraint strings, plans,
and non-additive SRAM rows solved exactly (lazy rows) against brute force."""
from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

from bitalloc import Constraint, Problem, Profile
from bitalloc.cli.app import main
from bitalloc.errors import BitallocError
from bitalloc.hwcost import get_cost_model
from bitalloc.hwcost.device.device_profile import COLUMNS, DeviceProfile
from bitalloc.hwcost.device.devices import device_names, load_device
from bitalloc.hwcost.fpga import FpgaCost
from bitalloc.hwcost.graph import chain_graph, liveness
from bitalloc.hwcost.latency import LatencyCost
from bitalloc.hwcost.mcu import McuCost
from bitalloc.hwcost.device.plan import make_plan, read_plan, write_plan
from bitalloc.solvers import get_solver

# A branching graph: input → A → {B, C} → cat(B, C) → D (node elems in brackets)
#   0 input [100]   1 A [200] <- 0   2 B [50] <- 1   3 C [80] <- 1   4 cat [130] <- 2, 3   5 D [10] <- 4
GRAPH = {"per": "sample", "source": "test", "nodes": [
    {"op": "input", "elems": 100, "inputs": [], "layer": None},
    {"op": "linear", "elems": 200, "inputs": [0], "layer": "A"},
    {"op": "linear", "elems": 50, "inputs": [1], "layer": "B"},
    {"op": "linear", "elems": 80, "inputs": [1], "layer": "C"},
    {"op": "cat", "elems": 130, "inputs": [2, 3], "layer": None},
    {"op": "linear", "elems": 10, "inputs": [4], "layer": "D"},
]}
SHAPES = {"A": (20, 10), "B": (5, 20), "C": (8, 20), "D": (1, 130)}  # (rows, cols)
BITS, FORMATS = [2, 8, 16], ["int2", "int8", "fp16"]  # cortex-m7 kernels: unpack_s8 (a8), s8 (a8), f32 (a32)


def graph_profile(seed: int = 0, graph=GRAPH) -> Profile:
    rng = np.random.default_rng(seed)
    names = list(SHAPES)
    rows = np.array([SHAPES[s][0] for s in names])
    cols = np.array([SHAPES[s][1] for s in names])
    S = np.sort(rng.random((4, 3)), axis=1)[:, ::-1].copy()
    return Profile.from_columns(names, rows * cols, BITS, S, layers=names, macs=rows * cols * 3, rows=rows, cols=cols,
                                formats=FORMATS, extra={"graph": graph} if graph else None)


def choice_of(bits):
    return np.array([BITS.index(b) for b in bits])


def test_liveness_of_branching_graph():
    assert liveness(GRAPH) == [[0], [0, 1], [1, 2], [1, 2, 3], [2, 3, 4], [4, 5]]


def test_peak_sram_equals_hand_computed_liveness_maximum():
    p = graph_profile()
    sram = McuCost("sram", device="cortex-m7", unit="b")
    assert not sram.additive
    # A=fp16 (fp32 activations, 4 B), B=int8, C=int2 (unpacks one row of 20 weights into an int8 scratch), D=int8:
    # step 1: 100 + 200·4 = 900; step 2: 800 + 50 = 850; step 3: 800 + 50 + 80 + 20 = 950;
    # step 4: 50 + 80 + 130 (cat keeps B's int8) = 260; step 5: 130 + 10 = 140  → peak 950
    assert sram.total(p, choice_of([16, 8, 2, 8])) == 950
    # all int8: max(100, 300, 250, 330, 260, 140) = 330
    assert sram.total(p, choice_of([8, 8, 8, 8])) == 330
    # D at int2: step 5 = 130 + 10 + 130 (one unpacked row of D) = 270 < 330
    assert sram.total(p, choice_of([8, 8, 8, 2])) == 330
    # B and cat at fp32: step 4 = 200 + 80 + 520 = 800
    assert sram.total(p, choice_of([8, 16, 8, 8])) == 800
    # the non-additive total is not the sum of anything per unit: it is the max over the rows
    rows = sram.rows(p)
    ch = choice_of([16, 8, 2, 8])
    assert max(C[np.arange(len(i)), ch[i]].sum() for i, C in rows) == 950


def test_sram_chain_fallback_without_graph():
    p = graph_profile(graph=None)
    g = chain_graph(p)
    assert [n["layer"] for n in g["nodes"]] == [None, "A", "B", "C", "D"]
    assert "chain" in g["source"]
    # positions = 3 MACs per weight: input 10·3 = 30 elements, A out 20·3 = 60, B 15, C 24, D 3
    sram = McuCost("sram", device="cortex-m7", unit="b")
    assert sram.total(p, choice_of([8, 8, 8, 8])) == max(30 + 60, 60 + 15, 15 + 24, 24 + 3)


def test_sram_depends_on_channel_units_by_share():
    """Channel units of one layer: its output tensor is the sum of each channel's share at its format."""
    g = {"nodes": [{"op": "input", "elems": 4, "inputs": [], "layer": None},
                   {"op": "linear", "elems": 8, "inputs": [0], "layer": "L"}]}
    p = Profile.from_columns(["L:c0", "L:c1"], [4, 4], BITS, np.ones((2, 3)), layers=["L", "L"], macs=[4, 4],
                             rows=[1, 1], cols=[4, 4], formats=FORMATS, extra={"graph": g})
    sram = McuCost("sram", device="cortex-m7", unit="b")
    assert sram.total(p, np.array([1, 1])) == 4 + 8
    assert sram.total(p, np.array([1, 2])) == 4 + 4 * 1 + 4 * 4


def test_flash_formula():
    p = graph_profile()
    flash = McuCost("flash", device="cortex-m4", unit="b")
    ch = choice_of([2, 8, 16, 8])
    expect = 0
    for (r, c), b, f in zip(SHAPES.values(), [2, 8, 16, 8], ["int2", "int8", "fp16", "int8"]):
        expect += r * c * b / 8 + r * (4 + (4 if f.startswith("int") else 0))
    assert flash.total(p, ch) == pytest.approx(expect)
    assert McuCost("flash", device="cortex-m4", unit="kb").total(p, ch) == pytest.approx(expect / 1024)


def test_latency_roofline_by_hand():
    p = graph_profile()
    lat = LatencyCost(device="cortex-m7", unit="s")
    d = load_device("cortex-m7")
    r, c = SHAPES["A"]
    n, macs = r * c, r * c * 3
    k8 = BITS.index(8)
    mem = (n * 8 / 8 + 4 * r + 3 * (r + c) * 8 / 8) / d.mem_bandwidth_bytes_per_s
    comp = macs * 0.6 / d.clock_hz
    assert lat.costs(p)[0, k8] == pytest.approx(max(mem, comp) + 1500 / d.clock_hz)
    cyc = McuCost("cycles", device="cortex-m7")
    assert cyc.costs(p)[0, k8] == pytest.approx(macs * 0.6 + 1500)
    k2 = BITS.index(2)  # unpack kernel: 3 cycles per weight on top
    assert cyc.costs(p)[0, k2] == pytest.approx(macs * 0.6 + 3 * n + 1500)


def test_no_kernel_is_infeasible():
    p = Profile.from_columns(["A"], [10], [4, 8], np.ones((1, 2)), formats=["fp4_e2m1", "int8"])
    assert LatencyCost(device="cortex-m7").feasible(p).tolist() == [[False, True]]


def test_fpga_dsp_packing_and_luts():
    p = graph_profile()
    dsp = FpgaCost("dsp", device="vu9p")  # dsp48e2: two <= 8-bit multiplies per slice
    n = np.array([r * c for r, c in SHAPES.values()])
    assert dsp.costs(p)[:, BITS.index(8)].tolist() == np.ceil(n / 2).tolist()
    assert dsp.costs(p)[:, BITS.index(2)].tolist() == [0, 0, 0, 0]  # narrow products go to LUTs
    assert FpgaCost("dsp", device="z7020").costs(p)[:, BITS.index(8)].tolist() == n.tolist()  # dsp48e1: one
    lut = FpgaCost("lut", device="vu9p")
    r, c = SHAPES["A"]
    assert lut.costs(p)[0, BITS.index(2)] == r * c * (2 * 8 + 2 + 8 + math.ceil(math.log2(c)))
    bram = FpgaCost("bram", device="vu9p", reuse_factor=4)
    assert bram.costs(p)[0, BITS.index(8)] == max(math.ceil(200 * 8 / 4 / 36), math.ceil(200 * 8 / 18432))


def test_every_device_spec_loads_and_cites_sources():
    import json
    from importlib import resources

    for name in device_names():
        d = load_device(name)
        raw = json.loads((resources.files("bitalloc.data") / "devices" / f"{name}.json").read_text())
        assert raw["sources"], name
        assert d.klass == "fpga" or d.kernels


# ---- lazy rows: an exact SRAM constraint for the ILP --------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_sram_and_flash_constraints_equal_brute_force(seed):
    p = graph_profile(seed)
    flash = McuCost("flash", device="cortex-m7", unit="b")
    sram = McuCost("sram", device="cortex-m7", unit="b")
    rng = np.random.default_rng(seed)
    fb, sb = float(rng.uniform(420, 1000)), float(rng.uniform(330, 900))
    best = None
    for ch in itertools.product(range(3), repeat=4):
        ch = np.array(ch)
        if flash.total(p, ch) <= fb and sram.total(p, ch) <= sb:
            v = p.sensitivity[np.arange(4), ch].sum()
            best = v if best is None else min(best, v)
    prob = Problem(p, [Constraint(flash, fb), Constraint(sram, sb)])
    a = get_solver("ilp").solve(prob)
    if best is None:
        assert a.status == "infeasible"
        return
    assert a.status == "optimal"
    assert a.objective == pytest.approx(best, rel=1e-9, abs=1e-12)
    ch = a.choice(p)
    assert a.totals["sram_b"] == sram.total(p, ch) <= sb
    assert a.totals["flash_b"] == pytest.approx(flash.total(p, ch))
    assert set(a.budgets) == {"flash_b", "sram_b"}


# ---- device profiles ---------------------------------------------------------------------
HEADER = "#device=cortex-m7\n#core=cortex-m7\n#clock_hz=216000000\n#runtime=test\n#timer=DWT\n#warmup=1\n#repeats=5\n"


def dp_text(rows: list[str], header: str = HEADER, columns: str = ",".join(COLUMNS)) -> str:
    return header + columns + "\n" + "".join(r + "\n" for r in rows)


MACS = {s: r * c * 3 for s, (r, c) in SHAPES.items()}


def row(layer="A", macs=None, w=8, a=8, kernel="s8", metric="latency", value="0.5", unit="ms", stat="median", n="5", status="ok"):
    macs = MACS.get(layer, 600) if macs is None else macs
    return f"{layer},linear,{macs},{w},{a},,{kernel},{metric},{value},{unit},{stat},{n},{status}"


BAD_PROFILES = [  # (text, regex naming row and field)
    (dp_text([row()])[:-5], r"row \d+ field (fields|end of file)"),  # truncated mid-row
    (dp_text([row()], columns="layer,op,macs,w_bits,a_bits,group,kernel,metric,value,unit,stat,n"), r"row 8 field columns 'status': missing"),
    (dp_text([row(), row()]), r"row 10 field layer 'A': duplicates row 9"),
    (dp_text([row(), row(value="0.7")]), r"row 10 field layer 'A': contradicts row 9"),
    (dp_text([row(value="-1")]), r"row 9 field value '-1': must be a finite number >= 0"),
    (dp_text([row(value="nan")]), r"row 9 field value 'nan'"),
    (dp_text([row(unit="KiB")]), r"row 9 field unit 'KiB': does not fit metric latency"),
    (dp_text([row(status="fine")]), r"row 9 field status 'fine': allowed: ok, unsupported, oom, error"),
    (dp_text([row(w="x")]), r"row 9 field w_bits 'x'"),
    (dp_text([row()])[:-1], r"truncated"),
]


@pytest.mark.parametrize("text,pattern", BAD_PROFILES, ids=[p for _, p in BAD_PROFILES])
def test_bad_device_profile_is_one_line_naming_file_row_field(tmp_path, capsys, text, pattern):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(BitallocError, match=pattern) as e:
        DeviceProfile.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    prof = tmp_path / "p.json"
    graph_profile().save(prof)
    out = tmp_path / "a.json"
    rc = main(["solve", "--profile", str(prof), "--device-profile", str(path), "--constraint", "latency_ms<=1",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and not out.exists()


def test_device_profile_rows_that_do_not_fit_the_profile(tmp_path):
    p = graph_profile()
    for bad, pattern in ((row(layer="Z"), r"row 9 field layer 'Z': names no layer"),
                         (row(macs=7), r"row 9 field macs 7: the profile's layer 'A' has 600 MACs")):
        path = tmp_path / "m.csv"
        path.write_text(dp_text([bad]))
        with pytest.raises(BitallocError, match=pattern):
            LatencyCost(device_profile=str(path)).costs(p)


def test_measured_rows_fit_fill_and_unsupported(tmp_path):
    p = graph_profile()
    analytic = LatencyCost(device="cortex-m7", unit="ms").costs(p)  # seconds (base unit); layer units: share 1
    k8, k2, k16 = BITS.index(8), BITS.index(2), BITS.index(16)
    rows = [row(layer=s, value=f"{3e3 * analytic[i, k8]:.12g}") for i, s in enumerate(["A", "B", "C"])]
    rows.append(row(layer="A", w=2, a=8, kernel="unpack_s8", value="", n="", status="unsupported"))
    rows.append(row(layer="B", w=16, a=32, kernel="f32", value="", n="", status="oom"))
    rows.append(row(layer="D", w=8, metric="cycles", unit="cycles", value="216000", kernel="s8_alt"))  # 1 ms
    rows.append(row(layer="D", w=8, a=4, kernel="s8a4", value="0.01"))  # no candidate runs int8 weights on 4-bit activations
    path = tmp_path / "m.csv"
    path.write_text(dp_text(rows))
    lat = LatencyCost(device_profile=str(path), unit="ms")
    C = lat.costs(p)
    assert C[:3, k8] == pytest.approx(3 * analytic[:3, k8])  # measured
    assert C[3, k8] == pytest.approx(1e-3)  # 216000 cycles at the header clock
    assert lat.fit.n_rows == 4 and lat.fit.measured == 4 and lat.fit.infeasible == 1
    assert lat.fit.filled == 4 * 3 - 4 - 1 and lat.fit.unmatched == 1
    assert len(lat.fit.problems) == 1 and "oom" in lat.fit.problems[0]
    # fit on the three exact rows (ratio 1/3) and D's: least squares on the relative error
    r = np.r_[np.full(3, 1 / 3), analytic[3, k8] / 1e-3]
    f = r.sum() / (r ** 2).sum()
    assert lat.fit.factor == pytest.approx(f)
    assert C[1, k16] == pytest.approx(f * analytic[1, k16])  # oom row: the scaled analytic figure stands in
    assert lat.feasible(p)[0].tolist() == [False, True, True]  # A at int2: unsupported
    assert McuCost("flash", device_profile=str(path)).feasible(p)[0].tolist() == [False, True, True]
    cyc = McuCost("cycles", device_profile=str(path), unit="k")  # measured cycles override the analytic ones
    assert cyc.costs(p)[3, k8] == pytest.approx(216000) and cyc.total(p, np.full(4, k8)) > 216
    assert cyc.costs(p)[0, k8] == pytest.approx(3 * analytic[0, k8] * 216e6)
    with pytest.raises(BitallocError, match="was measured on 'cortex-m7'"):
        LatencyCost(device="cortex-m4", device_profile=str(path))


def test_device_profile_json_form(tmp_path):
    rows = [dict(zip(COLUMNS, ["A", "linear", 600, 8, 8, None, "s8", "latency", 0.5, "ms", "median", 5, "ok"]))]
    path = tmp_path / "m.json"
    DeviceProfile.write(path, {"device": "cortex-m7"}, rows)
    dp = DeviceProfile.load(path)
    assert dp.rows[0].seconds(None) == pytest.approx(5e-4)


# ---- constraint strings and the CLI --------------------------------------------------------
@pytest.mark.parametrize("args,pattern", [
    (["--constraint", "latency_ms<3"], r"--constraint 'latency_ms<3': must be RESOURCE<=NUMBER"),
    (["--constraint", "latency_min<=3"], r"resource 'latency_min': allowed .*latency_ms.*sram_kb"),
    (["--constraint", "flash_kb<=-1"], r"flash_kb budget '-1': must be a finite number >= 0"),
    (["--constraint", "sram_kb<=64"], r"--target None: resource sram_kb needs a hardware target; allowed: .*cortex-m7"),
    (["--constraint", "sram_kb<=64", "--target", "m99"], r"device 'm99': allowed: .*cortex-m4"),
    (["--constraint", "lut<=64", "--target", "cortex-m7"], r"device 'cortex-m7': is a mcu; lut needs one of class fpga"),
    (["--constraint", "lut<=9", "--target", "vu9p", "--cost-option", "reuse=4"], r"--cost-option 'reuse': no --constraint's cost model takes it; they take: .*reuse_factor"),
    (["--constraint", "flash_kb<=0.001", "--target", "cortex-m7"], r"budget flash_kb <= 0\.001 is below the smallest feasible flash_kb"),
])
def test_constraint_errors(tmp_path, capsys, args, pattern):
    prof = tmp_path / "p.json"
    graph_profile().save(prof)
    rc = main(["solve", "--profile", str(prof), *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert re.search(pattern, err), err


def test_cli_several_constraints_report_totals_next_to_budgets(tmp_path, capsys):
    import json

    prof = tmp_path / "p.json"
    p = graph_profile()
    p.save(prof)
    rc = main(["solve", "--profile", str(prof), "--budget", "8", "--device", "cortex-m7", "--constraint", "flash_b<=700",
               "--constraint", "sram_b<=500", "--constraint", "mcycles<=1", "--json"])
    assert rc == 0
    a = json.loads(capsys.readouterr().out)
    assert set(a["budgets"]) == {"avg_bits", "flash_b", "sram_b", "mcycles"}
    ch = np.array([BITS.index(a["bits"][s]) for s in p.names])
    assert a["totals"]["sram_b"] == McuCost("sram", device="cortex-m7", unit="b").total(p, ch) <= 500
    assert a["totals"]["flash_b"] <= 700 and a["totals"]["avg_bits"] <= 8


# ---- plans -----------------------------------------------------------------------------------
def test_plan_deduplicates_kernels_and_round_trips(tmp_path):
    names = ["l0", "l1", "l2"]
    p = Profile.from_columns(names, [64, 64, 32], [4, 8, 16], np.ones((3, 3)), layers=names, macs=[64, 64, 32],
                             rows=[8, 8, 4], cols=[8, 8, 8])
    entries = make_plan(p, load_device("cortex-m7"))
    assert len(entries) == 6  # l0 and l1 share shapes: 2 shapes x 3 candidates
    assert entries[0].layers == ("l0", "l1") and entries[0].shape == {"pos": 1, "in": 8, "out": 8}
    path = tmp_path / "plan.csv"
    write_plan(path, {"device": "cortex-m7"}, entries)
    header, back = read_plan(path)
    assert header["device"] == "cortex-m7" and back == entries
    path.write_text(path.read_text().replace("linear", "matmul", 1))
    with pytest.raises(BitallocError, match=r"plan .* row 4 field op 'matmul'"):
        read_plan(path)


def test_solve_with_hardware_constraints_never_imports_torch(tmp_path):
    import subprocess
    import sys

    prof = tmp_path / "p.json"
    graph_profile().save(prof)
    code = ("import sys; from bitalloc.cli import main; "
            f"rc = main(['solve', '--profile', {str(prof)!r}, '--device', 'cortex-m4', '--constraint', 'sram_kb<=1', "
            "'--constraint', 'latency_ms<=1', '--json']); print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 False"
