"""Server configuration: flags over IDCHECK_* environment over TOML file over defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from idcheck.server.config import ConfigError, ServerConfig, add_arguments, load, parse_listen


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_when_nothing_is_set() -> None:
    assert load(parse(), env={}) == ServerConfig()


def test_flags_beat_environment_which_beats_toml(tmp_path: Path) -> None:
    toml = tmp_path / "idcheck.toml"
    toml.write_text('[server]\nlisten = "127.0.0.1:6000"\nthreads = 4\naudit_interval = 0.5\ndata_dir = "/srv/a"\n')
    env = {"IDCHECK_THREADS": "8", "IDCHECK_DATA_DIR": "/srv/b"}
    config = load(parse("--config", str(toml), "--data", "/srv/c"), env=env)
    assert config.listen == "127.0.0.1:6000"  # TOML only
    assert config.audit_interval == 0.5  # TOML only
    assert config.threads == 8  # environment beats TOML
    assert config.data_dir == Path("/srv/c")  # flag beats both


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("demo = true\nmax_queries_per_call = 500\n")
    config = load(parse(), env={"IDCHECK_CONFIG": str(toml)})
    assert config.demo is True and config.max_queries_per_call == 500


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("threads = 'many'", "threads = 'many' is not a valid int"),
        ("colour = 'blue'", "unknown setting 'colour'"),
        ("threads = -1", "must not be negative"),
        ("threads = [", "c.toml"),
    ],
)
def test_bad_configuration_names_its_source(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")) as err:
        load(parse("--config", str(path)), env={})
    assert str(path) in str(err.value)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="IDCHECK_AUDIT_INTERVAL"):
        load(parse(), env={"IDCHECK_AUDIT_INTERVAL": "soon"})


def test_listen_address_parsing() -> None:
    assert parse_listen("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ConfigError):
        parse_listen("localhost")


def test_describe_lists_every_setting() -> None:
    text = ServerConfig().describe()
    assert "listen" in text and "127.0.0.1:50051" in text and "max_rows_per_upload" in text
