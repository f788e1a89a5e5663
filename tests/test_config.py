"""Settings: the registry, the YAML loader, env overrides, and config.example.yaml."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest
import yaml

from proxy.config import (
    SETTINGS,
    AgentCredential,
    HostPort,
    PolicySettings,
    ProxySettings,
    Settings,
    StoreSettings,
    TokenCredential,
    TrustedHeader,
    UserCredential,
    Webhook,
    example_yaml,
    load_settings,
    sqlite_path,
)
from proxy.config_types import parse_duration, parse_hostport, parse_size
from proxy.credentials import token_hash
from proxy.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def defaults_in(folder: Path) -> Settings:
    """The dataclass defaults, with relative paths resolved against ``folder``."""
    return Settings(
        data_dir=folder / "hitl-data",
        proxy=dataclasses.replace(ProxySettings(), ca_dir=folder / "hitl-data" / "ca"),
        policy=dataclasses.replace(PolicySettings(), paths=(folder / "policies",)),
        store=StoreSettings(url=f"sqlite:///{folder}/hitl-data/hitl.db"),
    )


# -- the registry, the dataclasses and the example file agree -------------------------------


def test_registry_covers_every_field_once() -> None:
    keys = [s.key for s in SETTINGS]
    assert len(keys) == len(set(keys))
    expected = {"data_dir"}
    for section in dataclasses.fields(Settings):
        if section.name in ("data_dir", "source"):
            continue
        cls = type(getattr(Settings(), section.name))
        expected |= {f"{section.name}.{f.name}" for f in dataclasses.fields(cls)}
    assert set(keys) == expected
    assert all(s.help and "\n" not in s.help for s in SETTINGS)


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings == defaults_in(tmp_path)
    assert settings.source is None
    assert settings.proxy.listen == HostPort("127.0.0.1", 8080)
    assert settings.review.listen == HostPort("127.0.0.1", 8081)
    assert settings.hold.timeout == 900.0
    assert settings.hold.on_timeout == "deny"
    assert sqlite_path(settings.store.url) == tmp_path / "hitl-data" / "hitl.db"


def test_example_file_is_rendered_from_the_registry() -> None:
    regenerate = (
        "config.example.yaml is stale; regenerate it: .venv/bin/python -c 'from proxy.config "
        'import example_yaml; print(example_yaml(), end="")\' > config.example.yaml'
    )
    assert EXAMPLE.read_text(encoding="utf-8") == example_yaml(), regenerate


def test_example_file_lists_every_key_in_design_order() -> None:
    data = yaml.safe_load(example_yaml())
    listed = [
        key if not isinstance(value, dict) else f"{key}.{name}"
        for key, value in data.items()
        for name in (value if isinstance(value, dict) else [None])
    ]
    assert listed == [s.key for s in SETTINGS]
    assert list(data) == ["data_dir", "proxy", "review", "policy", "store", "hold", "notify", "log"]
    for setting in SETTINGS:
        assert f"# {setting.help}" in example_yaml()


def test_example_file_loads_to_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    settings = load_settings(EXAMPLE, env={})
    assert settings.source == EXAMPLE
    assert dataclasses.replace(settings, source=None) == defaults_in(REPO)


def test_example_snippets_are_valid(tmp_path: Path) -> None:
    """The commented `e.g.` values, put in place of the defaults under them, load."""
    text = example_yaml().replace("$argon2id$v=19$m=65536,t=3,p=4$...", HASH)
    kept: list[str] = []
    for line in text.splitlines():
        if kept and "#   e.g. " in kept[-1]:
            kept[-1] = kept[-1].replace("#   e.g. ", "")  # the example replaces the default line
        else:
            kept.append(line)
    settings = load_settings(write(tmp_path, "\n".join(kept)), env={})
    assert settings.proxy.agents == (AgentCredential("billing-agent", token_hash("test")),)
    assert settings.proxy.routes == (("stripe", "https://api.stripe.com"),)
    assert settings.review.trusted_header is not None
    assert settings.notify.webhooks[0].format == "slack"


# -- a full file ------------------------------------------------------------------------------

FULL = f"""
data_dir: state
proxy:
  listen: "[::1]:0"
  intercept_tls: false
  ca_dir: /srv/ca
  upstream_ca_bundle: certs/upstream.pem
  max_body_bytes: 512KiB
  upstream_timeout: 500ms
  block_private_networks: false
  allow_networks: [10.1.2.3/8, "fd00::/8", 192.168.0.7]
  require_agent_auth: true
  agents:
    - {{id: billing-agent, token_hash: "{HASH}"}}
    - {{id: mailer, token_hash: "{HASH}"}}
  routes:
    stripe: https://api.stripe.com/
    db.gw: "http://10.0.0.5:8443/base"
  secret_headers: [X-Stripe-Key, x-other]
review:
  listen: 0.0.0.0:9001
  public_url: https://review.example.com/
  users:
    - {{name: alice, password_hash: "{HASH}", groups: [finance, ops]}}
    - {{name: bob, password_hash: "{HASH}"}}
  tokens:
    - {{name: ops-bot, token_hash: "{HASH}", groups: [ops]}}
    - {{name: alice, token_hash: "{HASH}"}}
  trusted_header: {{user: X-Forwarded-User, groups: X-Forwarded-Groups, from: [127.0.0.1/32]}}
policy:
  engine: opa
  paths: [rules, /etc/hitl/rules]
  query: data.acme.gate.decision
  opa_url: http://opa:8181/
store:
  url: postgresql://hitl@db/hitl
hold:
  timeout: 1h30m
  on_timeout: allow
  client_wait: 20
  replay_window: 1d
  max_pending_per_agent: 1
notify:
  webhooks:
    - {{url: "https://hooks.slack.com/services/T/B/X", format: slack}}
    - {{url: "http://127.0.0.1:9999/hook"}}
log:
  level: DEBUG
  format: json
"""


def test_full_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf" / "certs").mkdir(parents=True)
    (tmp_path / "conf" / "certs" / "upstream.pem").write_text("pem")
    monkeypatch.chdir(tmp_path)  # not the config folder: relative paths must follow the file
    s = load_settings(write(tmp_path / "conf", FULL), env={})
    conf = tmp_path / "conf"
    assert s.source == conf / "config.yaml"
    assert s.data_dir == conf / "state"

    p = s.proxy
    assert p.listen == HostPort("::1", 0) and str(p.listen) == "[::1]:0"
    assert (p.intercept_tls, p.block_private_networks, p.require_agent_auth) == (False, False, True)
    assert p.ca_dir == Path("/srv/ca")
    assert p.upstream_ca_bundle == conf / "certs" / "upstream.pem"
    assert p.max_body_bytes == 512 * 1024
    assert p.upstream_timeout == 0.5
    assert p.allow_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("192.168.0.7/32"),
    )
    assert p.agents == (AgentCredential("billing-agent", HASH), AgentCredential("mailer", HASH))
    assert p.routes == (
        ("stripe", "https://api.stripe.com"),
        ("db.gw", "http://10.0.0.5:8443/base"),
    )
    assert p.secret_headers == ("x-stripe-key", "x-other")

    r = s.review
    assert r.listen == HostPort("0.0.0.0", 9001)
    assert r.public_url == "https://review.example.com"
    assert r.users == (
        UserCredential("alice", HASH, ("finance", "ops")),
        UserCredential("bob", HASH, ()),
    )
    assert r.tokens == (TokenCredential("ops-bot", HASH, ("ops",)), TokenCredential("alice", HASH))
    assert r.trusted_header == TrustedHeader(
        "x-forwarded-user", "x-forwarded-groups", (ipaddress.ip_network("127.0.0.1/32"),)
    )

    assert s.policy == PolicySettings(
        "opa",
        (conf / "rules", Path("/etc/hitl/rules")),
        "data.acme.gate.decision",
        "http://opa:8181",
    )
    assert s.store.url == "postgresql://hitl@db/hitl"
    h = s.hold
    assert (h.timeout, h.on_timeout, h.client_wait, h.replay_window) == (5400, "allow", 20, 86400)
    assert h.max_pending_per_agent == 1
    assert s.notify.webhooks == (
        Webhook("https://hooks.slack.com/services/T/B/X", "slack"),
        Webhook("http://127.0.0.1:9999/hook", "json"),
    )
    assert (s.log.level, s.log.format) == ("debug", "json")


def test_empty_file_and_empty_sections_are_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, ""), env={}).hold == load_settings(env={}).hold
    settings = load_settings(write(tmp_path, "proxy:\nnotify:\n  webhooks:\n"), env={})
    assert settings.proxy.listen == HostPort("127.0.0.1", 8080)
    assert settings.notify.webhooks == ()


# -- paths --------------------------------------------------------------------------------------


def test_relative_paths_follow_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc" / "hitl"
    conf.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(
        conf, "data_dir: ../data\npolicy:\n  paths: [./p]\nstore:\n  url: sqlite:///db/x.db\n"
    )
    s = load_settings(Path("..") / "etc" / "hitl" / "config.yaml", env={})
    assert s.source == conf / "config.yaml" == path
    assert s.data_dir == tmp_path / "etc" / "data"
    assert s.policy.paths == (conf / "p",)
    assert s.store.url == f"sqlite:///{conf}/db/x.db"
    assert sqlite_path(s.store.url) == conf / "db" / "x.db"
    # defaults not named in the file follow the file's folder too
    assert s.proxy.ca_dir == conf / "hitl-data" / "ca"


def test_sqlite_absolute_url(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, f"store:\n  url: sqlite:///{tmp_path}/abs.db\n"), env={})
    assert s.store.url == f"sqlite:///{tmp_path}/abs.db"
    assert s.store.url.startswith("sqlite:////")
    assert sqlite_path(s.store.url) == tmp_path / "abs.db"
    assert sqlite_path("sqlite:////var/lib/hitl/hitl.db") == Path("/var/lib/hitl/hitl.db")
    with pytest.raises(ValueError):
        sqlite_path("postgresql://u:secret@db/x")


# -- environment overrides ----------------------------------------------------------------------


def test_env_overrides_apply_after_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "proxy:\n  listen: 127.0.0.1:7000\nhold:\n  timeout: 1m\n")
    env = {
        "HITL_PROXY_LISTEN": "127.0.0.1:9000",
        "HITL_HOLD_TIMEOUT": "5m",
        "HITL_PROXY_INTERCEPT_TLS": "false",
        "HITL_PROXY_BLOCK_PRIVATE_NETWORKS": "0",
        "HITL_PROXY_REQUIRE_AGENT_AUTH": "yes",
        "HITL_PROXY_AGENTS": f'[{{id: a1, token_hash: "{HASH}"}}]',
        "HITL_PROXY_ALLOW_NETWORKS": "[10.0.0.0/8, 192.168.1.0/24]",
        "HITL_PROXY_SECRET_HEADERS": "[X-A, x-b]",
        "HITL_PROXY_MAX_BODY_BYTES": "1MB",
        "HITL_HOLD_MAX_PENDING_PER_AGENT": "7",
        "HITL_LOG_LEVEL": "warning",
        "HITL_DATA_DIR": "/x",
        "HITL_URL": "http://127.0.0.1:8081",  # the CLI's, not config
        "HITL_TOKEN": "secret",
        "HITL_SOMETHING_ELSE": "ignored",
        "PATH": "/usr/bin",
    }
    s = load_settings(path, env=env)
    assert s.proxy.listen == HostPort("127.0.0.1", 9000)
    assert s.hold.timeout == 300.0
    assert s.proxy.intercept_tls is False
    assert s.proxy.block_private_networks is False
    assert s.proxy.require_agent_auth is True
    assert s.proxy.agents == (AgentCredential("a1", HASH),)
    assert s.proxy.allow_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.0/24"),
    )
    assert s.proxy.secret_headers == ("x-a", "x-b")
    assert s.proxy.max_body_bytes == 1_000_000
    assert s.hold.max_pending_per_agent == 7
    assert s.log.level == "warning"
    assert s.data_dir == Path("/x")


def test_env_relative_paths_follow_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    monkeypatch.chdir(tmp_path)
    s = load_settings(
        write(conf, ""), env={"HITL_DATA_DIR": "state", "HITL_STORE_URL": "sqlite:///s.db"}
    )
    assert s.data_dir == tmp_path / "state"
    assert s.store.url == f"sqlite:///{tmp_path}/s.db"


def test_env_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HITL_REVIEW_LISTEN", "127.0.0.1:0")
    assert load_settings().review.listen == HostPort("127.0.0.1", 0)  # env=None: os.environ


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HITL_PROXY_NOPE": "1"}, "proxy.nope: unknown key (from HITL_PROXY_NOPE)"),
        ({"HITL_HOLD_TIMOUT": "1m"}, "(did you mean hold.timeout?)"),
        ({"HITL_PROXY_LISTN": "x"}, "did you mean proxy.listen?"),
        ({"HITL_PROXY_INTERCEPT_TLS": "maybe"}, "proxy.intercept_tls: 'maybe' is not a boolean"),
        ({"HITL_PROXY_INTERCEPT_TLS": "maybe"}, "(from HITL_PROXY_INTERCEPT_TLS)"),
        ({"HITL_HOLD_TIMEOUT": "5 minutes"}, "hold.timeout: '5 minutes' is not a duration"),
        ({"HITL_PROXY_ALLOW_NETWORKS": "[10.0.0.0/8"}, "proxy.allow_networks: not valid YAML"),
    ],
)
def test_bad_env(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# -- bad configs: one line naming the key --------------------------------------------------------


def agent(i: str = "a") -> str:
    return f'{{id: {i}, token_hash: "{HASH}"}}'


def user(name: str) -> str:
    return f'{{name: {name}, password_hash: "{HASH}"}}'


BAD = [
    # (yaml, the key the error names, a fragment of the problem)
    ("proxy:\n  listen: localhost", "proxy.listen", "has no port (expected host:port"),
    ("proxy:\n  listen: 8080", "proxy.listen", "is not an address"),
    ("proxy:\n  listen: ::1:8080", "proxy.listen", "IPv6 address in brackets"),
    ("proxy:\n  listen: '[nothost]:80'", "proxy.listen", "is not an address"),
    ("proxy:\n  listen: 'bad host:80'", "proxy.listen", "is not an address"),
    ("proxy:\n  listen: 127.0.0.1:65536", "proxy.listen", "port '65536' is not a number from 0"),
    ("proxy:\n  listen: 127.0.0.1:-1", "proxy.listen", "port '-1' is not a number"),
    ("proxy:\n  listen: 127.0.0.1:http", "proxy.listen", "port 'http' is not a number"),
    ("hold:\n  timeout: 5 minutes", "hold.timeout", "'5 minutes' is not a duration (use e.g. 30s"),
    ("hold:\n  timeout: 0s", "hold.timeout", "must be a positive duration"),
    ("hold:\n  client_wait: -3", "hold.client_wait", "must be a positive duration"),
    ("hold:\n  replay_window: true", "hold.replay_window", "is not a duration"),
    ("proxy:\n  upstream_timeout: 10x", "proxy.upstream_timeout", "is not a duration"),
    ("proxy:\n  max_body_bytes: 10 parsecs", "proxy.max_body_bytes", "is not a size"),
    ("proxy:\n  max_body_bytes: 0", "proxy.max_body_bytes", "must be at least 1 byte"),
    ("proxy:\n  lisen: 127.0.0.1:1", "proxy.lisen", "unknown key (did you mean proxy.listen?)"),
    ("prxy:\n  listen: 127.0.0.1:1", "prxy", "unknown section"),
    ("proxy.listen: 127.0.0.1:1", "proxy.listen", "nest it: write listen: under proxy:"),
    ("proxy: [listen]", "proxy", "expected a mapping of settings"),
    (
        "proxy:\n  intercept_tls: sometimes",
        "proxy.intercept_tls",
        "is not a boolean (use true or false)",
    ),
    ("proxy:\n  intercept_tls: 1", "proxy.intercept_tls", "is not a boolean"),
    ("hold:\n  on_timeout: maybe", "hold.on_timeout", "is not one of deny | allow"),
    ("hold:\n  max_pending_per_agent: 0", "hold.max_pending_per_agent", "too small (expected 1"),
    ("proxy:\n  agents: [{id: a, token_hash: \"sha256:abc\"}]", "proxy.agents[0].token_hash", "not a sha256 token hash"),
    ("review:\n  users: [{name: a, password_hash: \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"}]",
     "review.users[0].password_hash", "not an argon2 hash"),
    ("hold:\n  max_pending_per_agent: 2.5", "hold.max_pending_per_agent", "not a whole number"),
    ("policy:\n  engine: wasm", "policy.engine", "is not one of embedded | opa"),
    ("policy:\n  paths: ./policies", "policy.paths", "expected a list"),
    ("policy:\n  query: decision", "policy.query", "is not a Rego reference"),
    ("policy:\n  opa_url: opa:8181", "policy.opa_url", "is not http or https"),
    (
        "store:\n  url: mysql://u:hunter2@db/x",
        "store.url",
        "scheme 'mysql' is not a supported store",
    ),
    ("store:\n  url: sqlite:///", "store.url", "names no file"),
    ("store:\n  url: sqlite://relative.db", "store.url", "starts with sqlite:/// (three"),
    ("proxy:\n  allow_networks: [10.0.0.0/33]", "proxy.allow_networks[0]", "is not a network"),
    ("proxy:\n  allow_networks: [10.0.0.0/8, nope]", "proxy.allow_networks[1]", "is not a network"),
    ("proxy:\n  allow_networks: 10.0.0.0/8", "proxy.allow_networks", "expected a list"),
    (
        "proxy:\n  agents: [{id: a, token_hash: plaintext}]",
        "proxy.agents[0].token_hash",
        "not an argon2 hash (make one with `hitl-proxy hash-password`)",
    ),
    (f"proxy:\n  agents: [{agent()}, {agent()}]", "proxy.agents[1].id", "duplicate agent id 'a'"),
    (f"proxy:\n  agents: [{agent('a:b')}]", "proxy.agents[0].id", "must not contain ':'"),
    (f"proxy:\n  agents: [{agent('007')}]", "proxy.agents[0].id", "is not a string (quote it)"),
    ("proxy:\n  agents: [{id: a}]", "proxy.agents[0].token_hash", "is required"),
    (f"proxy:\n  agents: [{{id: a, token_hash: '{HASH}', x: 1}}]", "proxy.agents[0].x", "unknown"),
    ("proxy:\n  require_agent_auth: true", "proxy.require_agent_auth", "proxy.agents is empty"),
    ("proxy:\n  routes: {stripe: ftp://x}", "proxy.routes.stripe", "scheme 'ftp' is not http"),
    ("proxy:\n  routes: {stripe: 'https://'}", "proxy.routes.stripe", "URL has no host"),
    ("proxy:\n  routes: {stripe: 'https://a.b/v1?x=1'}", "proxy.routes.stripe", "query"),
    ("proxy:\n  routes: {'a/b': 'https://a.b'}", "proxy.routes.a/b", "one path segment"),
    ("proxy:\n  routes: {'..': 'https://a.b'}", "proxy.routes...", "one path segment"),
    ("proxy:\n  routes: [https://a.b]", "proxy.routes", "expected a mapping of name: URL"),
    ("proxy:\n  upstream_ca_bundle: missing.pem", "proxy.upstream_ca_bundle", "is not a file"),
    ("proxy:\n  secret_headers: ['bad header']", "proxy.secret_headers[0]", "not a header name"),
    ("review:\n  public_url: review.example.com", "review.public_url", "URL has no scheme"),
    (
        f"review:\n  users: [{user('al')}, {user('al')}]",
        "review.users[1].name",
        "duplicate name 'al'",
    ),
    ("review:\n  users: [{name: al, password_hash: x}]", "review.users[0].password_hash", "argon2"),
    (
        f"review:\n  tokens: [{{name: t, token_hash: '{HASH}', groups: ops}}]",
        "review.tokens[0].groups",
        "expected a list",
    ),
    ("review:\n  trusted_header: {user: X-U}", "review.trusted_header.from", "is required"),
    ("review:\n  trusted_header: {user: X-U, from: []}", "review.trusted_header.from", "must list"),
    (
        "review:\n  trusted_header: {user: 'X U', from: [10.0.0.0/8]}",
        "review.trusted_header.user",
        "header",
    ),
    (
        "notify:\n  webhooks: [{url: 'https://h', format: xml}]",
        "notify.webhooks[0].format",
        "slack | json",
    ),
    (
        "notify:\n  webhooks: [{url: 'h://x/SECRET'}]",
        "notify.webhooks[0].url",
        "is not http or https",
    ),
    ("log:\n  level: loud", "log.level", "is not one of debug | info | warning | error"),
    ("log:\n  format: xml", "log.format", "is not one of auto | json | text"),
    ("data_dir: 3", "data_dir", "is not a path"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), BAD, ids=[f"{k}:{f[:24]}" for _, k, f in BAD])
def test_bad_config(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env={})
    message = str(info.value)
    assert info.value.key == key, message
    assert fragment in message
    assert message.startswith(f"{key}: ")
    assert "\n" not in message
    assert "hunter2" not in message and "SECRET" not in message  # URLs may carry secrets


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "proxy:\n  listen: [127.0.0.1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value).startswith(f"{path}: not valid YAML: line ")
    assert "\n" not in str(info.value)


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path = write(tmp_path, "proxy:\n  listen: 127.0.0.1:1\nproxy:\n  intercept_tls: false\n")
    with pytest.raises(ConfigError, match=r"line 3, column 1: duplicate key 'proxy'"):
        load_settings(path, env={})


@pytest.mark.parametrize("text", ["- proxy\n- review\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="the top level must be a mapping") as info:
        load_settings(path, env={})
    assert info.value.key == str(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.yaml", env={})
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: config file not found"


def test_a_folder_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_settings(tmp_path, env={})


# -- value parsers: boundary rows ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5), ("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400),
        ("1.5s", 1.5), (30, 30), (0.25, 0.25), ("45", 45), ("2H", 7200),
    ],
)  # fmt: skip
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "k") == seconds


@pytest.mark.parametrize("text", ["", "s", "5 m", "5min", "m5", "-1s", "0", 0, ".inf", None, [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration(float("inf") if text == ".inf" else text, "k")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (1, 1), (10485760, 10485760), ("10MiB", 10485760), ("512KiB", 524288), ("1MB", 10**6),
        ("1 KB", 1000), ("2gib", 2 * 2**30), ("100B", 100), ("1024", 1024), ("1.5KiB", 1536),
    ],
)  # fmt: skip
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text, "k") == size


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:0", "127.0.0.1", 0), ("127.0.0.1:65535", "127.0.0.1", 65535),
        ("localhost:1", "localhost", 1), ("[::1]:8080", "::1", 8080), ("[::]:80", "::", 80),
        ("0.0.0.0:8080", "0.0.0.0", 8080), ("proxy.internal:3128", "proxy.internal", 3128),
    ],
)  # fmt: skip
def test_listen_addresses(text: str, host: str, port: int) -> None:
    assert parse_hostport(text, "k") == (host, port)


@pytest.mark.parametrize(
    "text", [":8080", "127.0.0.1:65536", "[::1]8080", "[::1]:", "host:", "h:1:2"]
)
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_hostport(text, "k")
