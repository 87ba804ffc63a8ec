"""raymmrec's benchmarks, each run from the checkout's root as ``python -m benchmarks.<script>`` (the index is
benchmarks/README.md, the measured figures docs/benchmarks.md); :mod:`benchmarks.common` is what they share."""
