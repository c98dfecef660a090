"""No module of mcpd imports one that imports it back, directly or through others, type-checking
imports included: a cycle means two modules hold one idea, or a shared word lives in the wrong
place (`mcpd.protocol.vocabulary` holds the protocol layer's)."""

from __future__ import annotations

import grimp
from twisted.trial.unittest import SynchronousTestCase


def import_cycles(package: str = "mcpd") -> list[list[str]]:
    """Every cycle through a direct import, as the chain of modules that closes it."""
    graph = grimp.build_graph(package, include_external_packages=False)
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.append([module, *back])
    return cycles


class ImportCycleTests(SynchronousTestCase):
    def test_no_module_imports_one_that_imports_it_back(self) -> None:
        self.assertEqual(import_cycles(), [])
