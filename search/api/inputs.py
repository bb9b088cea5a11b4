"""Inputs several jobs read alike: a model projected onto a policy file, and a batch checked against memory."""

from __future__ import annotations

import copy
import os

import torch
from uniprune.compressors.core.errors import ConfigError


def policy_model(policy_path: str, model_name: str, checkpoint: str | None, input_shape: tuple[int, int, int] | None,
                 num_classes: int | None) -> tuple[torch.nn.Module, torch.nn.Module, dict, tuple[int, int, int], str]:
    """``(model, dense, structures, input shape, model name)``: ``model_name`` (with ``checkpoint``'s weights when
    given) projected onto the policy in ``policy_path`` (weights written in place), the model as it was before
    (eval mode), for ``input_shape`` / ``num_classes`` (default: the checkpoint's, else 3x32x32 (1x8x8 for
    digits-cnn) and 10 classes)."""
    from uniprune.compressors.core.policy import Policy
    from uniprune.compressors.core.projection import check_policy_model, project_model
    from uniprune.search.models import build_model, load_state, model_hint, read_checkpoint, split_checkpoint

    if not os.path.isfile(policy_path):
        raise ConfigError(f"policy file {policy_path!r} does not exist; pass the policy.json a search wrote")
    policy = Policy.load(policy_path)
    check_policy_model(policy, model_name)
    # the checkpoint knows its input shape and classes; without one, the defaults (read once, loaded below)
    state, meta = split_checkpoint(read_checkpoint(checkpoint), checkpoint) if checkpoint else ({}, {})
    default_shape = (1, 8, 8) if model_name == "digits-cnn" else (3, 32, 32)
    shape = input_shape or tuple(int(s) for s in meta.get("input_shape") or default_shape)
    model = build_model(model_name, num_classes=num_classes or int(meta.get("num_classes") or 10), input_shape=shape)
    if checkpoint:
        load_state(model, state, where=checkpoint, hint=model_hint(meta))
    dense = copy.deepcopy(model).eval()
    structures = project_model(model, policy, apply=True)
    return model, dense, structures, shape, model_name


def check_batch_memory(batch_size: int, floats_per_sample: int, option: str = "--batch-size") -> None:
    """ConfigError of one line when ``batch_size`` samples of ``floats_per_sample`` float32 each (input and a
    few activations of that size) cannot fit in this machine's memory."""
    need = 4 * 4 * batch_size * floats_per_sample  # bytes: the input and about three activations like it
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise ConfigError(f"{option} {batch_size} needs about {need / 2**30:,.0f} GiB for {floats_per_sample:,} floats a sample; "
                          f"this machine has {have / 2**30:,.0f} GiB: use a smaller batch")
