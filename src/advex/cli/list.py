"""``advex list``: the attacks (with their parameters), zoo models and dataset specs."""

from __future__ import annotations

import click

__all__ = ["list_cmd"]


@click.command(name="list", short_help="List attacks, zoo models and dataset specs.")
def list_cmd() -> None:
    """List the available attacks (with their parameters), zoo models and dataset specs."""
    from advex import data as D
    from advex import zoo
    from advex.attacks import registry

    click.echo("attacks (--attack NAME, --param KEY=VALUE):")
    for name, cls in sorted(registry.available_attacks().items()):
        aliases = [a for a in (cls.__name__.lower(), *cls.aliases) if a != name]
        minimum_norm = registry.declaration(cls, "minimum_norm")
        flags = [
            flag
            for flag, on in (
                ("black-box", cls.black_box),
                ("minimum-norm" if minimum_norm else "minimum-norm without eps", minimum_norm),
                ("targeted only", cls.targeted_only),
            )
            if on is not False
        ]
        head = f"  {name:<10} norms: {', '.join(cls.norms)}"
        if flags:
            head += f"; {', '.join(flags)}"
        if aliases:
            head += f"; also: {', '.join(aliases)}"
        click.echo(head)
        ps = ", ".join(f"{k}={v!r}" for k, v in registry.instance_defaults(cls).items())
        click.echo(f"  {'':<10} {ps}")
    from advex.attacks.text import available_text_attacks, find_text_attack, text_attack_params

    click.echo("\ntext attacks (with --data sms:PATH and a text model):")
    for name in available_text_attacks():
        ps = ", ".join(f"{k}={v!r}" for k, v in text_attack_params(find_text_attack(name)).items())
        click.echo(f"  {name:<12} {ps}")
    click.echo("\nzoo models (--model NAME): " + ", ".join(zoo.available()))
    click.echo(
        "architectures (advex train --model NAME, fresh weights): "
        + ", ".join(sorted(zoo.ARCHITECTURES))
    )
    click.echo("datasets (--data SPEC): " + ", ".join(D.SPEC_FORMS))
