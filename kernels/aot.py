"""Ahead-of-time compilation of every Triton kernel in this package for real GPUs, on a machine without one.

    python -m fastdino.kernels.aot                 # the full matrix, cc 80 / 90 / 100, a table per kernel
    python -m fastdino.kernels.aot --subset ci     # the representative subset the test suite compiles
    python -m fastdino.kernels.aot --json out.json # every row, for bench/RESULTS.md

Triton compiles for a `GPUTarget` without a driver, and ships `ptxas` (`triton/backends/nvidia/bin`), so the
whole path from the Python kernel to the cubin runs on a CPU machine. Launch configurations are not written out
by hand: the real launchers of loss.py and ema.py run on `meta` tensors with their kernels swapped for recorders,
so every (block size, warps, constexpr) is the one a GPU run would launch, derived by the same settings helpers.
The JIT's own binder then specialises the arguments (dtypes, 16-divisible integers, integers equal to 1) exactly
as a launch does. Each compiled kernel goes through `ptxas -v` (registers, spills, stack) and its PTX is searched
for atomic instructions (the loss must have none: they make GPU runs unrepeatable).

The Triton interpreter (TRITON_INTERPRET=1, set by the tests' conftest) replaces the kernels with Python
functions that cannot be compiled: run this in a process without it (`main()` re-runs itself without it).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget

from . import ema as ema_module
from . import loss as loss_module

# One GPU per compute capability, for the launch settings that depend on the device (the loss's K-split uses the
# number of SMs): A100 (cc 80, 108 SMs), H100 SXM (cc 90, 132 SMs), B200 (cc 100, 148 SMs), from NVIDIA's data sheets.
TARGETS = {80: 108, 90: 132, 100: 148}
# (teacher views G, student views V): one teacher view; fastdino's tiny preset (2 + 4); DINO-MC (2 + 6,
# main_dino_mc.py --local_crops_number 6); DINO's default (2 + 8, main_dino.py --local_crops_number 8);
# fastdino's dino preset (2 + 10); DINO-TP with three global views (3 + 6).
VIEWS = [(1, 7), (2, 6), (2, 8), (2, 10), (2, 12), (3, 9)]
OUT_DIMS = [4096, 65536]  # the tiny preset's K and the paper's
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Images per GPU: DINO-MC's default 8 (main_dino_mc.py --batch_size_per_gpu) and DINO's / fastdino's presets' 64.
BATCHES = [8, 64]
# The EMA runs over flat parameter buffers (fp32, or bf16 for a bf16 model); ViT-S/8 + DINO head is ~44M
# parameters, padded to 64-byte multiples (FlatEMA), so the element count is divisible by 16 like this one.
EMA_ELEMENTS = 44_000_000
EMA_DTYPES = [torch.float32, torch.bfloat16]


@dataclass
class Launch:
    """One kernel launch as recorded from a launcher: the kernel, its arguments, and what configuration it was."""
    kernel: object
    args: tuple
    kwargs: dict
    label: str


@dataclass
class Row:
    """One compiled kernel for one target."""
    kernel: str
    cc: int
    configs: list[str] = field(default_factory=list)
    num_warps: int = 0
    constexprs: str = ""
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    stack_bytes: int = -1
    shared_bytes: int = -1
    atomics: int = -1
    error: str = ""


class _Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kwargs)` records the launch instead of running."""

    def __init__(self, kernel, launches: list[Launch], label: str):
        self.kernel, self.launches, self.label = kernel, launches, label

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(Launch(self.kernel, args, kwargs, self.label))
        return launch


@contextlib.contextmanager
def _recording(module, launches: list[Launch], label: str):
    """Swap every launched kernel of `module` (the module-level JIT functions named *_kernel) for a recorder."""
    names = [n for n, v in vars(module).items() if n.endswith("_kernel") and isinstance(v, triton.runtime.JITFunction)]
    if not names:
        raise RuntimeError(f"{module.__name__}: no compilable Triton kernels; TRITON_INTERPRET=1 turns them into "
                           "Python functions: run kernels/aot.py in a process without it")
    originals = {n: getattr(module, n) for n in names}
    try:
        for n, kernel in originals.items():
            setattr(module, n, _Recorder(kernel, launches, label))
        yield
    finally:
        for n, kernel in originals.items():
            setattr(module, n, kernel)


def loss_launches(batch: int, ncrops: int, n_global: int, n_cols: int, dtype: torch.dtype, sm_count: int,
                  need_grad: bool = True) -> list[Launch]:
    """The kernels one training step of DINOLoss launches (forward, centre statistics, backward), as
    DINOLossFunction chooses them for this dtype; need_grad=False: a loss computed under no_grad."""
    meta = torch.device("meta")
    student = torch.empty(ncrops * batch, n_cols, dtype=dtype, device=meta)
    teacher = torch.empty(n_global * batch, n_cols, dtype=dtype, device=meta)
    center = torch.empty(1, n_cols, device=meta)  # the module's fp32 buffer
    colsum = torch.empty(n_cols, device=meta)
    grad_output = torch.empty((), device=meta)
    kw = dict(ncrops=ncrops, n_global=n_global, student_temp=0.1, teacher_temp=0.04, sm_count=sm_count)
    label = f"B={batch} G={n_global} V={ncrops} K={n_cols} {str(dtype)[6:]}" + ("" if need_grad else " no-grad")
    launches: list[Launch] = []
    with _recording(loss_module, launches, label):
        if not need_grad:
            loss_module._triton_forward(student, teacher, center, None, colsum, **kw)
        elif loss_module.defers_gradient(dtype):
            row_stats = loss_module._triton_row_stats(student, ncrops, n_global)
            loss_module._triton_forward(student, teacher, center, None, colsum, row_stats, **kw)
            loss_module._triton_backward(student, teacher, center, row_stats, student, grad_output, **kw)
        else:
            loss_module._triton_forward(student, teacher, center, student, colsum, **kw)
            loss_module._scale_by_grad_output_triton(student, grad_output)
    return launches


def ema_launches(dtype: torch.dtype, n_elements: int = EMA_ELEMENTS) -> list[Launch]:
    """The EMA kernel as FlatEMA launches it on a flat buffer of `n_elements` values of `dtype`."""
    meta = torch.device("meta")
    teacher, student = (torch.empty(n_elements, dtype=dtype, device=meta) for _ in range(2))
    launches: list[Launch] = []
    with _recording(ema_module, launches, f"n={n_elements} {str(dtype)[6:]}"):
        ema_module.ema_update_triton(teacher, student, 0.996)
    return launches


def all_launches(subset: str = "full", targets=TARGETS) -> dict[int, list[Launch]]:
    """Every launch configuration per compute capability. subset="ci": DINO-MC's views at K=65536 and B=64 in every
    dtype, one and three teacher views in one dtype each, the no-grad forward, and the EMA (for the test suite)."""
    per_target = {}
    for cc, sms in targets.items():
        launches = []
        if subset == "ci":
            cases = [(64, 8, 2, 65536, dtype, True) for dtype in DTYPES]
            cases += [(64, 7, 1, 65536, torch.float32, True), (64, 9, 3, 4096, torch.float16, True),
                      (64, 8, 2, 65536, torch.bfloat16, False)]
        else:
            cases = [(b, v, g, k, dtype, need_grad)
                     for b, (g, v), k, dtype, need_grad in itertools.product(BATCHES, VIEWS, OUT_DIMS, DTYPES,
                                                                             (True, False))]
        for batch, ncrops, n_global, n_cols, dtype, need_grad in cases:
            launches += loss_launches(batch, ncrops, n_global, n_cols, dtype, sms, need_grad)
        for dtype in EMA_DTYPES:
            launches += ema_launches(dtype)
        per_target[cc] = launches
    return per_target


def _jit_specialization(kernel, args: tuple, kwargs: dict, target: GPUTarget):
    """(signature, constexprs, attrs, options) exactly as JITFunction.run derives them for a launch."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or triton.knobs.runtime.debug
    kwargs["instrumentation_mode"] = triton.knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options


def _ptxas_report(ptx: str, cc: int, fp_fusion: bool) -> dict:
    """Registers, spills and stack of the PTX's entry function from `ptxas -v`, run with the flags Triton's own
    cubin build uses (triton/backends/nvidia/compiler.py make_cubin)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(cc).path, "-lineinfo", *([] if fp_fusion else ["--fmad=false"]), "-v",
               "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(cc)}", src, "-o", src + ".o"]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, log)) else 0  # noqa: E731
    return dict(registers=number(r"Used (\d+) registers"), spill_stores=number(r"(\d+) bytes spill stores"),
                spill_loads=number(r"(\d+) bytes spill loads"), stack_bytes=number(r"(\d+) bytes stack frame"))


def compile_launches(cc: int, launches: list[Launch]) -> list[Row]:
    """Compile each distinct launch configuration for cc (duplicates share a row, their labels listed)."""
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", cc, 32)
    rows: dict[str, Row] = {}
    for launch in launches:
        kernel = launch.kernel
        try:
            signature, constexprs, attrs, options = _jit_specialization(kernel, launch.args, launch.kwargs, target)
        except Exception as e:  # noqa: BLE001 (report, do not stop the table)
            rows[f"{kernel.__name__} {launch.label}"] = Row(kernel.__name__, cc, [launch.label], error=repr(e))
            continue
        key = json.dumps([kernel.__name__, signature, sorted(map(str, constexprs.items())),
                          sorted(map(str, attrs.items())), str(options)])
        if key in rows:
            rows[key].configs.append(launch.label)
            continue
        named = {kernel.arg_names[path[0]]: value for path, value in constexprs.items() if len(path) == 1}
        row = Row(kernel.__name__, cc, [launch.label], num_warps=options.num_warps,
                  constexprs=" ".join(f"{k}={v}" for k, v in named.items()))
        try:
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
            ptx = compiled.asm["ptx"]
            row.__dict__.update(_ptxas_report(ptx, cc, options.enable_fp_fusion))
            row.shared_bytes = compiled.metadata.shared
            row.atomics = len(re.findall(r"^\s*(?:@!?%p\d+\s+)?(?:atom|red)\.", ptx, flags=re.M))
        except Exception as e:  # noqa: BLE001
            row.error = f"{type(e).__name__}: {str(e)[:2000]}"
        rows[key] = row
    return list(rows.values())


def compile_all(subset: str = "full", targets=TARGETS) -> list[Row]:
    return [row for cc, launches in all_launches(subset, targets).items() for row in compile_launches(cc, launches)]


def summary(rows: list[Row]) -> list[dict]:
    """One line per (kernel, target): configurations, register range, most shared memory, spills, atomics."""
    out = []
    for (name, cc), group in itertools.groupby(sorted(rows, key=lambda r: (r.kernel, r.cc)),
                                               key=lambda r: (r.kernel, r.cc)):
        group = list(group)
        ok = [r for r in group if not r.error]
        regs = [r.registers for r in ok]
        out.append(dict(kernel=name, cc=cc, compiled=len(ok), failed=len(group) - len(ok),
                        launch_configs=sum(len(r.configs) for r in group),
                        registers=f"{min(regs)}-{max(regs)}" if regs else "-",
                        warps="/".join(str(w) for w in sorted({r.num_warps for r in ok})),
                        max_shared_bytes=max((r.shared_bytes for r in ok), default=0),
                        spill_bytes=sum(r.spill_stores + r.spill_loads for r in ok),
                        max_stack_bytes=max((r.stack_bytes for r in ok), default=0),
                        atomics=sum(r.atomics for r in ok)))
    return out


def _markdown(table: list[dict]) -> str:
    keys = list(table[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in table]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastdino.kernels.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", choices=("full", "ci"), default="full")
    parser.add_argument("--cc", type=int, nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--json", help="write every compiled row (and the summary) to this file")
    parser.add_argument("--rows", action="store_true", help="print every compiled configuration, not the summary")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":  # the kernels are Python functions here: start over without
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.run([sys.executable, "-m", __spec__.name, *(argv if argv is not None else sys.argv[1:])],
                              env=env).returncode
    start = time.perf_counter()
    rows = compile_all(args.subset, {cc: TARGETS[cc] for cc in args.cc})
    table = summary(rows)
    print(f"triton {triton.__version__}, {len(rows)} compiled kernels in {time.perf_counter() - start:.0f} s "
          f"({args.subset} matrix)")
    if args.rows:
        print(_markdown([dict(kernel=r.kernel, cc=r.cc, warps=r.num_warps, registers=r.registers,
                              spill_bytes=r.spill_stores + r.spill_loads, shared_bytes=r.shared_bytes,
                              atomics=r.atomics, constexprs=r.constexprs, configs="; ".join(r.configs[:3])
                              + (f" (+{len(r.configs) - 3})" if len(r.configs) > 3 else ""), error=r.error[:80])
                         for r in rows]))
    else:
        print(_markdown(table))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(triton=triton.__version__, subset=args.subset, summary=table,
                           rows=[asdict(r) for r in rows]), f, indent=1)
    errors = [r for r in rows if r.error]
    for r in errors:
        print(f"FAILED {r.kernel} cc {r.cc} {r.configs[0]}: {r.error[:500]}", file=sys.stderr)
    spills = [r for r in rows if r.spill_stores > 0 or r.spill_loads > 0]
    for r in spills:
        print(f"SPILLS {r.kernel} cc {r.cc} {r.configs[0]}: {r.spill_stores} B stored, {r.spill_loads} B loaded",
              file=sys.stderr)
    return 1 if errors or spills else 0


if __name__ == "__main__":
    sys.exit(main())
