"""The CLI's setting flags derive from the sections declared on the settings: each setting in
exactly one section, each command with the flags of its sections, one --help group per section."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from bridge.cli import commands as cli
from bridge.config import Section, Settings, settings_of


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command and action of ``parser`` by its words (``"webhooks create"``)."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                children = _subparsers(sub)
                if children:
                    out.update({f"{name} {child}": p for child, p in children.items()})
                else:
                    out[name] = sub
    return out


COMMANDS = _subparsers(cli._parser())


def test_every_setting_is_in_exactly_one_section() -> None:
    names = [f.name for f in dataclasses.fields(Settings)]
    in_sections = settings_of(Section)
    assert sorted(in_sections) == sorted(names)
    assert len(in_sections) == len(set(in_sections))
    assert all(settings_of([section]) for section in Section), "a section with no setting"


def test_run_accepts_every_setting() -> None:
    assert set(cli.COMMAND_SECTIONS["run"]) == set(Section)
    assert set(COMMANDS["run"].get_default("settings")) == set(Settings.specs())


def test_every_command_has_its_sections() -> None:
    assert set(COMMANDS) == set(cli.COMMAND_SECTIONS)


@pytest.mark.parametrize("command", sorted(cli.COMMAND_SECTIONS))
def test_each_command_offers_exactly_its_sections_flags(command: str) -> None:
    parser = COMMANDS[command]
    expected = settings_of(cli.COMMAND_SECTIONS[command])
    assert parser.get_default("settings") == expected
    specs = Settings.specs()
    flags = {option for action in parser._actions for option in action.option_strings}
    setting_flags = {spec.flag for spec in specs.values()}
    assert flags & setting_flags == {specs[name].flag for name in expected}


@pytest.mark.parametrize("command", sorted(cli.COMMAND_SECTIONS))
def test_help_shows_one_group_per_section(command: str) -> None:
    parser = COMMANDS[command]
    text = parser.format_help()
    groups = {group.title: group for group in parser._action_groups}
    for section in cli.COMMAND_SECTIONS[command]:
        title = f"{section.value} settings"
        assert f"\n{title}:\n" in text
        grouped = {o for action in groups[title]._group_actions for o in action.option_strings}
        assert grouped == {Settings.specs()[name].flag for name in settings_of([section])}
    other = set(Section) - set(cli.COMMAND_SECTIONS[command])
    assert not any(f"\n{section.value} settings:\n" in text for section in other)


def test_management_commands_find_a_broker() -> None:
    for command, sections in cli.COMMAND_SECTIONS.items():
        if command not in ("broker", "receive", "tokens add"):  # (these use no broker)
            assert Section.KAFKA in sections and Section.EMBEDDED in sections, command


def test_new_worker_flags_parse() -> None:
    args = cli._parser().parse_args(
        ["run", "--event-loop", "asyncio", "--kafka-output-linger", "2ms", "--log-format", "text"]
    )
    settings = cli._settings(args)
    assert settings.event_loop == "asyncio"
    assert settings.kafka_output_linger == 0.002
    assert settings.log_format == "text"
