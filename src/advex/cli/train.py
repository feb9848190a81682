"""``advex train``: adversarial training or defensive distillation from the command line."""

from __future__ import annotations

from pathlib import Path

import click

from .common import LibraryChoice, methods, prepare_out, run_errors, schedules

__all__ = ["train", "summarize_card"]


@click.command(short_help="Train a robust model (adversarial training or distillation).")
@click.option(
    "--model",
    "model_name",
    default="mnist-smallcnn",
    show_default=True,
    help="Zoo name (its architecture, trained from scratch), an architecture name, or a saved "
    "model directory to fine-tune.",
)
@click.option(
    "--data",
    "data_spec",
    default="mnist5k",
    show_default=True,
    help="Training data: mnist5k | digits | mnist:PATH | fashion-mnist:PATH.",
)
@click.option(
    "--method",
    type=LibraryChoice(methods),
    default="pgd",
    show_default=True,
    help="PGD-AT (Madry), TRADES, MART, FGSM-RS (Wong), defensive distillation, or plain.",
)
@click.option("--eps", type=float, default=0.3, show_default=True, help="Training budget ε.")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Directory for model.safetensors, card.json, log.json, checkpoints, curve PNG.",
)
@click.option("--lr", type=float, default=None, help="Learning rate (default per optimizer).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--attack-steps", type=click.IntRange(min=1), default=None)
@click.option("--attack-step-size", type=float, default=None)
@click.option("--beta", type=float, default=None, help="TRADES / MART β (default 6).")
@click.option("--eps-warmup-epochs", type=float, default=None, help="Linear ε warm-up.")
@click.option(
    "--schedule",
    type=LibraryChoice(schedules),
    default=None,
)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default=None)
@click.option("--temperature", type=float, default=100.0, show_default=True, help="Distillation T.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.json.")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto | cpu | cuda | cuda:N | mps. auto: CUDA (under torchrun cuda:LOCAL_RANK), then "
    "MPS, then CPU.",
)
@click.option(
    "--amp",
    type=click.Choice(["bf16", "fp16"]),
    default=None,
    help="Mixed-precision training passes (fp16 with a gradient scaler). Default: fp32.",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="Run the training passes through torch.compile (worth it on GPUs; slow to start).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def train(
    model_name,
    data_spec,
    method,
    eps,
    norm,
    epochs,
    out,
    lr,
    batch_size,
    attack_steps,
    attack_step_size,
    beta,
    eps_warmup_epochs,
    schedule,
    optimizer,
    temperature,
    seed,
    resume,
    device,
    amp,
    compile_,
    progress,
) -> None:
    """Adversarial training (pgd, trades, mart, fgsm-rs) or defensive distillation.

    Writes OUT/model.safetensors and OUT/card.json (recipe, clean and PGD robust accuracy on
    held-out data, wall time) — load it with advex.zoo.load(OUT) or evaluate it with
    `advex evaluate --model OUT` — plus log.json, training_curve.png and a checkpoint every
    epoch (`--resume` continues an interrupted run and ends with the same weights).

    Data-parallel on several processes (one per GPU, or CPU processes with gloo):
    `torchrun --nproc_per_node 2 -m advex train ... --out OUT`. --batch-size is the global
    batch, split across the ranks; rank 0 writes OUT; a checkpoint resumes on any number of
    ranks. See docs/scaling-training.md.
    """
    from advex.defenses import train_from_spec
    from advex.training import ddp

    started = False
    if ddp.launched_by_torchrun():
        dev = run_errors(ddp.local_device, device)
        started = ddp.init_from_env(dev)
    rank = ddp.rank()
    try:
        _prepare_out_rank0(out)
        result = _train(
            train_from_spec, model_name, data_spec, method, eps, epochs, out, norm,
            temperature, seed, resume, progress, lr, batch_size, attack_steps,
            attack_step_size, beta, eps_warmup_epochs, schedule, optimizer, device, amp,
            compile_,
        )  # fmt: skip
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank != 0:  # one summary, from rank 0
        return
    click.echo(summarize_card(result.card))
    click.echo(
        f"wrote {Path(out) / 'model.safetensors'} and {Path(out) / 'card.json'} (the full card)"
    )


def _prepare_out_rank0(out) -> None:
    """``prepare_out`` on rank 0 only; its error is raised on every rank."""
    from advex.training import ddp

    err = None
    if ddp.rank() == 0:
        try:
            prepare_out(out)
        except click.ClickException as exc:
            err = exc.message
    err = ddp.broadcast_object(err)
    if err is not None:
        raise click.ClickException(err)


def _train(
    train_from_spec, model_name, data_spec, method, eps, epochs, out, norm, temperature, seed,
    resume, progress, lr, batch_size, attack_steps, attack_step_size, beta, eps_warmup_epochs,
    schedule, optimizer, device, amp, compile_,
):  # fmt: skip
    return run_errors(
        train_from_spec,
        model_name,
        data_spec,
        method,
        eps,
        epochs,
        out,
        norm=norm,
        temperature=temperature,
        seed=seed,
        resume=resume,
        progress=progress,
        lr=lr,
        batch_size=batch_size,
        attack_steps=attack_steps,
        attack_step_size=attack_step_size,
        beta=beta,
        eps_warmup_epochs=eps_warmup_epochs,
        schedule=schedule,
        optimizer=optimizer,
        device=device,
        amp=amp,
        compile=compile_ or None,
    )


def summarize_card(card: dict) -> str:
    """A few lines from a trained model's card: name, method, accuracies, time."""

    def pct(v):
        return "n/a" if v is None else f"{v:.2%}"

    lines = [f"trained {card.get('name', 'model')} ({card.get('defense', 'none')})"]
    lines.append(f"  clean accuracy   {pct(card.get('accuracy'))} (held-out)")
    if "teacher_accuracy" in card:
        lines.append(f"  teacher accuracy {pct(card.get('teacher_accuracy'))}")
    if card.get("robust_accuracy") is not None:
        ev = card.get("robust_eval") or {}
        how = ""
        if ev:
            how = f" (PGD-{ev.get('steps')}, {ev.get('norm')} eps={ev.get('eps')}, n={ev.get('n')})"
        lines.append(f"  robust accuracy  {pct(card['robust_accuracy'])}{how}")
    if card.get("epochs_completed") is not None:
        stop = ", stopped early" if card.get("stopped_early") else ""
        lines.append(
            f"  epochs           {card['epochs_completed']} (best {card.get('best_epoch')}{stop})"
        )
    if card.get("train_time_s") is not None:
        lines.append(f"  training time    {card['train_time_s']:.1f} s")
    if card.get("warning"):
        lines.append(f"  warning: {card['warning']}")
    return "\n".join(lines)
