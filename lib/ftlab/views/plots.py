"""matplotlib figures for the notebooks. Each returns the Figure and, given a path, saves it as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _save(fig: Any, path: str | Path | None) -> Any:
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def curves(method: Any, metrics: list[dict[str, Any]], path: str | Path | None = None) -> Any:
    """The curves a training method's registry entry names (`training_curves`, `dpo_curves`, ...), titled with it."""
    return globals()[method.curves](metrics, path, title=method.title)


def length_histogram(lengths: list[int], max_length: int, path: str | Path | None = None, title: str = "") -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(lengths, bins=min(50, max(10, len(set(lengths)))), color="#4C72B0")
    ax.axvline(max_length, color="#C44E52", linestyle="--", label=f"max_length = {max_length}")
    ax.set_title(title or "Tokens per row after the chat template")
    ax.set_xlabel("tokens per row")
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def training_curves(metrics: list[dict[str, Any]], path: str | Path | None = None, title: str = "Training") -> Any:
    """Loss and eval loss against steps, learning rate, and tokens/s."""
    import matplotlib.pyplot as plt

    tr = [m for m in metrics if "loss" in m]
    ev = [m for m in metrics if "eval_loss" in m]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    ax = axes[0]
    ax.plot([m["step"] for m in tr], [m["loss"] for m in tr], label="train loss", color="#4C72B0")
    if ev:
        ax.plot([m["step"] for m in ev], [m["eval_loss"] for m in ev], "o-", label="eval loss", color="#C44E52")
    ax.set_title(f"{title}: loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    axes[1].plot(
        [m["step"] for m in tr if "learning_rate" in m],
        [m["learning_rate"] for m in tr if "learning_rate" in m],
        color="#55A868",
    )
    axes[1].set_title("learning rate")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("lr")
    tps = [m for m in tr if "tokens_per_s" in m]
    axes[2].plot([m["step"] for m in tps], [m["tokens_per_s"] for m in tps], color="#8172B2")
    axes[2].set_title("throughput")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("tokens/s (non-padding)")
    fig.tight_layout()
    return _save(fig, path)


def dpo_curves(metrics: list[dict[str, Any]], path: str | Path | None = None, title: str = "DPO") -> Any:
    """Preference loss (DPO, KTO), chosen/rejected rewards and their margin, and reward accuracy (DPO) or the
    policy's KL to the reference (KTO), on training batches and held-out pairs."""
    import matplotlib.pyplot as plt

    tr = [m for m in metrics if "loss" in m]
    ev = [m for m in metrics if "eval_rewards/margins" in m]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    ax = axes[0]
    ax.plot([m["step"] for m in tr], [m["loss"] for m in tr], label="train loss", color="#4C72B0")
    ax.plot([m["step"] for m in ev], [m["eval_loss"] for m in ev], "o-", label="eval loss", color="#C44E52")
    if tr:
        ax.axhline(tr[0]["loss"], ls=":", color="grey", label="start (policy = reference)")
    ax.set(title=f"{title}: loss", xlabel="step", ylabel=f"{title} loss")
    ax.legend()
    ax = axes[1]
    for k, c in (("rewards/chosen", "#55A868"), ("rewards/rejected", "#C44E52"), ("rewards/margins", "#4C72B0")):
        ax.plot([m["step"] for m in tr if k in m], [m[k] for m in tr if k in m], label=k.split("/")[1], color=c)
    ax.plot(
        [m["step"] for m in ev], [m["eval_rewards/margins"] for m in ev], "o--", label="eval margin", color="#4C72B0"
    )
    ax.set(title="implicit rewards", xlabel="step", ylabel="beta x log-ratio vs reference")
    ax.legend()
    ax = axes[2]
    acc = any("rewards/accuracies" in m for m in metrics)
    k = "rewards/accuracies" if acc else "kl"
    ax.plot([m["step"] for m in tr if k in m], [m[k] for m in tr if k in m], label="train", color="#8172B2")
    held = [m for m in ev if "eval_" + k in m]
    ax.plot([m["step"] for m in held], [m["eval_" + k] for m in held], "o-", label="eval pairs", color="#C44E52")
    if acc:
        ax.set(title="reward accuracy", xlabel="step", ylabel="share chosen > rejected", ylim=(-0.05, 1.05))
    else:
        ax.set(title="KL to the reference", xlabel="step", ylabel="KL estimate (batch)")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def grpo_curves(metrics: list[dict[str, Any]], path: str | Path | None = None, title: str = "GRPO") -> Any:
    """GRPO: the mean reward of the sampled answers (band: their std) and each reward function's mean, the answers'
    length and how many ran into max_completion_length, and the KL to the reference (beta > 0) or the loss."""
    import matplotlib.pyplot as plt

    tr = [m for m in metrics if "reward" in m]
    ev = [m for m in metrics if "eval_reward" in m]
    steps = [m["step"] for m in tr]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    ax = axes[0]
    mean, std = [m["reward"] for m in tr], [m.get("reward_std", 0.0) for m in tr]
    ax.plot(steps, mean, label="mean reward", color="#4C72B0")
    ax.fill_between(steps, [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)], alpha=0.2)
    for k in sorted({k for m in tr for k in m if k.startswith("rewards/") and k.endswith("/mean")}):
        ax.plot(steps, [m.get(k) for m in tr], ls=":", label=k.split("/")[1])
    ax.plot([m["step"] for m in ev], [m["eval_reward"] for m in ev], "o-", label="eval prompts", color="#C44E52")
    ax.set(title=f"{title}: reward", xlabel="step", ylabel="reward (sum of the functions)")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(steps, [m.get("completions/mean_length") for m in tr], label="mean length", color="#55A868")
    ax2 = ax.twinx()
    ax2.plot(steps, [m.get("completions/clipped_ratio") for m in tr], ls="--", color="#C44E52", label="cut off")
    ax2.set(ylabel="share cut at max_completion_length", ylim=(-0.05, 1.05))
    ax.set(title="answers", xlabel="step", ylabel="tokens")
    ax = axes[2]
    k = "kl" if any("kl" in m for m in tr) else "loss"
    ax.plot([m["step"] for m in metrics if k in m], [m[k] for m in metrics if k in m], color="#8172B2")
    ax.set(title="KL to the reference" if k == "kl" else f"{title} loss", xlabel="step", ylabel=k)
    fig.tight_layout()
    return _save(fig, path)


def eval_bars(scores: dict[str, dict[str, Any]], path: str | Path | None = None) -> Any:
    """Held-out NLL (with a bootstrap 95% CI of the mean) and ROUGE-L per model."""
    import matplotlib.pyplot as plt

    from ftlab.metrics import bootstrap_ci

    names = list(scores)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    cis = [bootstrap_ci(scores[n]["per_example"]["nll"]) for n in names]
    axes[0].bar(
        names,
        [c[0] for c in cis],
        yerr=[[c[0] - c[1] for c in cis], [c[2] - c[0] for c in cis]],
        color="#4C72B0",
        capsize=4,
    )
    axes[0].set(title="held-out NLL (lower is better)", xlabel="model", ylabel="nats/token")
    axes[1].bar(names, [scores[n]["rouge_l"] for n in names], color="#55A868")
    axes[1].set(title="ROUGE-L of greedy answers", xlabel="model", ylabel="F1", ylim=(0, 1))
    fig.tight_layout()
    return _save(fig, path)
