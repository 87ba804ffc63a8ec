"""Machine unlearning of trained runs (MMRecUn), Ray-free: run in one process or as a Ray task.

Example::

    from raymmrec.data.forget import ForgetRequest
    from raymmrec.unlearning import unlearn
    report = unlearn("runs/bm3-lfm2k-seed999", ForgetRequest.of(users=[3, 17]), gold=True)
    print(report["table"])
"""

from raymmrec.data.forget import ForgetRequest, apply_forget, read_request
from raymmrec.unlearning.mmrecun import UnlearnOptions
from raymmrec.unlearning.run import unlearn

__all__ = ["ForgetRequest", "UnlearnOptions", "apply_forget", "read_request", "unlearn"]
