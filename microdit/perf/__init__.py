"""Performance tooling: the roofline model of a training step (:mod:`~microdit.perf.roofline`), the
GPU plan (:mod:`~microdit.perf.gpu_plan`) and the measurements behind ``microdit-bench``: the
step (:mod:`~microdit.perf.bench_step`), the MoE layer (:mod:`~microdit.perf.bench_moe`), the parts
around the step (:mod:`~microdit.perf.bench_parts`), their timing tools
(:mod:`~microdit.perf.timing`) and the report (:mod:`~microdit.perf.benchmarks`). Device peaks:
:mod:`microdit.devices`."""
