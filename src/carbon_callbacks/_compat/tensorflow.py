"""What the TensorFlow FLOP counter (`flops/_tensorflow.py`) reads from inside TensorFlow: the functions a graph
calls, and the tensors a function graph returns.

Each function names the TensorFlow releases it was checked on. When what it reads is not there, it calls
`carbon_callbacks._compat.missing` (a warning once, or `InternalApiMissing` in strict mode) and returns the
fallback its docstring gives.
"""

from __future__ import annotations

from carbon_callbacks._compat import missing

#: The TensorFlow releases these functions were checked on.
CHECKED = "tensorflow 2.21.0"


def called_graph(graph, name: str):
    """The graph of the function `name` that a `PartitionedCall` in `graph` calls (a nested `tf.function`).

    Checked on tensorflow 2.21.0: `graph._get_function(name)`, an `AtomicFunction` whose `.graph` is the callee's
    `FuncGraph`. Fallback: `None`, and the call is counted as 0 and reported in the count's warnings.
    """
    get_function = getattr(type(graph), "_get_function", None)
    if get_function is None:
        missing("tensorflow", "Graph._get_function", CHECKED, "the products inside nested tf.functions are counted as "
                "0 (each call is listed in the count's warnings).")
        return None
    function = get_function(graph, name)
    if function is None:
        return None
    try:
        return function.graph
    except AttributeError:
        missing("tensorflow", "the `graph` of a function defined in a graph", CHECKED, "the products inside nested "
                "tf.functions are counted as 0 (each call is listed in the count's warnings).")
        return None


def graph_targets(graph) -> list | None:
    """The ops a function graph runs for: those of its outputs and its control outputs.

    Checked on tensorflow 2.21.0: `FuncGraph.outputs` (tensors) and `FuncGraph.control_outputs` (ops). Fallback:
    `None`, and every op of the graph is counted, including any TensorFlow prunes (the gradient of a
    `stop_gradient` operand).
    """
    try:
        outputs, control = graph.outputs, graph.control_outputs
    except AttributeError:
        missing("tensorflow", "FuncGraph.outputs and FuncGraph.control_outputs", CHECKED, "every op of a traced "
                "graph is counted, including ops TensorFlow prunes.")
        return None
    return [t.op for t in outputs] + list(control)
