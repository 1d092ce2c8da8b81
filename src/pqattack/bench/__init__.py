"""Benchmark: the framework's fast path against the plain PyTorch baseline, side by side, one figure per process.

    make bench                                          # the CPU figures (a few minutes on 2 cores)
    python -m pqattack.bench --device cuda              # the GPU figures (same code, on CUDA)
    python -m pqattack.bench --figures retrieval_9k_adc,demo --out outputs/bench/x.json
    python -m pqattack.bench --markdown outputs/bench/cpu.json [--update docs/benchmarks.md]

Each figure runs in its own child process (``--figure NAME``), so its peak memory is its own: the peak RSS
(``VmHWM``, reset through ``/proc/self/clear_refs`` between the fast path and the baseline) and, on CUDA,
``torch.cuda.max_memory_allocated``. The parent prints one line per figure and writes one JSON record per
figure to ``--out`` (default ``outputs/bench/<device>.json``):
``{figure, fast_value, baseline_value, unit, ratio, fast_peak_mb, baseline_peak_mb, target, meets_target, command,
device, versions, notes}``. ``ratio`` is always the speed-up: fast over baseline for a rate, baseline over fast
for a time. ``--markdown`` renders a file's records as a markdown section (``--update`` writes it into a document
between the lines ``<!-- bench:<section>:start -->`` and ``<!-- bench:<section>:end -->``, the section ``cuda`` or
``cpu:<processor>``, one per CPU model; ``--update`` without ``--markdown`` is refused). The arguments (figures,
``--out``, ``--table1-run``'s ``status.json``) are checked before any figure runs: a bad one is one ``usage
error`` line, exit 2.

The baselines are the straightforward code a researcher writes first: float32, eager, per-batch loops, a
torchvision-style DataLoader of decoded images; brute-force distances in torch, ``argsort``, a float64 mAP.
Sizes are smaller on the CPU (``SIZES``); every record says what it measured and what is projected.

Modules: ``measure`` (timing, peak memory, CPU shares), ``workloads`` (sizes, images, synthetic features),
``baselines`` (the plain reference implementations), one module per family of figures (``training``, ``attack``,
``retrieval``, ``jobs``: demo, table1 and sweep memory; ``recipe``: figures derived from other measurements and
from a GPU run's records, torch.compile), ``records`` (records, targets, markdown) and ``cli`` (the command).
"""
