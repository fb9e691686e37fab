"""A wrapped step's output gains the carbon keys in its metrics, whatever shape the output has."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from carbon_callbacks._run.step_output import add_metrics, find_loss

CARBON = {"carbon/co2e_kg": 1.0}


class Frozen(Mapping):
    """An immutable mapping built from a dict, as Flax's `FrozenDict` is."""

    def __init__(self, data):
        self._data = dict(data)

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


class Out(NamedTuple):
    state: int
    metrics: Mapping


def test_a_tuple_ending_in_a_dict_gets_the_keys_in_place():
    metrics = {"loss": 2.0}
    out = ("state", metrics)
    assert add_metrics(out, CARBON) is out and metrics == {"loss": 2.0, **CARBON}


def test_a_bare_metrics_dict_and_an_immutable_mapping_get_the_keys():
    assert add_metrics({"loss": 1.0}, CARBON) == {"loss": 1.0, **CARBON}
    frozen = add_metrics(("state", Frozen({"loss": 1.0})), CARBON)[1]
    assert isinstance(frozen, Frozen) and dict(frozen) == {"loss": 1.0, **CARBON}


def test_a_named_tuple_is_rebuilt_and_other_outputs_pass_through():
    out = add_metrics(Out(1, Frozen({"loss": 1.0})), CARBON)
    assert isinstance(out, Out) and out.metrics["carbon/co2e_kg"] == 1.0
    assert add_metrics(("state", 3), CARBON) == ("state", 3)
    assert add_metrics(None, CARBON) is None


def test_the_loss_is_found_in_either_shape():
    assert find_loss(("state", {"loss": 0.5})) == 0.5
    assert find_loss({"loss": 0.25}) == 0.25
    assert find_loss(("state", {"accuracy": 1.0})) is None
    assert find_loss(("state", {"loss": [1.0, 2.0]})) is None  # not a scalar
