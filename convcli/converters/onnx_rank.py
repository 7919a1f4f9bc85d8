"""Lower the rank of an ONNX graph's tensors to what ncnn holds (at most 4-D), before pnnx converts it.

ncnn's Mat has at most 4 dims (w, h, d, c), and pnnx leaves a reshape, permute or slice it cannot express in them
unmapped (``Tensor.reshape``, ``Tensor.slice``). Window attention builds 5-D and 6-D tensors that only move data:
torchvision's swin partitions windows with ``x.view(B, H/ws, ws, W/ws, ws, C).permute(0, 1, 3, 2, 4, 5)``, splits
qkv with ``reshape(nW, N, 3, heads, d).permute(2, 0, 3, 1, 4)`` and ``qkv[0]``, adds its shifted-window mask on a
5-D view, and merges patches with strided slices ``x[:, 0::2, 1::2]`` (ncnn's Crop has no step); maxvit partitions
with ``permute(0, 2, 4, 3, 5, 1)``, which keeps no two axes together. At a fixed batch of 1 (ncnn's; the caller
fixes the shapes first) each of these is the same data movement on tensors of rank <= 4:

- a Transpose: drop size-1 axes, merge axes that stay adjacent and in order (the window partition becomes
  ``(h, ws, w, ws*C)`` perm ``(0, 2, 1, 3)``); a permutation still above rank 4 after that (maxvit's) is done as the
  fewest swaps of two adjacent blocks, each a transpose of rank <= 4 (a breadth-first search over <= 720 orders);
- a Gather of one constant index on a transposed axis (qkv[0]): gather first, on the transpose's input axis, then
  transpose the lower-rank result; a Gather of one index on a high-rank tensor: a Slice of a 3-D view;
- an elementwise op on a high-rank view (the mask add): drop the axes that are 1 everywhere, merge adjacent axes
  that every operand broadcasts the same way;
- a Slice with steps: per strided axis, a unit-step Slice of a window, a 4-D view ``(A, n, k, B)`` and a unit
  Slice of the k axis;
- a Gather whose constant indices are ``arange(n)`` of the whole 1-D input (the exporter's ``as_strided`` in
  the pooled head): a Reshape;
- chains of Reshapes fold into one, so the high-rank views disappear.

Every rewrite keeps the element order, so the result is numerically identical (the caller checks it with ONNX
Runtime). What is left above rank 4 is returned by ``high_rank_ops`` for the error message.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import numpy as np

from convcli.core.lazy import require

MAX_RANK = 4
PREFIX = "rank4_"  # names of the nodes and tensors this module adds
UNARY = ("Relu", "Sigmoid", "Tanh", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Neg", "Abs", "Identity", "HardSwish",
         "HardSigmoid", "LeakyRelu", "Elu", "Softplus", "Clip")
ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Less", "Greater", "Where")


def block_swaps(sizes: list[int], perm: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """Transposes of rank <= 4 that do ``transpose(reshape(x, sizes), perm)``, as (shape, perm) pairs in order;
    each is a swap of two adjacent blocks of axes ``(pre, A, B, post) -> (pre, B, A, post)``. None when the
    permutation cannot be reached within 6 swaps (never for rank <= 6)."""
    n = len(sizes)
    start, goal = tuple(range(n)), tuple(perm)
    seen: dict[tuple[int, ...], tuple[tuple[int, ...], tuple[int, int, int]] | None] = {start: None}
    queue = deque([start])
    while queue:
        order = queue.popleft()
        if order == goal:
            break
        for i, j, k in itertools.combinations(range(n + 1), 3):
            nxt = order[:i] + order[j:k] + order[i:j] + order[k:]
            if nxt not in seen:
                seen[nxt] = (order, (i, j, k))
                queue.append(nxt)
    if goal not in seen:
        return None
    moves: list[tuple[tuple[int, ...], tuple[int, int, int]]] = []
    node = goal
    while (prev := seen[node]) is not None:
        moves.append(prev)
        node = prev[0]
    steps = []
    for order, (i, j, k) in reversed(moves):
        dims = [int(np.prod([sizes[a] for a in order[lo:hi]])) for lo, hi in ((0, i), (i, j), (j, k), (k, n))]
        blocks = [(d, b) for b, d in enumerate(dims) if d != 1 or b in (1, 2)]
        shape = [d for d, _ in blocks]
        where = {b: pos for pos, (_, b) in enumerate(blocks)}
        swapped = [where[b] for b in (0, 2, 1, 3) if b in where]
        steps.append((shape, swapped))
    return steps


def merge_axes(shape: list[int], perm: list[int]) -> tuple[list[int], list[int]]:
    """``transpose(x.reshape(shape), perm)`` as the same data movement on fewer axes: size-1 axes dropped, axes
    that stay adjacent and in order merged. Returns (reduced shape, reduced perm)."""
    keep = [a for a in range(len(shape)) if shape[a] != 1]
    order = [a for a in perm if shape[a] != 1]
    groups: list[list[int]] = []
    for a in order:
        if groups and keep.index(a) == keep.index(groups[-1][-1]) + 1:
            groups[-1].append(a)
        else:
            groups.append([a])
    by_first = sorted(groups, key=lambda g: g[0])
    reduced = [int(np.prod([shape[a] for a in g])) for g in by_first]
    return reduced, [by_first.index(g) for g in groups]


class _Graph:
    """The model's main graph with shapes, constants, producers and consumers, rebuilt after each rewrite."""

    def __init__(self, model: Any) -> None:
        onnx = require("onnx")
        self.onnx, self.model, self.g = onnx, model, model.graph
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        self.shapes: dict[str, list[int]] = {}
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            dims = v.type.tensor_type.shape.dim
            if v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                self.shapes[v.name] = [d.dim_value for d in dims]
        self.consts: dict[str, np.ndarray] = {}
        for init in self.g.initializer:
            self.consts[init.name] = onnx.numpy_helper.to_array(init)
            self.shapes[init.name] = list(init.dims)
        for node in self.g.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                arr = onnx.numpy_helper.to_array(node.attribute[0].t)
                self.consts[node.output[0]] = arr
                self.shapes[node.output[0]] = list(arr.shape)
        self.counter = 0
        self.index()

    def index(self) -> None:
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in self.g.output}

    def name(self, hint: str) -> str:
        self.counter += 1
        return f"{PREFIX}{hint}_{self.counter}"

    def const(self, arr: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.g.initializer.append(self.onnx.numpy_helper.from_array(arr, name))
        self.consts[name] = arr
        self.shapes[name] = list(arr.shape)
        return name

    def node(self, op: str, inputs: list[str], shape: list[int], **attrs: Any) -> Any:
        out = self.name(op.lower())
        self.shapes[out] = list(shape)
        return self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs)

    def reshape(self, x: str, shape: list[int]) -> Any:
        return self.node("Reshape", [x, self.const(np.array(shape, np.int64), "shape")], shape)

    def reshape_back(self, x: str, shape: list[int], output: str) -> Any:
        """A Reshape of ``x`` to ``shape`` writing the replaced node's own ``output`` (the graph reads on)."""
        return self.onnx.helper.make_node("Reshape", [x, self.const(np.array(shape, np.int64), "shape")], [output],
                                          name=self.name("reshape"))

    def rank(self, name: str) -> int:
        return len(self.shapes.get(name, []))

    def static(self, name: str) -> bool:
        return name in self.shapes

    def replace(self, old: list[Any], new: list[Any]) -> None:
        """Put ``new`` where the first of ``old`` was and drop ``old``; then drop what nothing uses any more."""
        nodes = list(self.g.node)
        at = min(nodes.index(n) for n in old)
        kept = [n for n in nodes if not any(n is o for o in old)]
        kept[at:at] = new
        del self.g.node[:]
        self.g.node.extend(kept)
        self.prune()

    def prune(self) -> None:
        while True:
            self.index()
            dead = [n for n in self.g.node if not any(o in self.consumers or o in self.outputs for o in n.output)]
            if not dead:
                return
            nodes = [n for n in self.g.node if not any(n is d for d in dead)]
            del self.g.node[:]
            self.g.node.extend(nodes)

    def scalar(self, name: str) -> int | None:
        arr = self.consts.get(name)
        return int(arr) if arr is not None and arr.ndim == 0 else None

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == name:
                return self.onnx.helper.get_attribute_value(a)
        return default

    def rename_input(self, node: Any, old: str, new: str) -> None:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


# -- rewrites: each finds one site, rewrites it and returns a note, or returns None -------------------------------
def _gather_through_transpose(g: _Graph) -> str | None:
    for t in g.g.node:
        if t.op_type != "Transpose" or g.rank(t.output[0]) <= MAX_RANK or t.output[0] in g.outputs:
            continue
        users = g.consumers.get(t.output[0], [])
        if not users or not all(u.op_type == "Gather" and u.input[0] == t.output[0] and g.scalar(u.input[1]) is not None
                                for u in users):
            continue
        perm = list(g.attr(t, "perm"))
        src = g.shapes[t.input[0]]
        new = []
        for u in users:
            axis = g.attr(u, "axis", 0) % len(perm)
            src_axis = perm[axis]
            rest = [p - (p > src_axis) for i, p in enumerate(perm) if i != axis]
            gathered = g.node("Gather", [t.input[0], u.input[1]], [d for i, d in enumerate(src) if i != src_axis],
                              axis=src_axis)
            out_shape = [g.shapes[gathered.output[0]][p] for p in rest]
            new += [gathered, g.onnx.helper.make_node("Transpose", gathered.output, [u.output[0]],
                                                      name=g.name("transpose"),
                                                      perm=rest)]
            g.shapes[u.output[0]] = out_shape
        g.replace([t, *users], new)
        return f"Gather after {len(perm)}-D Transpose: gathered first"
    return None


def _gather_one_index(g: _Graph) -> str | None:
    for u in g.g.node:
        if u.op_type != "Gather" or g.rank(u.input[0]) <= MAX_RANK or (i := g.scalar(u.input[1])) is None:
            continue
        shape = g.shapes[u.input[0]]
        axis = g.attr(u, "axis", 0) % len(shape)
        i %= shape[axis]
        view = [int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:]))]
        r = g.reshape(u.input[0], view)
        s = g.node("Slice", [r.output[0], g.const(np.array([i], np.int64), "start"),
                             g.const(np.array([i + 1], np.int64), "end"), g.const(np.array([1], np.int64), "axis")],
                   [view[0], 1, view[2]])
        out = [d for k, d in enumerate(shape) if k != axis]
        back = g.onnx.helper.make_node("Reshape", [s.output[0], g.const(np.array(out, np.int64), "shape")],
                                       [u.output[0]], name=g.name("reshape"))
        g.replace([u], [r, s, back])
        return f"Gather of one index on a {len(shape)}-D tensor: Slice of a 3-D view"
    return None


def _transpose(g: _Graph) -> str | None:
    for t in g.g.node:
        if t.op_type != "Transpose" or g.rank(t.input[0]) <= MAX_RANK or not g.static(t.output[0]):
            continue
        shape, perm = g.shapes[t.input[0]], list(g.attr(t, "perm"))
        reduced, rperm = merge_axes(shape, perm)
        steps = [(reduced, rperm)] if len(reduced) <= MAX_RANK else block_swaps(reduced, rperm)
        if steps is None:
            continue
        new, x = [], t.input[0]
        for step_shape, step_perm in steps:
            r = g.reshape(x, step_shape)
            out = [step_shape[p] for p in step_perm]
            tr = g.node("Transpose", r.output, out, perm=step_perm)
            new += [r, tr]
            x = tr.output[0]
        new.append(g.onnx.helper.make_node("Reshape", [x, g.const(np.array(g.shapes[t.output[0]], np.int64),
                                                                     "shape")], [t.output[0]], name=g.name("reshape")))
        g.replace([t], new)
        how = "merged axes" if len(steps) == 1 else f"{len(steps)} block swaps"
        return f"{len(perm)}-D Transpose: {how} -> rank {max(len(s) for s, _ in steps)}"
    return None


def _elementwise(g: _Graph) -> str | None:
    for e in g.g.node:
        if e.op_type not in ELEMENTWISE or g.rank(e.output[0]) <= MAX_RANK or not g.static(e.output[0]):
            continue
        out = g.shapes[e.output[0]]
        if not all(g.static(i) for i in e.input):
            continue
        ins = [[1] * (len(out) - g.rank(i)) + g.shapes[i] for i in e.input]
        pattern = [tuple(s[k] == out[k] for s in ins) for k in range(len(out))]
        groups: list[list[int]] = []
        for k in range(len(out)):
            if out[k] == 1:
                continue
            if groups and pattern[groups[-1][-1]] == pattern[k]:
                groups[-1].append(k)
            else:
                groups.append([k])
        if len(groups) > MAX_RANK:
            continue
        new, names = [], []
        for name, s in zip(e.input, ins, strict=True):
            small = [int(np.prod([s[k] for k in grp])) for grp in groups] or [1]
            if name in g.consts:
                names.append(g.const(g.consts[name].reshape(small), "operand"))
            else:
                r = g.reshape(name, small)
                new.append(r)
                names.append(r.output[0])
        small_out = [int(np.prod([out[k] for k in grp])) for grp in groups] or [1]
        op = g.node(e.op_type, names, small_out, **{a.name: g.onnx.helper.get_attribute_value(a)
                                                     for a in e.attribute})
        back = g.reshape_back(op.output[0], out, e.output[0])
        g.replace([e], [*new, op, back])
        return f"{len(out)}-D {e.op_type}: broadcast axes merged -> rank {len(small_out)}"
    return None


def _softmax(g: _Graph) -> str | None:
    """Softmax over axis a of a tensor above rank 4, on the 3-D view ``(before a, a, after a)``."""
    for e in g.g.node:
        if e.op_type not in ("Softmax", "LogSoftmax") or g.rank(e.input[0]) <= MAX_RANK \
                or not g.static(e.output[0]):
            continue
        shape = g.shapes[e.input[0]]
        axis = g.attr(e, "axis", -1) % len(shape)
        view = [int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:]))]
        r = g.reshape(e.input[0], view)
        op = g.node(e.op_type, r.output, view, axis=1)
        back = g.reshape_back(op.output[0], shape, e.output[0])
        g.replace([e], [r, op, back])
        return f"{len(shape)}-D {e.op_type}: on a 3-D view"
    return None


def _einsum(g: _Graph) -> str | None:
    """An Einsum above rank 4 whose every term starts with the same index of size 1 (maxvit's attention,
    ``B G H I D, B G H J D -> B G H I J`` at batch 1): the same Einsum without that index."""
    for e in g.g.node:
        if e.op_type != "Einsum" or g.rank(e.output[0]) <= MAX_RANK or not all(g.static(i) for i in e.input):
            continue
        equation = g.attr(e, "equation")
        equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
        if "->" not in equation or "." in equation:
            continue
        lhs, rhs = equation.split("->")
        terms = [*lhs.split(","), rhs]
        lead = terms[0][:1]
        if not lead or any(t[:1] != lead or lead in t[1:] for t in terms) \
                or any(g.shapes[i][0] != 1 for i in e.input):
            continue
        new, names = [], []
        for i in e.input:
            r = g.reshape(i, g.shapes[i][1:])
            new.append(r)
            names.append(r.output[0])
        out = g.shapes[e.output[0]]
        op = g.node("Einsum", names, out[1:], equation=",".join(t[1:] for t in terms[:-1]) + "->" + rhs[1:])
        back = g.reshape_back(op.output[0], out, e.output[0])
        g.replace([e], [*new, op, back])
        return f"{len(out)}-D Einsum: batch index of size 1 dropped"
    return None


def _unary(g: _Graph) -> str | None:
    """An elementwise op of one input above rank 4: on the flat tensor."""
    for e in g.g.node:
        if e.op_type not in UNARY or g.rank(e.output[0]) <= MAX_RANK or not g.static(e.output[0]):
            continue
        shape = g.shapes[e.output[0]]
        r = g.reshape(e.input[0], [int(np.prod(shape))])
        op = g.node(e.op_type, r.output, [int(np.prod(shape))],
                    **{a.name: g.onnx.helper.get_attribute_value(a) for a in e.attribute})
        back = g.reshape_back(op.output[0], shape, e.output[0])
        g.replace([e], [r, op, back])
        return f"{len(shape)}-D {e.op_type}: on the flat tensor"
    return None


def _strided_slice(g: _Graph) -> str | None:
    for s in g.g.node:
        if s.op_type != "Slice" or len(s.input) < 5 or not g.static(s.input[0]) or not g.static(s.output[0]):
            continue
        if not all(i in g.consts for i in s.input[1:5]):
            continue
        shape = g.shapes[s.input[0]]
        starts, ends, axes, steps = (g.consts[i].astype(np.int64).tolist() for i in s.input[1:5])
        if all(k == 1 for k in steps) or any(k < 1 for k in steps) or len(shape) > MAX_RANK:
            continue
        plans = []  # (axis, window start, n, k, pick)
        unit = []  # (axis, start, end) for the unit-step axes
        for a, st, en, k in zip(axes, starts, ends, steps, strict=True):
            a %= len(shape)
            d = shape[a]
            first, stop = sorted((0, st + d if st < 0 else st, d))[1], sorted((0, en + d if en < 0 else en, d))[1]
            n = len(range(first, stop, k))
            if k == 1:
                unit.append((a, first, stop))
                continue
            lo, hi = max(0, first + n * k - d), min(first, k - 1)
            if n == 0 or lo > hi:
                break
            plans.append((a, first - lo, n, k, lo))
        else:
            new, x, cur = [], s.input[0], list(shape)
            if unit:
                out = list(cur)
                for a, lo_, hi_ in unit:
                    out[a] = hi_ - lo_
                sl = g.node("Slice", [x, g.const(np.array([u[1] for u in unit], np.int64), "start"),
                                      g.const(np.array([u[2] for u in unit], np.int64), "end"),
                                      g.const(np.array([u[0] for u in unit], np.int64), "axis")], out)
                new.append(sl)
                x, cur = sl.output[0], out
            for a, w, n, k, pick in plans:
                out = list(cur)
                out[a] = n * k
                window = g.node("Slice", [x, g.const(np.array([w], np.int64), "start"),
                                          g.const(np.array([w + n * k], np.int64), "end"),
                                          g.const(np.array([a], np.int64), "axis")], out)
                view = [int(np.prod(cur[:a])), n, k, int(np.prod(cur[a + 1:]))]
                r = g.reshape(window.output[0], view)
                one = g.node("Slice", [r.output[0], g.const(np.array([pick], np.int64), "start"),
                                       g.const(np.array([pick + 1], np.int64), "end"),
                                       g.const(np.array([2], np.int64), "axis")], [view[0], n, 1, view[3]])
                cur = list(cur)
                cur[a] = n
                back = g.reshape(one.output[0], cur)
                new += [window, r, one, back]
                x = back.output[0]
            new[-1].output[0] = s.output[0]
            g.shapes[s.output[0]] = cur
            g.replace([s], new)
            return f"Slice with step {max(steps)}: unit Slices of {len(plans)} 4-D view(s)"
    return None


def _arange_gather(g: _Graph) -> str | None:
    for u in g.g.node:
        if u.op_type != "Gather" or g.rank(u.input[0]) != 1 or u.input[1] not in g.consts:
            continue
        idx = g.consts[u.input[1]]
        n = g.shapes[u.input[0]][0]
        if idx.size != n or not np.array_equal(idx.ravel(), np.arange(n)):
            continue
        r = g.onnx.helper.make_node("Reshape", [u.input[0], g.const(np.array(idx.shape, np.int64), "shape")],
                                    [u.output[0]], name=g.name("reshape"))
        g.replace([u], [r])
        return "Gather of arange(n) on a 1-D tensor: Reshape"
    return None


def _expand_before_broadcast(g: _Graph) -> str | None:
    """An Expand only feeding elementwise ops whose other operand already has the expanded shape: those ops
    broadcast by themselves. Removed, pnnx no longer fuses swin_v2's ``x / norm(x).clamp_min(eps).expand_as(x)``
    into F.normalize, which ncnn's Normalize cannot do on a 3-D or 4-D tensor's last axis (pnnx warns
    ``unsupported normalize`` and writes a wrong layer: measured 0.07 off); it maps the parts instead."""
    for x in g.g.node:
        if x.op_type != "Expand" or x.output[0] in g.outputs or not g.static(x.output[0]):
            continue
        users = g.consumers.get(x.output[0], [])
        out = g.shapes[x.output[0]]
        if not users or not all(u.op_type in ELEMENTWISE and u.op_type != "Where" and len(u.input) == 2
                                and g.shapes.get(next(i for i in u.input if i != x.output[0]), None) == out
                                for u in users if x.output[0] in u.input):
            continue
        for u in users:
            g.rename_input(u, x.output[0], x.input[0])
        g.prune()
        return "Expand before a broadcasting op removed"
    return None


def _one_axis_reduce(g: _Graph) -> str | None:
    """A Reduce* over one axis, on a 4-D view ``(A, D, B, 1)`` reduced over axes 1 and 3: pnnx reads the single
    axis of an ONNX reduction as an int where its ncnn writer wants a list, and writes a Reduction with no axes
    (``-23303=0``; measured 0.05 off on swin_v2's cosine attention, whose ``norm(dim=-1)`` is a ReduceL2). Two
    axes come through as a list; the size-1 axis adds nothing, so the result is the same."""
    for r in g.g.node:
        if not r.op_type.startswith("Reduce") or len(r.input) < 2 or r.input[1] not in g.consts \
                or g.consts[r.input[1]].size != 1 or not g.static(r.input[0]) or not g.static(r.output[0]):
            continue
        shape = g.shapes[r.input[0]]
        axis = int(g.consts[r.input[1]].ravel()[0]) % len(shape)
        view = [int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:])), 1]
        attrs = {a.name: g.onnx.helper.get_attribute_value(a) for a in r.attribute}
        attrs["keepdims"] = 1
        v = g.reshape(r.input[0], view)
        red = g.node(r.op_type, [v.output[0], g.const(np.array([1, 3], np.int64), "axes")],
                     [view[0], 1, view[2], 1], **attrs)
        out = g.const(np.array(g.shapes[r.output[0]], np.int64), "shape")
        back = g.onnx.helper.make_node("Reshape", [red.output[0], out], [r.output[0]], name=g.name("reshape"))
        g.replace([r], [v, red, back])
        return f"{r.op_type} over one axis: two axes of a 4-D view"
    return None


def _reshape_chain(g: _Graph) -> str | None:
    for r in g.g.node:
        if r.op_type != "Reshape" or r.input[0] not in g.producer:
            continue
        first = g.producer[r.input[0]]
        if first.op_type != "Reshape" or not g.static(r.output[0]):
            continue
        if g.rank(first.output[0]) <= MAX_RANK and not (first.name.startswith(PREFIX) or r.name.startswith(PREFIX)):
            continue  # only the views this module made or must remove
        shape = g.const(np.array(g.shapes[r.output[0]], np.int64), "shape")
        new = g.onnx.helper.make_node("Reshape", [first.input[0], shape], [r.output[0]], name=g.name("reshape"))
        g.replace([r], [new])
        if g.shapes.get(first.input[0]) == g.shapes[r.output[0]] and r.output[0] not in g.outputs:
            for user in g.consumers.get(r.output[0], []):
                g.rename_input(user, r.output[0], first.input[0])
            g.prune()
        return "Reshape chain folded"
    return None


REWRITES: tuple[Callable[[_Graph], str | None], ...] = (
    _arange_gather, _gather_through_transpose, _gather_one_index, _transpose, _elementwise, _softmax, _einsum,
    _unary, _strided_slice,
    _expand_before_broadcast, _one_axis_reduce, _reshape_chain)


def high_rank_ops(model: Any) -> list[str]:
    """``op (r-D) xN`` for the nodes with a tensor above rank 4, or a Slice with steps: what pnnx may not give
    ncnn (it drops a leading batch of 1 from some ops, not from all: measured on maxvit's 5-D attention, whose
    permutes it rejects in one export and converts in another). Empty when nothing is left."""
    g = _Graph(model)
    left = []
    for n in g.g.node:
        shapes = [g.shapes[x] for x in [*n.input, *n.output] if x in g.shapes]
        over = [len(s) for s in shapes if len(s) > MAX_RANK]
        if over and n.op_type != "Constant":
            left.append(f"{n.op_type} ({max(over)}-D)")
        elif n.op_type == "Slice" and len(n.input) >= 5 and n.input[4] in g.consts \
                and np.any(g.consts[n.input[4]] != 1):
            left.append("Slice (steps)")
    return [f"{k} x{c}" if c > 1 else k for k, c in Counter(left).items()]


def lower_rank(model: Any, limit: int = 10000) -> tuple[Any, dict[str, int]]:
    """Rewrite ``model`` (static shapes) in place until no rewrite applies; return it and a count per rewrite."""
    g = _Graph(model)
    notes: Counter[str] = Counter()
    for _ in range(limit):
        for rewrite in REWRITES:
            if (note := rewrite(g)) is not None:
                notes[note] += 1
                break
        else:
            break
    del model.graph.value_info[:]  # shapes of renamed or removed tensors; ONNX Runtime infers them again
    return model, dict(notes)
