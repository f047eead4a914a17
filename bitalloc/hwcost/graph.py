"""The layer graph that peak SRAM is computed on: activation tensors, who makes and who reads them.

`record_graph(task)` traces one calibration sample through the real model (a TorchFunctionMode
sees every torch function and tensor method with its real tensors; a TorchDispatchMode would see
aten ops too, but its first use imports torch._dynamo, seconds) and keeps, in execution order,
one node per op that allocates a new activation tensor: its element count, the ops it reads,
and the quantizable layer that produced it (views and in-place ops allocate nothing and are
folded into the tensor they alias; weights and buffers are not activations; pooling's argmax
indices are dropped). The model runs in eval mode, its modes restored after. `bitalloc profile`
stores it in the profile as `extra["graph"]` (`attach_graph(profile, task)` from Python):

    {"per": "sample", "source": "...", "nodes": [{"op": "convolution", "elems": 1024,
     "inputs": [0], "layer": "conv1", "shape": {...}}, ...]}

`chain_graph(profile)` is the fallback for a profile without one: a chain of the layers in
unit order, each reading the previous layer's output (input elements = first layer's columns
× positions; output elements = rows × positions, positions = MACs / weights), as stated in
its `source`.

`liveness(graph)` builds a networkx DiGraph and returns, for every step, the nodes alive
while that op runs: a tensor lives from the op that writes it to the last op that reads it
(model outputs, with no reader, to the end).
"""
from __future__ import annotations

from bitalloc.errors import BitallocError, bad

GRAPH_KEY = "graph"


def record_graph(task) -> dict:
    """Trace one calibration sample of `task` (see module doc). Costs one forward pass."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    model = task.model
    skip = {_key(t) for t in list(model.parameters()) + list(model.buffers())}
    nodes: list[dict] = []
    owner: dict[int, int] = {}  # storage address -> node that allocated it
    active = [False]

    def node_of(t) -> int | None:
        k = _key(t)
        if k in owner:
            return owner[k]
        if k in skip or t.numel() == 0:
            return None
        owner[k] = len(nodes)  # a model input (or a tensor made outside the traced forward)
        nodes.append({"op": "input", "elems": int(t.numel()), "inputs": [], "layer": None})
        return owner[k]

    class Recorder(TorchFunctionMode):  # torch-function level: F.linear, F.conv2d, torch.relu, Tensor.view, ...
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not active[0]:
                return out
            ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            in_keys = {_key(t) for t in ins}
            new = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and _key(t) not in in_keys]
            if not new:  # a view or an in-place op: no new tensor
                return out
            if any(t.is_floating_point() for t in new):  # pooling's argmax indices are not kept at inference
                new = [t for t in new if t.is_floating_point()]
            reads = sorted({n for n in (node_of(t) for t in ins) if n is not None})
            idx = len(nodes)
            nodes.append({"op": getattr(func, "__name__", type(func).__name__), "elems": int(sum(t.numel() for t in new)),
                          "inputs": reads, "layer": None})
            for t in new:
                owner[_key(t)] = idx
            return out

    mods = dict(model.named_modules())
    hooks = [model.register_forward_pre_hook(lambda m, a: active.__setitem__(0, True)),
             model.register_forward_hook(lambda m, a, o: active.__setitem__(0, False))]

    def tag(name):
        def hook(mod, inp, out):
            n = owner.get(_key(out)) if isinstance(out, torch.Tensor) else None
            if n is not None:
                nodes[n]["layer"] = name
                nodes[n]["shape"] = {"in": list(inp[0].shape), "w": list(mod.weight.shape), "out": list(out.shape)}
                if isinstance(mod, torch.nn.Conv2d):
                    nodes[n]["shape"].update(stride=list(mod.stride), padding=list(mod.padding), groups=mod.groups)
        return hook

    hooks += [mods[name].register_forward_hook(tag(name)) for name in task.layers]
    modes = [m.training for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), Recorder():
            task.loss(model, _first(task.calib[0]))
    finally:
        for h in hooks:
            h.remove()
        for m, t in zip(model.modules(), modes):
            m.train(t)
    return {"per": "sample", "source": "torch dispatch trace of one calibration sample", "nodes": nodes}


def attach_graph(profile, task) -> None:
    """Record `task`'s layer graph into `profile.extra["graph"]` (saved with the profile)."""
    profile.extra[GRAPH_KEY] = record_graph(task)


def _key(t) -> int:
    return t.untyped_storage().data_ptr()


def _first(batch):
    """The first sample of a batch (tensors sliced to length 1 along dim 0, recursively)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch[:1]
    if isinstance(batch, dict):
        return {k: _first(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_first(v) for v in batch)
    return batch


def chain_graph(profile) -> dict:
    """A chain over the profile's layers in unit order (for profiles that carry no graph)."""
    from bitalloc.hwcost.layers import layer_view

    lv = layer_view(profile)
    pos = lv.positions
    nodes = [{"op": "input", "elems": int(round(lv.cols[0] * pos[0])), "inputs": [], "layer": None}]
    for j, name in enumerate(lv.names):
        nodes.append({"op": "layer", "elems": int(round(lv.rows[j] * pos[j])), "inputs": [j], "layer": name})
    return {"per": profile.meta.get("macs_per", "inference"), "nodes": nodes,
            "source": "chain of the layers in unit order (the profile has no recorded graph): "
                      "each layer reads the previous layer's output"}


def graph_of(profile) -> dict:
    """The profile's recorded graph (validated), else the chain fallback."""
    g = profile.extra.get(GRAPH_KEY)
    if g is None:
        return chain_graph(profile)
    check_graph(g, set(profile.layers))
    return g


def check_graph(g, layers: set[str]) -> None:
    if not isinstance(g, dict) or not isinstance(g.get("nodes"), list) or not g["nodes"]:
        raise bad("profile graph", type(g).__name__, "must be an object with a non-empty 'nodes' list")
    for i, n in enumerate(g["nodes"]):
        if not isinstance(n, dict):
            raise bad(f"graph.nodes[{i}]", n, "must be an object with op, elems, inputs, layer")
        e, ins, lay = n.get("elems"), n.get("inputs"), n.get("layer")
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise bad(f"graph.nodes[{i}].elems", e, "must be a non-negative integer")
        if not isinstance(ins, list) or not all(isinstance(j, int) and not isinstance(j, bool) and 0 <= j < i for j in ins):
            raise bad(f"graph.nodes[{i}].inputs", ins, f"must list earlier nodes (indices 0..{i - 1}): nodes are in execution order")
        if lay is not None and lay not in layers:
            raise bad(f"graph.nodes[{i}].layer", lay, "names no layer of the profile's units")


def liveness(g: dict) -> list[list[int]]:
    """live[j]: nodes whose tensor is alive while node j's op runs (writer <= j <= last reader)."""
    try:
        import networkx as nx
    except ImportError:
        raise BitallocError("peak SRAM needs networkx: pip install 'bitalloc[search]' (or networkx)") from None

    nodes = g["nodes"]
    G = nx.DiGraph()
    G.add_nodes_from(range(len(nodes)))
    G.add_edges_from((j, i) for i, n in enumerate(nodes) for j in n["inputs"])
    end = len(nodes) - 1
    last = [max(G.successors(i), default=end) for i in range(len(nodes))]
    live, alive = [], []
    for j in range(len(nodes)):
        alive = [i for i in alive if last[i] >= j] + [j]
        live.append(list(alive))
    return live


def source_layer(g: dict) -> list[str | None]:
    """For each node, the layer whose activation precision its tensor carries: its own layer, else
    that of its first input that has one (ReLU, pooling, a residual add keep their input's format);
    None for model inputs and constants."""
    out: list[str | None] = []
    for n in g["nodes"]:
        src = n["layer"]
        if src is None:
            src = next((out[j] for j in n["inputs"] if out[j] is not None), None)
        out.append(src)
    return out
