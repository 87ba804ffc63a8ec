"""One way to ask for a device on Ray, for every command: ``--device auto|cpu|cuda`` (as ``raymmrec
train`` takes it) says where the work runs, and ``--gpus-per-<unit>`` (a Tune trial, a Serve replica,
an unlearning request, an encoder actor) only says how much of one GPU each unit takes.
"""

from __future__ import annotations

from raymmrec.config import ConfigError


def cluster_gpus() -> float:
    """The GPUs of the connected Ray cluster."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def device_and_gpus(device: str | None, share: float | None, gpus_on_cluster: float, unit: str) -> tuple[str, float]:
    """(``cpu`` or ``cuda``, GPUs per ``unit``) from ``--device`` (None: auto) and ``--gpus-per-<unit>``
    (None: one whole GPU with ``cuda``); one line naming the option when they contradict each other
    or the cluster."""
    option = f"--gpus-per-{unit}"
    asked = str(device or "auto")
    dev = asked.split(":")[0]
    if dev not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device: expected auto, cpu or cuda on Ray, got {asked!r}")
    if dev == "auto":
        dev = "cuda" if gpus_on_cluster > 0 else "cpu"
    if dev == "cuda" and gpus_on_cluster <= 0:
        raise ConfigError("--device cuda: the Ray cluster has no GPU (use --device cpu or auto)")
    if share is not None and dev == "cpu":
        why = "--device cpu" if asked.startswith("cpu") else "the cluster has no GPU"
        raise ConfigError(f"{option} {share:g}: each {unit} runs on the CPU here ({why})")
    if share is not None and not 0 < share <= 1:
        raise ConfigError(f"{option}: expected a share of one GPU in (0, 1], got {share:g}")
    return dev, (share or 1.0) if dev == "cuda" else 0.0
