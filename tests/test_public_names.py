"""Every public name a user imports today stays importable (the package layout may change).

The lists were recorded from ``dir(torch_pruning)``, ``dir(torch_pruning.utils)`` and
``torch_pruning.pat.__all__`` / ``_LAZY`` before the PAT modules moved into concept folders.
"""

from __future__ import annotations

import importlib

import pytest

import torch_pruning as tp

TORCH_PRUNING = [
    'BNScalePruner', 'BasePruner', 'BasePruningFunc', 'CheckpointError', 'Dependency',
    'DependencyGraph', 'Group', 'GroupNormPruner', 'GrowingRegPruner',
    'INDEX_MAPPING_PLACEHOLDER', 'MAX_RECURSION_DEPTH', 'MAX_VALID_DIM', 'MagnitudePruner',
    'MetaPruner', 'Node', 'PrunerBox', 'Pruning', 'PruningConfigError', 'algorithms',
    'base_pruner', 'batchnorm_scale_pruner', 'compatibility', 'dependency', 'function',
    'group_norm_pruner', 'growing_reg_pruner', 'importance', 'load', 'load_state_dict',
    'load_state_dict_pruned', 'ops', 'optimizer_state_matches', 'pat',
    'prune_batchnorm_in_channels', 'prune_batchnorm_out_channels', 'prune_conv_in_channels',
    'prune_conv_out_channels', 'prune_depthwise_conv_in_channels',
    'prune_depthwise_conv_out_channels', 'prune_embedding_in_channels',
    'prune_embedding_out_channels', 'prune_groupnorm_in_channels',
    'prune_groupnorm_out_channels', 'prune_instancenorm_in_channels',
    'prune_instancenorm_out_channels', 'prune_layernorm_in_channels',
    'prune_layernorm_out_channels', 'prune_linear_in_channels', 'prune_linear_out_channels',
    'prune_multihead_attention_in_channels', 'prune_multihead_attention_out_channels',
    'prune_parameter_in_channels', 'prune_parameter_out_channels', 'prune_prelu_in_channels',
    'prune_prelu_out_channels', 'pruner', 'save', 'scheduler', 'serialization', 'state_dict',
    'utils']

TORCH_PRUNING_UTILS = [
    'CheckpointError', 'Pruning', 'PruningConfigError', 'TORCH_BATCHNORM', 'TORCH_CONV',
    'TORCH_LINEAR', 'TORCH_PRELU', 'benchmark', 'compute_mat_grad', 'count_ops_and_params',
    'count_params', 'draw_computational_graph', 'draw_dependency_graph', 'draw_groups',
    'flatten_as_list', 'load_state_dict_pruned', 'module2type', 'op_counter',
    'optimizer_state_matches', 'print_tool']

TORCH_PRUNING_PAT = [
    'CheckpointError', 'MaskSet', 'Pruning', 'PruningConfig', 'PruningConfigError',
    'SplitMultiheadAttention', 'attach', 'load_state_dict_pruned', 'optimizer_state_matches',
    'split_multihead_attention', 'load_pretrained_pruned']


@pytest.mark.parametrize("module, names", [("torch_pruning", TORCH_PRUNING),
                                           ("torch_pruning.utils", TORCH_PRUNING_UTILS),
                                           ("torch_pruning.pat", TORCH_PRUNING_PAT)])
def test_public_names_still_import(module: str, names: list) -> None:
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{module} lost public names: {missing}"


def test_lazy_names_resolve() -> None:
    """Every name ``torch_pruning.pat`` resolves lazily points at a real object."""
    for name in set(tp.pat.__all__) | set(tp.pat._LAZY):
        assert getattr(tp.pat, name) is not None, name


def test_pat_names_are_the_same_objects_everywhere() -> None:
    import torch_pruning.utils as utils

    for name in ("Pruning", "load_state_dict_pruned", "PruningConfigError", "CheckpointError",
                 "optimizer_state_matches"):
        assert getattr(tp, name) is getattr(utils, name) is getattr(tp.pat, name)
