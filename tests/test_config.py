"""Configuration: defaults, durations, environment interpolation, and every error's message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import load_config, parse_duration, parse_size
from relay.config.load import _ConfigLoader
from relay.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    config = load_config(None, environ={})
    assert str(config.http.listen) == "127.0.0.1:8080"
    assert config.http.heartbeat == 15.0
    assert config.http.max_clients == 20_000
    assert config.database.channel == "system_stability"
    assert config.stability.reconcile_interval == 5.0
    assert config.stability.hold_when_busy is True
    assert config.stability.hold_release_after == 2.0


def test_example_config_is_valid_and_documents_every_default() -> None:
    config = load_config(
        REPO / "config.example.yaml",
        environ={"RELAY_DSN": "postgresql://relay@db/statbus", "SLACK_WEBHOOK_URL": "https://x/y"},
    )
    assert config.database.dsn == "postgresql://relay@db/statbus"
    text = (REPO / "config.example.yaml").read_text()
    keys = ("heartbeat_interval", "reconcile_interval", "hold_when_busy", "hold_release_after")
    for key in (*keys, "client_buffer", "max_clients"):
        assert key in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15s", 15.0),
        ("2m", 120.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        (3, 3.0),
        ("1.5s", 1.5),
    ],
)
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["\u0661\u0662s", "\uff11\uff15s", "1\u00a0s", "\u00b2s"])
def test_durations_take_ascii_digits_only(text: str) -> None:
    """They parse HTTP query values too (/wait, /history): other scripts' digits, a
    superscript or a no-break space is no duration."""
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (8190, 8190),
        ("64KiB", 64 * 1024),
        ("1MiB", 1024**2),
        ("64KB", 64_000),
        ("1MB", 1_000_000),
        (" 64 KiB ", 64 * 1024),
        ("64B", 64),
        ("65536", 65536),
    ],
)
def test_sizes(value: object, expected: int) -> None:
    assert parse_size(value) == expected


# pydantic's ByteSize alone would take each of these (as 64000, 65536, 64000000, 1, 0, 1536, 1,
# 2**30); a size keeps the documented spellings, case-sensitive, whole numbers of bytes.
@pytest.mark.parametrize(
    "value", ["64k", "64kib", "64mb", "8bit", "0.5B", "1.5KiB", True, "1GiB", -1, 1.5, "", "big"]
)
def test_sizes_refuse_what_the_config_does_not_document(value: object) -> None:
    with pytest.raises(ValueError, match='expected a size like "64KiB"'):
        parse_size(value)


def test_sizes_in_the_example_config_keep_their_value() -> None:
    config = load_config(REPO / "config.example.yaml", environ={"RELAY_DSN": "host=db"})
    assert config.http.client_buffer == 65536
    assert config.http.max_header_size == 8190


BAD_CONFIGS = [
    ("http:\n  heartbeat: fast\n", 'http.heartbeat: expected a duration like "15s", got "fast"'),
    ("http:\n  heartbeet: 15s\n", "http.heartbeet: unknown key"),
    ("surprise: 1\n", "surprise: unknown key"),
    ("http:\n  listen: localhost\n", 'http.listen: expected HOST:PORT like "127.0.0.1:8080"'),
    ("http:\n  max_clients: -1\n", "http.max_clients: input should be greater than or equal to 1"),
    ("http:\n  max_clients: lots\n", "http.max_clients: input should be a valid integer"),
    ("database:\n  heartbeat_timeout: 0s\n", "database.heartbeat_timeout: must be greater than 0s"),
    # Zero would make a relay following a hold poll without pause.
    ("stability:\n  min_read_interval: 0s\n", "stability.min_read_interval: must be greater than"),
    ("stability:\n  hold_when_busy: maybe\n", "stability.hold_when_busy: input should be a valid"),
    ("database:\n  channel: 'Bad Channel'\n", "database.channel: string should match pattern"),
    ("logging:\n  level: loud\n", "logging.level: input should be 'debug', 'info', 'warning'"),
    ("http:\n  client_buffer: big\n", 'http.client_buffer: expected a size like "64KiB"'),
    ("- a\n- b\n", "<root>: expected a mapping of sections, got list"),
    ("http: [\n", "relay.yaml: expected the node content, but found '<stream end>' at line 2"),
    ("database:\n  dsn: ${NOT_SET_ANYWHERE}\n", "database.dsn: environment variable"),
    (
        "webhooks:\n  - name: a\n    url: ftp://x\n",
        "webhooks[0].url: expected an http:// or https:// URL",
    ),
    (
        "webhooks:\n  - name: a\n    url: https://x\n    secret: plain\n",
        'webhooks[0].secret: expected a Standard Webhooks secret "whsec_<base64>"',
    ),
    (
        "webhooks:\n  - name: a\n    url: https://x\n    on: [sometimes]\n",
        "webhooks[0].on[0]: input should be 'stable', 'processing' or 'unknown'",
    ),
    (
        "webhooks:\n  - {name: a, url: 'https://x'}\n  - {name: a, url: 'https://y'}\n",
        'webhook name "a" is used twice',
    ),
    ("webhooks:\n  - url: https://x\n", "webhooks[0].name: required key is missing"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_bad_config_is_reported_with_its_key_path(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={})
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def test_every_problem_is_listed_not_just_the_first(tmp_path: Path) -> None:
    text = "http:\n  heartbeat: fast\n  retry: soon\ndatabase:\n  nope: 1\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={})
    assert len(caught.value.problems) == 3


def test_environment_interpolation_with_default(tmp_path: Path) -> None:
    text = (
        "database:\n  dsn: postgresql://relay:${PW}@db/x\nhttp:\n  listen: ${ADDR:-0.0.0.0:9000}\n"
    )
    config = load_config(write(tmp_path, text), environ={"PW": "s3cret"})
    assert config.database.dsn == "postgresql://relay:s3cret@db/x"
    assert str(config.http.listen) == "0.0.0.0:9000"
    assert "s3cret" in config.secrets()


def test_relay_dsn_environment_variable_is_the_fallback() -> None:
    config = load_config(None, environ={"RELAY_DSN": "postgresql://a@b/c"})
    assert config.database.dsn == "postgresql://a@b/c"


def test_errors_never_repeat_a_secret_value(tmp_path: Path) -> None:
    text = (
        "database:\n  dsn: [postgresql://u:Hunter2-pw@db/x]\n"
        "auth:\n  bearer_tokens: ${TOKEN}\n"
        "webhooks:\n  - name: a\n    url: hxxps://hooks.example/T000/B000/XyzSecretPath\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={"TOKEN": "tok-0123456789abcdef"})
    problems = "\n".join(caught.value.problems)
    assert "database.dsn" in problems and "auth.bearer_tokens" in problems
    assert "webhooks[0].url" in problems
    for secret in ("Hunter2-pw", "tok-0123456789abcdef", "XyzSecretPath"):
        assert secret not in problems


def test_a_flag_overrides_a_file_value_even_an_unset_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "database:\n  dsn: ${RELAY_DSN}\n")
    config = load_config(path, overrides={"database.dsn": "postgresql://x@y/z"}, environ={})
    assert config.database.dsn == "postgresql://x@y/z"


def test_require_dsn_names_the_three_ways_to_give_one() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={}, require_dsn=True)
    assert caught.value.problems == [
        "database.dsn: required (in the file, with --dsn, or as $RELAY_DSN)"
    ]


def test_yaml_on_and_yes_are_strings_not_booleans(tmp_path: Path) -> None:
    text = "webhooks:\n  - name: a\n    url: https://x\n    on: [processing]\n"
    config = load_config(write(tmp_path, text), environ={})
    assert config.webhooks[0].on == ("processing",)


def test_unreadable_file_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.yaml", environ={})
    assert "cannot read the file" in caught.value.problems[0]


def test_a_variable_holding_yaml_syntax_stays_one_string(tmp_path: Path) -> None:
    dsn = "host=db password='p#w: \"x\" [1, {2}] # not a comment\n  evil: 1'"
    token = "a#b: c\n  evil: 1\n- [x, {y: z}] 'q' \"r\""
    text = (
        "database:\n  dsn: ${RELAY_DSN}\n"
        "webhooks:\n  - {name: a, url: 'https://x', headers: {X-Token: ${TOKEN}}}\n"
    )
    config = load_config(write(tmp_path, text), environ={"RELAY_DSN": dsn, "TOKEN": token})
    assert config.database.dsn == dsn
    assert config.webhooks[0].headers == {"X-Token": token}
    assert config.database.channel == "system_stability"  # nothing else came out of them


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Text that merely looks like a flow item: quoted, or in a block scalar. (Before, the
        # file was rewritten to quote `${X}` there, giving '["v"]', a YAML error, 'a, "v", b'.)
        ("'[${X}]'", "[v]"),
        ('"a, ${X}]"', "a, v]"),
        ("a, ${X}, b", "a, v, b"),
        ("'{k: ${X}}'", "{k: v}"),
    ],
)
def test_the_file_is_parsed_as_written(tmp_path: Path, value: str, expected: str) -> None:
    text = f"feeds:\n  - path: /api/sse/x\n    channels: [c]\n    connect_data: {value}\n"
    config = load_config(write(tmp_path, text), environ={"X": "v"})
    assert config.feeds[0].connect_data == expected


def test_flow_collections_take_references_without_quotes(tmp_path: Path) -> None:
    text = (
        "auth:\n  bearer_tokens: [${TOKEN}, tok-${TOKEN}, ${OTHER:-fallback-0123456789}]\n"
        "webhooks:\n  - name: a\n    url: https://x\n"
        "    headers: {X-Token: ${TOKEN}, X-List: '${TOKEN}', X-Default: ${UNSET:-x, y #z}}\n"
        "    on: [${STATE:-processing}]\n"
    )
    config = load_config(write(tmp_path, text), environ={"TOKEN": "t" * 16})
    assert config.auth is not None
    assert config.auth.bearer_tokens == ("t" * 16, "tok-" + "t" * 16, "fallback-0123456789")
    assert config.webhooks[0].headers == {
        "X-Token": "t" * 16,
        "X-List": "t" * 16,
        "X-Default": "x, y #z",
    }
    assert config.webhooks[0].on == ("processing",)


class _PlainLoader(yaml.SafeLoader):
    yaml_implicit_resolvers = _ConfigLoader.yaml_implicit_resolvers


def _parsed(text: str, loader: type[yaml.SafeLoader]) -> object:
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError:
        return "<YAML error>"


PIECES = [*"ab$ {}[],:#'\"\n-?|", "${X}", "${X:-a b}", "${X:-a,b}", "${X:-a: b #c}", "${X:-", "  "]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=20).map("".join))
def test_references_in_flow_collections_change_nothing_plain_yaml_accepts(text: str) -> None:
    """A document is only retried with its flow references quoted when plain YAML fails on
    it: any document plain YAML parses comes out the same."""
    plain = _parsed(text, _PlainLoader)
    if plain != "<YAML error>":
        assert _parsed(text, _ConfigLoader) == plain


def test_comments_and_keys_are_never_interpolated(tmp_path: Path) -> None:
    text = (
        "# dsn: ${COMMENTED_OUT}\n"
        "database:  # ${IN_A_COMMENT}\n"
        "  channel: system_stability # ${AFTER_A_VALUE}\n"
        "webhooks:\n  - name: a\n    url: https://x\n"
        "    on: [processing]  # [${AFTER_A_FLOW}]\n"
        "    headers: {'${KEY}': v, X-Ok: ${VALUE}}  # {X: ${IN_A_COMMENT}}\n"
    )
    config = load_config(write(tmp_path, text), environ={"KEY": "k", "VALUE": "value"})
    assert config.webhooks[0].headers == {"${KEY}": "v", "X-Ok": "value"}


def test_a_whole_value_variable_validates_as_its_type(tmp_path: Path) -> None:
    text = (
        "http:\n  max_clients: ${CLIENTS}\n  listen: 127.0.0.1:${PORT}\n"
        "  client_buffer: ${BUFFER}\n  heartbeat: ${HEARTBEAT:-20s}\n"
        "stability:\n  hold_when_busy: ${HOLD}\n"
        "database:\n  keepalives_count: ${COUNT}\n"
    )
    environ = {"CLIENTS": "100", "PORT": "9000", "BUFFER": "1MiB", "HOLD": "false", "COUNT": "7"}
    config = load_config(write(tmp_path, text), environ=environ)
    assert config.http.max_clients == 100
    assert config.http.listen.port == 9000
    assert config.http.client_buffer == 1024**2
    assert config.http.heartbeat == 20.0
    assert config.stability.hold_when_busy is False
    assert config.database.keepalives_count == 7
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={**environ, "CLIENTS": "lots"})
    assert caught.value.problems == [
        "http.max_clients: input should be a valid integer, unable to parse string as an "
        "integer, got 'lots'"
    ]


def test_a_missing_variable_is_reported_at_its_key_path(tmp_path: Path) -> None:
    text = (
        "auth:\n  bearer_tokens: [${TOKEN_A}, '${TOKEN_B}']\n"
        "webhooks:\n  - {name: a, url: 'https://x', headers: {X-Token: ${CI_TOKEN}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={"TOKEN_A": "secret-value-0123456789"})
    problems = caught.value.problems
    assert problems[:3] == [
        "auth.bearer_tokens[1]: environment variable TOKEN_B is not set",
        "webhooks[0].headers.X-Token: environment variable CI_TOKEN is not set",
        "auth.bearer_tokens[1]: too short (or its environment variable is empty): use 16+ "
        "characters",
    ]
    assert "secret-value-0123456789" not in "\n".join(problems)


def test_a_flag_value_is_taken_as_given(tmp_path: Path) -> None:
    path = write(tmp_path, "database:\n  dsn: ${RELAY_DSN}\n")
    dsn = "host=db password=${NOT_A_VARIABLE}"
    config = load_config(path, overrides={"database.dsn": dsn}, environ={})
    assert config.database.dsn == dsn


def test_a_coalescing_window_is_bounded_unless_told_otherwise() -> None:
    """A key whose payloads never pause is still sent every 10 windows by default; a config
    that wants statbus's unbounded debounce says max_wait: null."""
    from relay.config import Coalesce

    assert Coalesce.model_validate({"window": "500ms"}).max_wait == 5.0
    assert Coalesce.model_validate({}).max_wait == 5.0
    assert Coalesce.model_validate({"window": "1s", "max_wait": "2s"}).max_wait == 2.0
    assert Coalesce.model_validate({"window": "1s", "max_wait": None}).max_wait is None
    with pytest.raises(ValueError, match="window"):
        Coalesce.model_validate({"window": "soon"})
