"""Performance tooling: device peaks (:mod:`~microdit.devices`), the roofline model of a
training step (:mod:`~microdit.perf.roofline`), the GPU plan (:mod:`~microdit.perf.gpu_plan`) and
the measurements behind ``microdit-bench`` (:mod:`~microdit.perf.benchmarks`)."""
