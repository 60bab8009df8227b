"""The benchmarks run (CPU smoke sizes): the GPU benchmark's four tables come out with numbers."""
import importlib.util
import math
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    from ray import cloudpickle  # Ray pickles remote functions with its own copy

    import sys

    spec = importlib.util.spec_from_file_location(f"augtune_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)  # Ray workers cannot import it by name
    return module


def test_gpu_benchmark_smoke_on_cpu(ray_session, capsys):
    results = _load("gpu").main(["--smoke"])
    out = capsys.readouterr().out
    for heading in ("(a) KD step throughput", "(b) achieved compute", "(c) trials packed", "(d) T.stddev"):
        assert heading in out
    assert results["device"] == "cpu"
    assert results["augtune"] > 0 and results["baseline"] > 0 and results["augtune_two_views"] > 0
    # a resnet8 KD step on 16 images at 16x16: teacher forward + student forward and backward
    assert 1e7 < results["step_flops"] < 1e10 and results["peak_fraction"] is None
    assert [n for n, _, _ in results["packing"]] == [1, 2]
    assert all(rate > 0 and math.isnan(busy) for _, rate, busy in results["packing"])
    assert results["proxy_seconds_per_candidate"] > 0
