"""The allocator settings of training (raymmrec.allocator): only while a training loop runs, undone after it."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import subprocess
import sys

import pytest

from raymmrec import allocator

GLIBC = platform.libc_ver()[0] == "glibc" and hasattr(ctypes.CDLL(None), "mallinfo2")
needs_glibc = pytest.mark.skipif(not GLIBC, reason="mallopt and mallinfo2 are glibc's")

# mapped(): whether a block over the 32 MiB mmap ceiling comes from mmap rather than the heap: 64 MiB more
# than the heap's free space, which a free heap chunk (left by training, its pages returned) would serve
_MAPPED = """
import ctypes, json, sys
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def mapped():
    info = libc.mallinfo2()
    block = libc.malloc(info.fordblks + (64 << 20))
    out = libc.mallinfo2().hblkhd - info.hblkhd >= 64 << 20
    libc.free(block)
    return out
"""

# a model whose user table is 2048 x 4352 floats (34 MiB), built and then trained for one epoch of one step
# (evaluation left out: the allocator is the subject)
_TRAINING = _MAPPED + """
from raymmrec.config import load_spec
from raymmrec.train.build import build, make_trainer
from raymmrec.train.loop import Callback
spec = load_spec("bpr", overrides=["data.source=synthetic:users=2048,items=16,interactions=6144", "train.epochs=1",
                                   "train.device=cpu", "train.batch_size=16384", "model.embedding_size=4352"])
p = build(spec)
seen = {"largest": max(q.numel() * q.element_size() for q in p.model.parameters()), "built": mapped()}
class Probe(Callback):
    def on_step_end(self, trainer, epoch, step):
        seen["training"] = mapped()
make_trainer(p, lambda model, **kw: {"valid": {"recall@20": 0.0}}, [Probe()]).fit()
seen["trained"] = mapped()
print(json.dumps(seen))
"""

# the context itself, for each table size on the command line: (yielded, mapped inside, mapped after)
_CONTEXT = _MAPPED + """
from raymmrec.allocator import training_heap
out = []
for largest in map(int, sys.argv[1:]):
    with training_heap(largest) as on:
        inside = mapped()
        with training_heap(0):  # a nested block keeps the outer one's settings when it ends
            pass
        out.append([on, inside, mapped()])
    out[-1].append(mapped())
print(json.dumps(out))
"""


def _python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, **env})


@pytest.fixture(scope="module")
def training(tmp_path_factory) -> dict:
    proc = _python(_TRAINING, RAYMMREC_CACHE=str(tmp_path_factory.mktemp("cache")))
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["largest"] >= allocator.MMAP_THRESHOLD
    return seen


@pytest.mark.slow
@needs_glibc
def test_building_a_large_model_leaves_the_allocator_alone(training):
    # what recommend, evaluate and a Serve replica do: a 64 MiB block is still mapped (and unmapped when freed)
    assert training["built"] is True


@pytest.mark.slow
@needs_glibc
def test_training_keeps_large_blocks_in_the_heap_until_it_ends(training):
    assert training["training"] is False  # inside fit: from the heap
    assert training["trained"] is True  # after fit: glibc's settings again


@needs_glibc
def test_the_training_heap_follows_the_table_size_and_the_setting():
    def run(*largest: int, **env: str) -> list:
        proc = _python(_CONTEXT, *map(str, largest), **env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    # [yielded, mapped inside, mapped after a nested block ended, mapped after the block]
    assert run(1 << 20, 256 << 20) == [[True, True, True, True], [True, False, False, True]]
    assert run(256 << 20, RAYMMREC_MALLOC_TUNING="threshold") == [[True, True, True, True]]
    assert run(256 << 20, RAYMMREC_MALLOC_TUNING="0") == [[False, True, True, True]]
    bad = _python(_CONTEXT, "1", RAYMMREC_MALLOC_TUNING="yes")
    assert bad.returncode != 0 and "RAYMMREC_MALLOC_TUNING='yes': expected one of 0, 1, threshold" in bad.stderr


def test_glibc_gets_back_the_values_it_started_with(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=0x40000:glibc.malloc.check=0")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000")
    assert allocator.startup_value(allocator.M_MMAP_THRESHOLD) == 0x40000
    assert allocator.startup_value(allocator.M_TRIM_THRESHOLD) == 1000
    assert allocator.startup_value(allocator.M_MMAP_MAX) == 65536


def test_allocator_settings_fit_the_c_int_that_mallopt_takes():
    for name in ("MMAP_THRESHOLD", "TRIM_THRESHOLD", "LARGE_TRIM_THRESHOLD"):
        value = getattr(allocator, name)  # a larger value would wrap silently (4 GiB becomes 0)
        assert ctypes.c_int(value).value == value >= 0, name


def test_a_bad_setting_is_refused_before_any_data_is_loaded(monkeypatch):
    """The run's checks name the variable; nothing is loaded or built first."""
    import raymmrec.train.build as b
    from raymmrec.config import load_spec

    monkeypatch.setenv("RAYMMREC_MALLOC_TUNING", "off")
    monkeypatch.setattr(b, "load_data", lambda spec: pytest.fail("data loaded before the setting was checked"))
    with pytest.raises(ValueError, match="RAYMMREC_MALLOC_TUNING='off'"):
        b.build(load_spec("bpr", overrides=["data.source=synthetic:tiny"]))
