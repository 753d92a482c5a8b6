"""A chunk scan as one GPU kernel per (sequence, head), forward and backward (Pallas/Triton).

A memory's chunked recurrence is a loop of small dependent matmuls; XLA:GPU launches tens
of kernels per chunk step (docs/architecture.md, "The program on a GPU"). `scan_op(step, …)`
runs the whole loop inside one kernel per (sequence, head) instead, the state held by the
kernel, and gives it a derivative:

- forward kernel: for each chunk c, save the chunk-start state, run `step` on the chunk's
  token rows, write its per-token outputs; at the end write the end state and the momenta
  the last chunk returns;
- backward kernel: walk the chunks in reverse; for each, `jax.vjp` of the same `step`
  (traced inside the kernel) at the saved start state turns the cotangents of its outputs
  and of the next chunk's state into those of its inputs, its tokens and the constants.

So the chunk math has one home, the step function, differentiated by JAX. The step is
written with what the Triton lowering accepts: 2-D matmuls, elementwise maths and
reductions, power-of-two shapes, no slicing (memories come as separate refs, `group` axes).

step(state, consts, tokens, with_moms) -> (new_state, outputs, momenta or None):
  state, consts: tuples of groups, each a tuple of arrays (a ref [B, nh, n, …] gives a group
  of n); tokens, outputs: tuples of per-token arrays [C, …] (rows of [B, nh, T, …]);
  momenta: like state, returned when with_moms (the last chunk only).

On the CPU the kernels run in Pallas's interpreter (exact; slow, for tests). Second
derivatives through the kernels are not provided: the backward treats its residuals as
constants (the online step needs none — the teach signal whose vjp it differentiates
through is stop_gradient'ed — and its outer gradient takes first derivatives only).
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from nested_jax.ops.platform import target_platform

# jax 0.12 marks Pallas's Triton backend deprecated (in favour of Mosaic GPU) and says so at
# every lowering. It is what lowers these kernels today (docs/architecture.md, "The program
# on a GPU", says so, and model.selfmod.kernel=xla avoids it), so the notice is silenced.
warnings.filterwarnings("ignore", message="The Pallas Triton backend is deprecated",
                        category=DeprecationWarning)

NUM_WARPS, NUM_STAGES = 8, 1  # Triton launch: 256 threads per (sequence, head); no pipelining

# The kernels lowered for a GPU in this process, by name: {"programs": per launch, "flops":
# a function giving one program's FLOPs}. XLA's cost analysis cannot see inside a Triton
# kernel; benchmarks/cost_model.py multiplies these by the launches it counts.
GPU_KERNELS: dict[str, dict] = {}


HI = jax.lax.Precision.HIGHEST  # float32 matmuls stay float32 on the GPU (no TF32)


def mm(a, b):
    """a · b of 2-D float32 blocks (what Triton's dot takes), IEEE float32."""
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=HI,
                               preferred_element_type=jnp.float32)


def mm_t(a, b):
    """a · bᵀ."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=HI,
                               preferred_element_type=jnp.float32)


def t_mm(a, b):
    """aᵀ · b."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=HI,
                               preferred_element_type=jnp.float32)


def last_row(a_C, axis: int = 0):
    """a[-1] along `axis` without a slice (Triton has none): the masked sum, exact."""
    idx = jax.lax.broadcasted_iota(jnp.int32, a_C.shape, axis)
    return jnp.sum(jnp.where(idx == a_C.shape[axis] - 1, a_C, 0.0), axis=axis)


KERNELS = ("auto", "xla", "pallas")  # model.selfmod.kernel, model.titans.kernel


def choose(choice: str, fits: bool) -> bool:
    """Whether a memory's `kernel = choice` builds its kernels: "pallas" always (the config
    check rejects what they cannot run), "auto" where they fit and the program is for a
    GPU, "xla" never."""
    if choice != "auto":
        return choice == "pallas"
    return fits and target_platform() == "gpu"


class Scan(NamedTuple):
    """A chunk scan for `scan_op`: the step, the chunk length, a name for its kernels, the
    per-token output shapes after the token axis, and the step's static switches."""
    step: Callable  # a module-level function (hashable), called with **dict(opts)
    chunk: int
    name: str
    out_tails: tuple  # e.g. ((D,), ()) for outputs [T, D] and [T]
    opts: tuple = ()  # sorted (name, value) pairs: the step's static switches


def _load(refs, pre=()):
    return tuple(tuple(r[pre + (g,)] for g in range(r.shape[len(pre)])) for r in refs)


def _store(refs, groups, pre=()):
    for ref, parts in zip(refs, groups):
        for g, part in enumerate(parts):
            ref[pre + (g,)] = part


def split(seq, sizes):
    """seq cut into consecutive tuples of the given sizes."""
    out, i = [], 0
    for n in sizes:
        out.append(seq[i:i + n])
        i += n
    return out


def _step(scan: Scan, state, consts, tokens, with_moms: bool):
    return scan.step(state, consts, tokens, with_moms, **dict(scan.opts))


def _fwd_kernel(*refs, scan: Scan, n: tuple, keep_starts: bool):
    n_s, n_c, n_i, n_o = n
    st, co, tok, out, end, mom, starts = split(
        refs, (n_s, n_c, n_i, n_o, n_s, n_s, n_s if keep_starts else 0))
    chunk = scan.chunk
    n_chunks = tok[0].shape[0] // chunk
    consts = _load(co)

    def run(c, state, with_moms):
        _store(starts, state, (c,))  # the backward's residuals (nothing without keep_starts)
        rows = pl.ds(c * chunk, chunk)
        new, outs, moms = _step(scan, state, consts, tuple(r[rows] for r in tok), with_moms)
        for r, o in zip(out, outs):
            r[rows] = o
        return new, moms

    state = jax.lax.fori_loop(0, n_chunks - 1, lambda c, s: run(c, s, False)[0], _load(st))
    state, moms = run(n_chunks - 1, state, True)
    _store(end, state)
    _store(mom, moms)


def _bwd_kernel(*refs, scan: Scan, n: tuple):
    n_s, n_c, n_i, n_o = n
    co, tok, starts, d_out, d_end, d_mom, d_tok, d_st, d_co = split(
        refs, (n_c, n_i, n_s, n_o, n_s, n_s, n_i, n_s, n_c))
    chunk = scan.chunk
    n_chunks = tok[0].shape[0] // chunk
    consts = _load(co)

    def run(c, dstate, dconsts, dmoms):
        rows = pl.ds(c * chunk, chunk)
        with_moms = dmoms is not None

        def f(s, k, t):
            new, outs, moms = _step(scan, s, k, t, with_moms)
            return (new, outs, moms) if with_moms else (new, outs)

        _, vjp = jax.vjp(f, _load(starts, (c,)), consts, tuple(r[rows] for r in tok))
        douts = tuple(r[rows] for r in d_out)
        dstate, dcon, dtok = vjp((dstate, douts, dmoms) if with_moms else (dstate, douts))
        for r, d in zip(d_tok, dtok):
            r[rows] = d
        return dstate, jax.tree.map(jnp.add, dconsts, dcon)

    last = n_chunks - 1
    zero = jax.tree.map(jnp.zeros_like, consts)
    dstate, dconsts = run(last, _load(d_end), zero, _load(d_mom))
    dstate, dconsts = jax.lax.fori_loop(
        0, last, lambda i, cr: run(last - 1 - i, cr[0], cr[1], None), (dstate, dconsts))
    _store(d_st, dstate)
    _store(d_co, dconsts)


def _spec(shape):
    """The (sequence, head) program's block of a [B, nh, …] array: all after the two axes."""
    rest = tuple(shape[2:])
    return pl.BlockSpec((None, None) + rest, lambda b, h: (b, h) + (0,) * len(rest))


def call(kernel, name, ins, out_shapes, interpret: bool):
    """pallas_call of `kernel` with one program per (sequence, head): every [B, nh, …] input
    and output's block is that pair's slice; float32 outputs of `out_shapes`."""
    B, nh = ins[0].shape[:2]
    return pl.pallas_call(
        kernel, grid=(B, nh), in_specs=[_spec(a.shape) for a in ins],
        out_specs=[_spec(s) for s in out_shapes],
        out_shape=[jax.ShapeDtypeStruct(s, jnp.float32) for s in out_shapes],
        interpret=interpret, name=name,
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES),
    )(*ins)


def by_platform(fn, *args):
    """The Triton kernel on GPUs, Pallas's interpreter elsewhere (chosen when lowering)."""
    return jax.lax.platform_dependent(*args, cuda=functools.partial(fn, interpret=False),
                                      default=functools.partial(fn, interpret=True))


def _record(name: str, scan: Scan, state, consts, tokens, backward: bool) -> None:
    B, nh, T = tokens[0].shape[:3]
    shapes = tuple(tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in group)
                   for group in (state, consts, tokens))
    GPU_KERNELS[name] = {"programs": B * nh, "flops": functools.partial(
        _program_flops, scan, *shapes, T // scan.chunk, backward)}


def _program_flops(scan: Scan, state, consts, tokens, n_chunks: int, backward: bool) -> float:
    """FLOPs of one (sequence, head) program: its chunk steps (the backward's: the step's
    vjp, its recomputed forward included), by XLA's cost analysis of the step (CPU)."""
    one = lambda a, rows=None: jax.ShapeDtypeStruct(  # noqa: E731
        (rows,) + a.shape[3:] if rows else a.shape[3:], jnp.float32)
    st = tuple(tuple(one(a) for _ in range(a.shape[2])) for a in state)
    co = tuple(tuple(one(a) for _ in range(a.shape[2])) for a in consts)
    tok = tuple(one(a, scan.chunk) for a in tokens)

    def step(s, c, t):
        return _step(scan, s, c, t, False)[:2]

    return n_chunks * step_flops(step, (st, co, tok), backward)


def step_flops(step: Callable, args: tuple, backward: bool) -> float:
    """FLOPs of one chunk step `step(*args)` (abstract args) by XLA's cost analysis on the
    CPU; with `backward`, of its vjp with the recomputed forward (a backward kernel's step)."""
    if backward:
        fn = lambda *a: jax.vjp(step, *a[:-1])[1](a[-1])  # noqa: E731
        args = args + (jax.eval_shape(step, *args),)
    else:
        fn = step
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def not_powers_of_two(sizes: dict) -> list[str]:
    """The `name=value` of each size that is not a power of two (Triton's tiles must be)."""
    return [f"{k}={v}" for k, v in sizes.items() if v & (v - 1)]


def _starts_shape(a, n_chunks):
    return a.shape[:2] + (n_chunks,) + a.shape[2:]


def _forward(state, consts, tokens, *, scan: Scan, interpret: bool, keep_starts: bool):
    """(outputs, end state, momenta[, chunk-start states]) of the forward kernel; without
    keep_starts (nothing will differentiate it: inference) the starts are not written."""
    B, nh, T = tokens[0].shape[:3]
    n_chunks = T // scan.chunk
    n = (len(state), len(consts), len(tokens), len(scan.out_tails))
    shapes = ([(B, nh, T) + tuple(t) for t in scan.out_tails] + [a.shape for a in state] * 2
              + ([_starts_shape(a, n_chunks) for a in state] if keep_starts else []))
    name = scan.name + ("_fwd" if keep_starts else "_read")
    if not interpret:
        _record(name, scan, state, consts, tokens, backward=False)
    outs = call(functools.partial(_fwd_kernel, scan=scan, n=n, keep_starts=keep_starts),
                 name, tuple(state) + tuple(consts) + tuple(tokens), shapes, interpret)
    return tuple(split(tuple(outs), (n[3], n[0], n[0], n[0] if keep_starts else 0)))


def _backward(consts, tokens, starts, cts, *, scan: Scan, interpret: bool):
    n = (len(starts), len(consts), len(tokens), len(scan.out_tails))
    shapes = ([a.shape for a in tokens] + [a.shape[:2] + a.shape[3:] for a in starts]
              + [a.shape for a in consts])
    if not interpret:
        state = tuple(jax.ShapeDtypeStruct(a.shape[:2] + a.shape[3:], a.dtype) for a in starts)
        _record(scan.name + "_bwd", scan, state, consts, tokens, backward=True)
    outs = call(functools.partial(_bwd_kernel, scan=scan, n=n), scan.name + "_bwd",
                 tuple(consts) + tuple(tokens) + tuple(starts) + tuple(cts), shapes, interpret)
    return tuple(split(tuple(outs), (n[2], n[0], n[1])))


@functools.cache
def scan_op(scan: Scan):
    """f(state, consts, tokens) -> (outputs, end state, momenta), each a tuple of [B, nh, …]
    float32 arrays (tokens and outputs [B, nh, T, …]; T a multiple of scan.chunk), with a
    custom derivative (module docstring). A chunk scan with the same `scan` reuses it."""
    return differentiable(functools.partial(_forward, scan=scan),
                          functools.partial(_backward, scan=scan))


def differentiable(forward: Callable, backward: Callable):
    """f(state, consts, tokens) -> (outputs, end state, momenta) from a pair of kernel
    launchers, with the derivative of the module docstring:
    forward(state, consts, tokens, *, interpret, keep_starts) -> (outputs, end, momenta[,
    chunk-start states]); backward(consts, tokens, starts, cts, *, interpret) -> (cotangents
    of tokens, of the start state, of consts), cts the flat cotangents of (outputs, end,
    momenta). Each tuple of [B, nh, …] float32 arrays (momenta may be empty)."""

    @jax.custom_vjp
    def op(state, consts, tokens):  # undifferentiated: the kernel that keeps no residuals
        return _run(state, consts, tokens, keep_starts=False)[:3]

    def _run(state, consts, tokens, keep_starts=True):
        return by_platform(functools.partial(forward, keep_starts=keep_starts),
                           state, consts, tokens)

    # The rule calls a custom_vjp itself (`op_with_starts`): an enclosing differentiation
    # (the online step's outer gradient through the teach signal's vjp) then meets a custom
    # rule again instead of the kernel.
    @jax.custom_vjp
    def op_with_starts(state, consts, tokens):
        return _run(state, consts, tokens)

    def fwd(state, consts, tokens):
        out, res = fwd_s(state, consts, tokens)
        return out[:3], res

    def bwd(res, cts):
        (consts, tokens), starts = jax.lax.stop_gradient(res)  # first derivatives only
        flat = tuple(a for group in jax.lax.stop_gradient(cts) for a in group)
        dtok, dstate, dconsts = by_platform(backward, consts, tokens, starts, flat)
        return dstate, dconsts, dtok

    def fwd_s(state, consts, tokens):
        out = op_with_starts(state, consts, tokens)
        # Residuals as copies, not the inputs themselves: jax 0.12.1's dead-code rule for a
        # custom_vjp with unused outputs miscounts residuals that forward its inputs.
        kept = jax.lax.optimization_barrier((consts, tokens))
        return out, (kept, out[3])

    def bwd_s(res, cts):
        return bwd(res, cts[:3])  # the chunk-start states are residuals, not outputs

    op.defvjp(fwd, bwd)
    op_with_starts.defvjp(fwd_s, bwd_s)
    return op
