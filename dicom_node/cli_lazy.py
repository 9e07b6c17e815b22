"""Click pieces that let ``dicom-node`` start without importing what it does not run.

:class:`LazyGroup` is a click group whose sub-commands may be named in a
table (name -> ``"module:attribute"`` and a short help text) instead of being
imported: a sub-command's module is imported when that sub-command runs or
its own ``--help`` is asked for, and ``dicom-node --help`` lists it from the
table.  :class:`LazyChoice` is a :class:`click.Choice` whose choices come
from a function called when they are first needed, so that a module can
offer, say, the job states of :mod:`storage.jobs` without importing
SQLAlchemy when it is imported.

This module imports click and nothing else of weight.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, NamedTuple

import click

__all__ = ["LazyChoice", "LazyCommand", "LazyGroup"]


class LazyCommand(NamedTuple):
    """A sub-command known by name before its module is imported."""

    target: str
    """``"package.module:attribute"``, the :class:`click.Command` to import."""
    help: str
    """The short help ``--help`` lists (the first sentence of the command's docstring)."""

    def load(self) -> click.Command:
        module_name, _, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


class _Commands(MutableMapping[str, click.Command]):
    """A group's commands: those added to it, and the lazy ones, imported at first lookup.

    Names (iteration, ``in``, ``len``) never import anything; looking one up
    (``[name]``, ``get``) imports a lazy command and keeps it.
    """

    def __init__(self, added: Mapping[str, click.Command], lazy: Mapping[str, LazyCommand]):
        self._added: dict[str, click.Command] = dict(added)
        self._lazy: dict[str, LazyCommand] = dict(lazy)

    def is_loaded(self, name: str) -> bool:
        return name in self._added

    def lazy(self, name: str) -> LazyCommand | None:
        return self._lazy.get(name)

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._added:
            lazy = self._lazy.get(name)
            if lazy is None:
                raise KeyError(name)
            self._added[name] = lazy.load()
        return self._added[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._added[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self._added and name not in self._lazy:
            raise KeyError(name)
        self._added.pop(name, None)
        self._lazy.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._added or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._added, *self._lazy]))

    def __len__(self) -> int:
        return len(self._added.keys() | self._lazy.keys())


class LazyGroup(click.Group):
    """A click group whose sub-commands may be imported only when used.

    ``lazy_commands`` maps a sub-command's name to a :class:`LazyCommand`
    (or a ``("module:attribute", "short help")`` pair).  :meth:`list_commands`
    names them without importing anything; :meth:`get_command` imports the
    one asked for.  ``--help`` prints the table's short help of the commands
    not imported.  :attr:`commands` resolves them too, so code that reads
    ``group.commands[name]`` finds every sub-command.
    """

    commands: _Commands

    def __init__(
        self,
        *args: Any,
        lazy_commands: Mapping[str, LazyCommand | tuple[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        table = {name: LazyCommand(*entry) for name, entry in (lazy_commands or {}).items()}
        self.commands = _Commands(self.commands, table)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Like :meth:`click.Group.format_commands`, with the table's help of the
        commands not imported (instead of importing them for it)."""
        entries: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            lazy = self.commands.lazy(name)
            if lazy is not None and not self.commands.is_loaded(name):
                # a stand-in with the table's text, shortened as click shortens a docstring
                entries.append((name, click.Command(name, help=lazy.help)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                entries.append((name, command))
        if not entries:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in entries)
        rows = [(name, command.get_short_help_str(limit)) for name, command in entries]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class LazyChoice(click.Choice):
    """A :class:`click.Choice` whose choices ``load()`` returns when first needed
    (to parse a value, or for the command's own ``--help``), not at import."""

    def __init__(self, load: Callable[[], Iterable[str]], case_sensitive: bool = True) -> None:
        self._load = load
        self._choices: tuple[str, ...] | None = None
        super().__init__((), case_sensitive)

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        if self._choices is None:
            self._choices = tuple(self._load())
        return self._choices

    @choices.setter
    def choices(self, _value: Iterable[str]) -> None:
        """Ignored: :class:`click.Choice` sets it; the loader decides."""
