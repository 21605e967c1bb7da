"""``rn-deploy optimize``: from a model to the fastest artifact that is still right at every size it accepts, for Triton.

One concern per module:

- :mod:`.candidates`: what is tried (artifacts x backends x runtime settings), and why a candidate is not;
- :mod:`.make`: each artifact made by the toolkit's own step (export, export --fp16, quantize, build), and the digests
  that make a rerun reuse it;
- :mod:`.judge`: the gates (parity with the FP32 reference, top-1 and agreement on real data at each size);
- :mod:`.measure`: p50/p99 at batch 1 and throughput at the best batch, candidates alternated in rounds;
- :mod:`.select`: the rule, a pure function of the table;
- :mod:`.report`: optimize.json, optimize.md, the plot and the Triton folder;
- :mod:`.workflow`: :func:`optimize`, the whole run, resumable.
"""

from .candidates import BACKENDS, NOT_JUDGED, PRECISIONS, Candidate, parse_list, plan
from .measure import Timing, measure_all
from .report import CANDIDATE_FIELDS, FORMAT
from .select import OBJECTIVES, rule_failures, select
from .workflow import STATE, OptimizeOptions, default_sizes, optimize

__all__ = [
    "BACKENDS", "CANDIDATE_FIELDS", "FORMAT", "NOT_JUDGED", "OBJECTIVES", "PRECISIONS", "STATE", "Candidate", "OptimizeOptions",
    "Timing", "default_sizes", "measure_all", "optimize", "parse_list", "plan", "rule_failures", "select",
]
