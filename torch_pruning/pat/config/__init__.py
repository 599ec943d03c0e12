"""The pruning config: typed models of ``pruning_config.json`` (``models``), its one error type
(``errors``, importable from everywhere), reading and writing the file (``io``) and the generated
reference (``docs``).

Layer 1: imports only ``util``. See docs/architecture.md.
"""
