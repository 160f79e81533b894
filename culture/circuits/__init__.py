"""Circuits per task: counterfactual quiz pairs, activation and attribution
patching, logit lens and direct logit attribution, circuit discovery.

One module per method, on TransformerLens hooks of the converted model
(:func:`culture.hooked.load_hooked`):

* :mod:`~culture.circuits.metric` -- pairs (:class:`QuizPairs`), the logit
  difference metric, recovery and its intervals;
* :mod:`~culture.circuits.pairs` -- pairs from the world generator;
* :mod:`~culture.circuits.sites` -- where a patch goes, tables of sites;
* :mod:`~culture.circuits.activation` -- activation patching;
* :mod:`~culture.circuits.attribution` -- attribution patching;
* :mod:`~culture.circuits.patching` -- one experiment: both methods, the
  control pairs, their agreement (:func:`run_patching`);
* :mod:`~culture.circuits.logit_lens` -- logit lens and direct logit attribution;
* :mod:`~culture.circuits.discovery` -- edge attribution patching, faithfulness;
* :mod:`~culture.circuits.plots` -- the pictures;
* across models (:func:`culture.circuits.compare.compare_circuits`):
  :mod:`~culture.circuits.head_roles` (what each head does),
  :mod:`~culture.circuits.matching` (heads matched by role, shuffled-role null),
  :mod:`~culture.circuits.cross_faithfulness` (a circuit carried to another model),
  :mod:`~culture.circuits.feature_roles` (SAE features on the circuit),
  :mod:`~culture.circuits.compare_plots`.

    >>> from culture.circuits import make_pairs, control_pairs, run_patching
    >>> report = run_patching(hooked, make_pairs(200, "replace_color", "task"), what="heads",
    ...                       control=control_pairs(50, "replace_color"))

TransformerLens and matplotlib are imported inside the functions that use them.
"""

from culture.circuits.metric import DIRECTIONS, Baseline, CircuitError, QuizPairs, recovery, recovery_interval
from culture.circuits.pairs import control_pairs, make_pairs, pair_factors
from culture.circuits.patching import METHODS, PatchReport, run_patching
from culture.circuits.sites import WHAT, Site, site_table

__all__ = [
    "DIRECTIONS", "METHODS", "WHAT", "Baseline", "CircuitError", "QuizPairs", "PatchReport", "Site",
    "control_pairs", "make_pairs", "pair_factors", "recovery", "recovery_interval", "run_patching", "site_table",
]
