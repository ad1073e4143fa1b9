"""A process-wide count of changes that graphs compiled earlier cannot see.

``mindspore.jit`` bakes Python attributes (active adapters, enabled/disabled, merged) into a graph as constants.
Whatever changes them calls :func:`bump_graph_version`; code that keeps compiled graphs across calls (``generate``'s
decode step) keys them by :func:`graph_version` and compiles anew when it moved.
"""
_version = 0


def bump_graph_version():
    global _version
    _version += 1


def graph_version():
    return _version
