"""Selective gradient checkpointing: which decoder layers recompute their activations in backward.

Full checkpointing recomputes every layer's forward (about a quarter of a step's compute) to save memory that a
large card often does not need. `gradient_checkpointing="auto"` lets the memory planner (`memory.training_plan`)
choose how many layers keep their activations; the Trainer turns checkpointing on for every layer inside
`train()`, so `KeepActivations` switches it off again for the last `keep` layers when training begins (and the
preflight applies the same split to its worst-case batch). The last layers are the ones kept: their backward runs
first, so their activations are freed first. transformers' `GradientCheckpointingLayer.gradient_checkpointing`
flag decides per layer; the math is the same either way, only memory and time change.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


def decoder_layers(model: Any) -> list[Any]:
    """The model's checkpointable decoder layers, in order (PEFT and TRL wrappers included)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def keep_last(model: Any, keep: int) -> int:
    """Stop recomputing the last `keep` decoder layers (the rest stay as the Trainer set them). Returns how many
    layers still recompute."""
    layers = decoder_layers(model)
    for layer in layers[len(layers) - keep :] if keep > 0 else []:
        layer.gradient_checkpointing = False
    return sum(bool(layer.gradient_checkpointing) for layer in layers)


class KeepActivations(TrainerCallback):
    """At train begin (after the Trainer enabled checkpointing on every layer), keep the last `keep` layers'
    activations instead of recomputing them."""

    def __init__(self, keep: int):
        self.keep = keep

    def apply(self, model: Any) -> int:
        return keep_last(model, self.keep)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if model is not None:
            self.apply(model)


def setup(args: Any, plan: Any) -> list[Any]:
    """Apply the plan's checkpointing to the trainer arguments: off when every layer keeps its activations, a
    `KeepActivations` callback when some do. Returns the callbacks to add."""
    if plan is None or not args.gradient_checkpointing:
        return []
    if not plan.checkpointing:
        args.gradient_checkpointing = False
        if hasattr(args, "activation_checkpointing"):  # transformers >= 5.2x: the name the Trainer reads
            args.activation_checkpointing = False
        return []
    return [KeepActivations(plan.keep_layers)] if plan.keep_layers else []


def describe(plan: Any) -> str:
    if not plan.checkpointing:
        return f"gradient checkpointing: off (the activations of all {plan.layers} layers fit)"
    kept = f"; {plan.keep_layers} of {plan.layers} layers keep their activations" if plan.keep_layers else ""
    return f"gradient checkpointing: on{kept}"
