"""Help text as the terminal should show it: Typer keeps a docstring's line breaks, so
paragraphs wrapped at the source's width came out ragged on a narrower terminal. The commands
of `mlscale`, of `python -m mlscale.rollout` and of the load test (a program of its own) pass
through `unwrap_help`."""

import inspect

import typer


def unwrapped(doc: str) -> str:
    """A docstring with each paragraph on one line, for the terminal to wrap. Examples (a
    paragraph starting "Example", or with indented lines) keep their lines."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if p.startswith("Example") or "\n " in p else " ".join(p.split("\n"))
                       for p in paragraphs)  # fmt: skip


def unwrap_help(typer_app: typer.Typer) -> None:
    """Every command's and group's help, unwrapped."""
    for command in typer_app.registered_commands:
        doc = command.help or (command.callback and command.callback.__doc__)
        if doc:
            command.help = unwrapped(doc)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            info = group.typer_instance.info
            if isinstance(info.help, str):
                info.help = unwrapped(info.help)
            unwrap_help(group.typer_instance)
