"""The Conductor: pure placement, admission and cost-model policy (FAST'25 §6–7).

Everything here is plain Python (numpy at most): the simulator and the live Dask
scheduler plugin (``plugin.py``, the only module that may import ``distributed``)
drive the very same :class:`Conductor`.
"""

from mooncake.conductor.admission import Rejection, check_slos, decode_view, projected_peak
from mooncake.conductor.config import (
    ADMISSIONS,
    PREFILL_POLICIES,
    Admission,
    ConductorConfig,
    PrefillPolicy,
)
from mooncake.conductor.cost_model import (
    BandwidthEstimator,
    CostModel,
    DecodeStepEstimator,
    HardwareSpec,
    ModelSpec,
    OverheadEstimator,
    PrefillTimeEstimator,
)
from mooncake.conductor.index import GlobalBlockIndex
from mooncake.conductor.output_length import OutputLengthPredictor, PredictionError
from mooncake.conductor.placement import (
    DecodeChoice,
    DecodeScheduler,
    PrefillChoice,
    PrefillScheduler,
    prefix_tokens,
)
from mooncake.conductor.policy import Conductor, Placement
from mooncake.conductor.state import DecodeLoad, DecodeSeq, PrefillLoad, RequestInfo

__all__ = [
    "ADMISSIONS",
    "PREFILL_POLICIES",
    "Admission",
    "BandwidthEstimator",
    "Conductor",
    "ConductorConfig",
    "CostModel",
    "DecodeChoice",
    "DecodeLoad",
    "DecodeScheduler",
    "DecodeSeq",
    "DecodeStepEstimator",
    "GlobalBlockIndex",
    "HardwareSpec",
    "ModelSpec",
    "OutputLengthPredictor",
    "OverheadEstimator",
    "Placement",
    "PredictionError",
    "PrefillChoice",
    "PrefillLoad",
    "PrefillPolicy",
    "PrefillScheduler",
    "PrefillTimeEstimator",
    "Rejection",
    "RequestInfo",
    "check_slos",
    "decode_view",
    "prefix_tokens",
    "projected_peak",
]
