"""The JAX and TensorFlow internals the tracers read (`carbon_callbacks._compat`): where one is missing, a warning
says what is lost (strict mode raises) and the documented fallback is taken."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from carbon_callbacks._compat import InternalApiMissing, InternalApiWarning
from carbon_callbacks._warnings import STRICT_ENV, reset_process_registry


@pytest.fixture(autouse=True)
def _lenient(monkeypatch):
    monkeypatch.delenv(STRICT_ENV, raising=False)
    reset_process_registry()
    yield
    reset_process_registry()


def _eqn(name: str, **params):
    return SimpleNamespace(primitive=SimpleNamespace(name=name), params=params, invars=[], outvars=[])


def test_jax_name_stack_missing_warns_and_counts_as_whole_step():
    from carbon_callbacks._compat import jax as compat

    with pytest.warns(InternalApiWarning, match="name_stack"):
        assert compat.name_stack(_eqn("dot_general")) is None


def test_jax_missing_internal_raises_in_strict_mode(monkeypatch):
    from carbon_callbacks._compat import jax as compat

    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(InternalApiMissing, match="length"):
        compat.scan_length(_eqn("scan"))


def test_jax_scan_length_missing_counts_the_body_once():
    from carbon_callbacks._compat import jax as compat

    with pytest.warns(InternalApiWarning, match="counted once"):
        assert compat.scan_length(_eqn("scan")) == 1


def test_jax_shard_map_copies_reads_manual_or_auto_axes():
    from carbon_callbacks._compat import jax as compat

    mesh = SimpleNamespace(shape={"data": 4, "model": 2})
    assert compat.shard_map_copies(_eqn("shard_map", mesh=mesh, newly_manual_axes=frozenset({"data"}))) == 4
    assert compat.shard_map_copies(_eqn("shard_map", mesh=mesh, auto=frozenset({"model"}))) == 4  # older releases
    with pytest.warns(InternalApiWarning, match="manual axes"):
        assert compat.shard_map_copies(_eqn("shard_map", mesh=mesh)) == 8


def test_jax_conv_geometry_missing_counts_zero_and_reports():
    from carbon_callbacks._compat import jax as compat

    with pytest.warns(InternalApiWarning, match="conv_general_dilated"):
        assert compat.conv_geometry(_eqn("conv_general_dilated")) is None


def test_tensorflow_function_lookup_missing_counts_call_as_zero():
    from carbon_callbacks._compat import tensorflow as compat

    with pytest.warns(InternalApiWarning, match="_get_function"):
        assert compat.called_graph(SimpleNamespace(), "f") is None


def test_tensorflow_graph_outputs_missing_counts_every_op():
    from carbon_callbacks._compat import tensorflow as compat

    with pytest.warns(InternalApiWarning, match="outputs"):
        assert compat.graph_targets(SimpleNamespace()) is None


def test_tensorflow_internals_are_there():
    tf = pytest.importorskip("tensorflow")
    from carbon_callbacks._compat import tensorflow as compat

    @tf.function
    def inner(x):
        return x * 2

    graph = tf.function(lambda x: inner(x) + 1).get_concrete_function(tf.ones(3)).graph
    call = next(op for op in graph.get_operations() if op.type in ("PartitionedCall", "StatefulPartitionedCall"))
    assert compat.called_graph(graph, call.get_attr("f").name) is not None
    assert compat.graph_targets(graph)
