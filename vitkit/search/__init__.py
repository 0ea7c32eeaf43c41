"""Budgeted Pareto search over composed recipes: ``vitkit search`` / :func:`run_search`."""

from ..models.fingerprint import model_fingerprint
from .core import NoFeasibleCandidate, SearchOutcome, run_search, search
from .halving import OBJECTIVES, successive_halving
from .log import SearchLog, data_fingerprint
from .pareto import pareto_front
from .space import DEFAULT_SPACE, Candidate, Fidelity, SearchSpace, parse_space, read_space

__all__ = [
    "DEFAULT_SPACE",
    "OBJECTIVES",
    "Candidate",
    "Fidelity",
    "NoFeasibleCandidate",
    "SearchLog",
    "SearchOutcome",
    "SearchSpace",
    "data_fingerprint",
    "model_fingerprint",
    "parse_space",
    "pareto_front",
    "read_space",
    "run_search",
    "search",
    "successive_halving",
]
