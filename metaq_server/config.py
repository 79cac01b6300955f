"""``server.ini`` → validated, immutable configuration objects (broker.md §2, protocol.md §9.21).

This module's job: read a MetaQ 1.4.4 ``server.ini`` (sections ``[system]``, ``[zookeeper]`` and
``[topic=<name>]``), check every value once, at start-up, with the messages of broker.md §2.6,
and hand the rest of the broker small frozen attrs objects — never a dict of settings. It also
answers the two per-topic questions the broker asks on every store creation: "is this topic
accepted?" (:meth:`BrokerConfig.topic_config`) and "with which storage settings?"
(:meth:`BrokerConfig.log_settings`), and re-reads topic sections on reload (§2.7).

What it must not do: open sockets (so ``hostName`` left blank stays ``None`` — the server
resolves the local address), connect to ZooKeeper, or touch the data files (it never creates,
lists or checks ``dataPath``; the store does). It reads the config file, and stats it for reload.

Value rules (§2.1):

* integers are arithmetic expressions (``1024*1024*1024``) of decimal integer literals,
  ``+ - * /``, unary minus and parentheses, evaluated by walking a whitelisted ``ast`` — never
  ``eval``. Division is exact; the result must be a whole number. Java truncates results to
  32 bits (64 for ``checkpointInterval``); here a value that does not fit is refused instead,
  naming what Java would have silently used.
* booleans are exactly ``true`` or ``false``, except the per-topic ``stat`` (anything other than
  ``true`` in any case is false, as in Java);
* strings are taken literally (no ``~`` expansion, relative paths stay relative);
* an empty value means "not set" (default, or inherited from ``[system]`` in a topic section).

Errors raise :class:`ConfigError` (a ``ValueError``); every problem found in one pass is
collected, ``str(error)`` is one message per line and ``error.messages`` the tuple.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import types
import zlib
from collections.abc import Iterable, Iterator, Mapping
from fractions import Fraction
from typing import Any

import attrs

from metaq_core.cron import CronError, CronExpression
from metaq_core.errors import InvalidTopicError, PolicyError
from metaq_core.ids import MAX_BROKER_ID
from metaq_core.naming import validate_topic
from metaq_core.partition import LogSettings
from metaq_core.retention import RetentionPolicy

__all__ = [
    "DEFAULT_SERVER_PORT",
    "SYSTEM_KEYS",
    "TOPIC_KEYS",
    "ZOOKEEPER_KEYS",
    "BrokerConfig",
    "ConfigError",
    "ConfigReload",
    "SystemConfig",
    "TopicConfig",
    "ZooKeeperConfig",
    "closest_key",
    "java_default_data_path",
    "parse_int_expression",
]

log = logging.getLogger("metaq.config")

DEFAULT_SERVER_PORT = 8123
DEFAULT_DELETE_POLICY = "delete,168"
DEFAULT_DELETE_WHEN = "0 0 6,18 * * ?"
DEFAULT_ZK_ROOT = "/meta"
TOPIC_SECTION_PREFIX = "topic="


def java_default_data_path() -> str:
    """``<user home>/meta``: Java's default ``dataPath``, and the default of :meth:`BrokerConfig.default`.

    Sharing it means a Java broker and ours started without configuration serve the same stores.
    """
    return os.path.join(os.path.expanduser("~"), "meta")


def _default_thread_count() -> int:
    return 10 * (os.cpu_count() or 1)


# ============================================================================================
# Errors
# ============================================================================================


class ConfigError(ValueError):
    """The configuration is refused. ``messages`` holds every problem found (at least one), in
    the order Java would meet them; ``message`` is the first; ``str()`` is all of them, one per
    line (so with a single problem ``str(error)`` is exactly that message).

    The messages: ``Invalid config key:<key>,do you mean '<closest>'?``, ``Blank value for <key>``,
    ``Empty topics list``, ``Null zookeeper config``, ``Empty zookeeper servers`` (Java's texts,
    broker.md §2.6); ``Null system config``; ``Invalid value for <key> in [<section>]: <reason>``
    (bad integer or boolean, a bound such as brokerId ``0..1023`` or flushTxLogAtCommit
    ``0..2``, an unknown delete policy, an invalid ``deleteWhen``); ``Invalid topic name in
    [topic=<name>]: <reason>``; ``Syntax error at line <n>: <reason>``; ``Config file not
    found: <path>``.
    """

    def __init__(self, messages: str | Iterable[str]) -> None:
        if isinstance(messages, str):
            messages = (messages,)
        self.messages: tuple[str, ...] = tuple(messages) or ("Invalid configuration",)
        super().__init__("\n".join(self.messages))

    @property
    def message(self) -> str:
        return self.messages[0]


# ============================================================================================
# Integer expressions
# ============================================================================================

_EXPRESSION_CHARS = re.compile(r"[0-9+\-*/()\s]+")
MAX_EXPRESSION_LENGTH = 256
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _evaluate(node: ast.AST) -> Fraction:
    # Whitelist walk: anything but an int literal, + - * /, and unary minus is refused.
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise ValueError("division by zero")
        return left / right
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.BinOp):
        raise ValueError(f"operator {type(node.op).__name__} is not allowed (only + - * /)")
    raise ValueError(f"{type(node).__name__} is not allowed (only integers, + - * / and parentheses)")


def parse_int_expression(text: str, *, bits: int = 32) -> int:
    """Evaluate an integer option: a decimal integer or a ``+ - * / ( )`` expression of them.

    Unary minus is allowed, ``/`` is exact division, and the result must be a whole number that
    fits a signed ``bits``-bit integer (32, or 64 for ``checkpointInterval``). Raises ValueError
    with the reason otherwise. Nothing is ever executed: the text is parsed with ``ast`` and only
    whitelisted nodes are evaluated; letters, ``.``, ``_``, ``**``, ``//``, calls and attribute
    access are refused.
    """
    source = text.strip()
    if not source:
        raise ValueError("empty value")
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
    if not _EXPRESSION_CHARS.fullmatch(source):
        raise ValueError(f"{source!r} is not an integer expression "
                         "(only decimal integers, + - * / and parentheses are allowed)")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError(f"{source!r} is not an integer expression") from None
    try:
        value = _evaluate(tree.body)
    except RecursionError:
        raise ValueError(f"{source!r} is nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"{source!r}: {exc}") from None
    if value.denominator != 1:
        raise ValueError(f"{source!r} = {value} is not a whole number")
    result = int(value)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if not low <= result <= high:
        wrapped = ((result - low) % (1 << bits)) + low
        raise ValueError(f"{source!r} = {result} does not fit in a {bits}-bit integer "
                         f"(Java would silently use {wrapped})")
    return result


# ============================================================================================
# Closest-key suggestion (§2.6: smallest Levenshtein distance)
# ============================================================================================


def _levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def closest_key(key: str, valid: Iterable[str]) -> str:
    """The valid key with the smallest (case-sensitive) Levenshtein distance to ``key``; on a tie
    the one listed first in ``valid`` (the order of the spec's tables)."""
    best, best_distance = "", None
    for candidate in valid:
        distance = _levenshtein(key, candidate)
        if best_distance is None or distance < best_distance:
            best, best_distance = candidate, distance
    return best


def _invalid_key(key: str, valid: Iterable[str]) -> str:
    return f"Invalid config key:{key},do you mean '{closest_key(key, valid)}'?"


# ============================================================================================
# INI syntax
# ============================================================================================


@attrs.frozen
class _Item:
    value: str
    line: int


@attrs.define
class _Section:
    name: str
    line: int
    items: dict[str, _Item] = attrs.Factory(dict)

    def value(self, key: str) -> str:
        item = self.items.get(key)
        return item.value if item is not None else ""


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _parse_ini(text: str, errors: list[str], warnings: list[str]) -> dict[str, _Section]:
    """Sections by name, in file order. A section named twice is one section (ini4j merges
    them); a key given twice keeps its last value (ini4j's ``get``), with a warning."""
    sections: dict[str, _Section] = {}
    current: _Section | None = None
    for number, raw in enumerate(_LINE_BREAK.split(text), 1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("["):
            if not line.endswith("]") or not line[1:-1].strip():
                errors.append(f"Syntax error at line {number}: bad section header {line!r}")
                current = None
                continue
            name = line[1:-1].strip()
            current = sections.get(name)
            if current is None:
                current = sections[name] = _Section(name, number)
            else:
                warnings.append(f"Section [{name}] appears again at line {number}; "
                                "its keys are merged into the first one")
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            errors.append(f"Syntax error at line {number}: expected key=value, got {line!r}")
            continue
        if current is None:
            errors.append(f"Syntax error at line {number}: {key!r} is outside of any section")
            continue
        if key in current.items:
            warnings.append(f"Key {key} is set again in [{current.name}] at line {number}; "
                            "the last value wins")
        current.items[key] = _Item(value, number)
    return sections


# ============================================================================================
# Option tables
# ============================================================================================

_INT, _LONG, _BOOL, _LENIENT_BOOL, _STR = "int", "long", "bool", "lenient bool", "string"


@attrs.frozen
class _Option:
    key: str                 # the name in server.ini
    attr: str                # the attribute of the config class
    kind: str
    required: bool = False
    low: int | None = None   # inclusive bounds checked after parsing (also for default())
    high: int | None = None


_SYSTEM_OPTIONS: tuple[_Option, ...] = (
    _Option("brokerId", "broker_id", _INT, required=True, low=0, high=MAX_BROKER_ID),
    _Option("hostName", "host_name", _STR),
    _Option("serverPort", "server_port", _INT, low=0, high=65535),
    _Option("numPartitions", "num_partitions", _INT, required=True, low=1),
    _Option("dataPath", "data_path", _STR),
    _Option("dataLogPath", "data_log_path", _STR),
    _Option("unflushThreshold", "unflush_threshold", _INT, required=True),
    _Option("unflushInterval", "unflush_interval", _INT, required=True, low=1),
    _Option("maxSegmentSize", "max_segment_size", _INT, required=True, low=1),
    # 21 = a 20-byte record header and one byte: a smaller cap could never deliver a record.
    _Option("maxTransferSize", "max_transfer_size", _INT, required=True, low=21),
    _Option("getProcessThreadCount", "get_process_thread_count", _INT, low=1),
    _Option("putProcessThreadCount", "put_process_thread_count", _INT, low=1),
    _Option("deletePolicy", "delete_policy", _STR),
    _Option("deleteWhen", "delete_when", _STR),
    _Option("quartzThreadCount", "quartz_thread_count", _INT, low=1),
    _Option("maxCheckpoints", "max_checkpoints", _INT, low=1),
    _Option("checkpointInterval", "checkpoint_interval", _LONG, low=1),
    _Option("maxTxTimeoutTimerCapacity", "max_tx_timeout_timer_capacity", _INT, low=1),
    _Option("maxTxTimeoutInSeconds", "max_tx_timeout_in_seconds", _INT, low=1),
    _Option("flushTxLogAtCommit", "flush_tx_log_at_commit", _INT, low=0, high=2),
    _Option("acceptPublish", "accept_publish", _BOOL),
    _Option("acceptSubscribe", "accept_subscribe", _BOOL),
    _Option("stat", "stat", _BOOL),
    _Option("updateConsumerOffsets", "update_consumer_offsets", _BOOL),
    _Option("loadMessageStoresInParallel", "load_message_stores_in_parallel", _BOOL),
    _Option("dashboardHttpPort", "dashboard_http_port", _INT, low=0, high=65535),
    _Option("appClassPath", "app_class_path", _STR),
)

_ZOOKEEPER_OPTIONS: tuple[_Option, ...] = (
    _Option("zk.zkConnect", "zk_connect", _STR),
    _Option("zk.zkSessionTimeoutMs", "zk_session_timeout_ms", _INT, low=1),
    _Option("zk.zkConnectionTimeoutMs", "zk_connection_timeout_ms", _INT, low=1),
    _Option("zk.zkSyncTimeMs", "zk_sync_time_ms", _INT, low=0),
    _Option("zk.zkEnable", "zk_enable", _BOOL),
    _Option("zk.zkRoot", "zk_root", _STR),
)

_TOPIC_OPTIONS: tuple[_Option, ...] = (
    _Option("numPartitions", "num_partitions", _INT, low=1),
    _Option("stat", "stat", _LENIENT_BOOL),
    _Option("deletePolicy", "delete_policy", _STR),
    _Option("deleteWhen", "delete_when", _STR),
    _Option("dataPath", "data_path", _STR),
    _Option("unflushInterval", "unflush_interval", _INT, low=1),
    _Option("unflushThreshold", "unflush_threshold", _INT),
    _Option("acceptPublish", "accept_publish", _BOOL),
    _Option("acceptSubscribe", "accept_subscribe", _BOOL),
)

#: Accepted in ``[system]`` and ``[zookeeper]`` and ignored with a warning (Taobao's Diamond).
_DIAMOND_KEYS = ("diamondZKDataId", "diamondZKGroup")
#: ``[topic=…]`` key accepted and ignored; ``group.<name>`` keys are 1.4.6 consumer filters.
_TOPIC_IGNORED_KEY = "topic"
_GROUP_PREFIX = "group."

#: ini key → attribute name, in the order of broker.md's tables.
SYSTEM_KEYS: Mapping[str, str] = types.MappingProxyType({o.key: o.attr for o in _SYSTEM_OPTIONS})
ZOOKEEPER_KEYS: Mapping[str, str] = types.MappingProxyType({o.key: o.attr for o in _ZOOKEEPER_OPTIONS})
TOPIC_KEYS: Mapping[str, str] = types.MappingProxyType({o.key: o.attr for o in _TOPIC_OPTIONS})


def _parse_value(option: _Option, value: str, where: str) -> Any:
    """The typed value of a non-blank ``value``; ValueError carries the complete message."""
    try:
        if option.kind == _INT:
            return parse_int_expression(value, bits=32)
        if option.kind == _LONG:
            return parse_int_expression(value, bits=64)
    except ValueError as exc:
        raise ValueError(f"Invalid value for {option.key} in [{where}]: {exc}") from None
    if option.kind == _BOOL:
        if value not in ("true", "false"):
            raise ValueError(f"Invalid value for {option.key} in [{where}]: "
                             f"{value!r} is not true or false")
        return value == "true"
    if option.kind == _LENIENT_BOOL:
        return value.lower() == "true"
    return value


def _read_section(section: _Section, options: Iterable[_Option], where: str,
                  errors: list[str]) -> dict[str, Any]:
    """Attribute → typed value for every non-blank option of ``section`` (blank = not set)."""
    values: dict[str, Any] = {}
    for option in options:
        value = section.value(option.key)
        if not value:
            if option.required:
                errors.append(f"Blank value for {option.key}")
            continue
        try:
            values[option.attr] = _parse_value(option, value, where)
        except ValueError as exc:
            errors.append(str(exc))
    return values


def _check_keys(section: _Section, valid: Iterable[str], suggestions: tuple[str, ...],
                errors: list[str]) -> None:
    valid = set(valid)
    for key in section.items:
        if key not in valid:
            errors.append(_invalid_key(key, suggestions))


def _check_values(obj: Any, options: Iterable[_Option], where: str, errors: list[str]) -> None:
    """Range, ``deletePolicy`` and ``deleteWhen`` checks on a built object (§2.6 item 4)."""
    for option in options:
        value = getattr(obj, option.attr)
        if option.kind in (_INT, _LONG):
            if option.low is not None and option.high is not None:
                if not option.low <= value <= option.high:
                    errors.append(f"Invalid value for {option.key} in [{where}]: "
                                  f"{value} is outside {option.low}..{option.high}")
            elif option.low is not None and value < option.low:
                errors.append(f"Invalid value for {option.key} in [{where}]: "
                              f"{value} is less than {option.low}")
        elif option.attr == "delete_policy":
            try:
                RetentionPolicy.parse(value)
            except PolicyError as exc:
                errors.append(f"Invalid value for deletePolicy in [{where}]: {exc}")
        elif option.attr == "delete_when":
            try:
                CronExpression.parse(value)
            except CronError as exc:
                errors.append(f"Invalid value for deleteWhen in [{where}]: {exc}")


def _normalise_zk_root(root: str) -> str:
    """Leading ``/`` added, trailing ``/`` removed (Java). ``/`` alone becomes ``""``: the tree
    then sits at the ZooKeeper root and ``zk_root + "/brokers"`` is still a valid path."""
    root = root.rstrip("/")
    if root and not root.startswith("/"):
        root = "/" + root
    return root


def _ini_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ============================================================================================
# Configuration classes
# ============================================================================================


class _RetentionSettings:
    """The parsed forms of ``deletePolicy`` and ``deleteWhen``, shared by [system] and topics."""

    delete_policy: str
    delete_when: str

    @property
    def retention_policy(self) -> RetentionPolicy:
        return RetentionPolicy.parse(self.delete_policy)

    @property
    def delete_when_cron(self) -> CronExpression:
        return CronExpression.parse(self.delete_when)


@attrs.frozen
class SystemConfig(_RetentionSettings):
    """The ``[system]`` section (broker.md §2.2). Read at start-up only: a reload ignores it.

    ``SYSTEM_KEYS`` maps each ini name to its attribute. ``host_name=None`` means "the local
    address", which the server resolves (this module opens no sockets). Defaults that depend on
    the machine (``data_path`` = ``~/meta``, thread counts = 10 × CPUs) are computed when built.
    """

    broker_id: int = 0
    host_name: str | None = None
    server_port: int = DEFAULT_SERVER_PORT
    num_partitions: int = 1
    data_path: str = attrs.field(factory=java_default_data_path)
    #: Root of the transaction journal; follows ``data_path`` unless set explicitly.
    data_log_path: str = attrs.field(
        default=attrs.Factory(lambda self: self.data_path, takes_self=True))
    unflush_threshold: int = 1000
    unflush_interval: int = 10_000
    max_segment_size: int = 1024 * 1024 * 1024
    max_transfer_size: int = 1024 * 1024
    get_process_thread_count: int = attrs.field(factory=_default_thread_count)
    put_process_thread_count: int = attrs.field(factory=_default_thread_count)
    delete_policy: str = DEFAULT_DELETE_POLICY
    delete_when: str = DEFAULT_DELETE_WHEN
    quartz_thread_count: int = 5
    max_checkpoints: int = 3
    checkpoint_interval: int = 3_600_000
    max_tx_timeout_timer_capacity: int = 30_000
    max_tx_timeout_in_seconds: int = 60
    flush_tx_log_at_commit: int = 1
    accept_publish: bool = True
    accept_subscribe: bool = True
    stat: bool = False
    update_consumer_offsets: bool = False
    load_message_stores_in_parallel: bool = False
    dashboard_http_port: int = 8120
    app_class_path: str | None = None

    def as_ini(self) -> dict[str, str]:
        """ini key → value as it would be written in ``server.ini``."""
        return {o.key: _ini_text(getattr(self, o.attr)) for o in _SYSTEM_OPTIONS}


@attrs.frozen
class ZooKeeperConfig:
    """The ``[zookeeper]`` section (broker.md §2.3). ``zk_root`` is normalised: it starts with
    ``/`` and does not end with one (``/`` alone gives ``""``, the ZooKeeper root)."""

    zk_connect: str | None = None
    zk_session_timeout_ms: int = 30_000
    zk_connection_timeout_ms: int = 30_000
    zk_sync_time_ms: int = 5_000
    zk_enable: bool = True
    zk_root: str = attrs.field(default=DEFAULT_ZK_ROOT, converter=_normalise_zk_root)

    def as_ini(self) -> dict[str, str]:
        return {o.key: _ini_text(getattr(self, o.attr)) for o in _ZOOKEEPER_OPTIONS}


@attrs.frozen
class TopicConfig(_RetentionSettings):
    """Settings of one topic (broker.md §2.4): a ``[topic=…]`` section with blanks inherited from
    ``[system]`` (a snapshot taken when the file was parsed).

    ``topic`` is the topic asked about; ``section`` the name of the section the keys came from:
    equal to ``topic`` for an exact section, the pattern (e.g. ``orders-*``) for a topic matched
    by a wildcard section, ``None`` for a topic with no section at all (``[system]`` defaults).
    In :attr:`BrokerConfig.topics` both are the section name.
    """

    topic: str
    section: str | None
    num_partitions: int
    stat: bool
    delete_policy: str
    delete_when: str
    data_path: str
    unflush_interval: int
    unflush_threshold: int
    accept_publish: bool
    accept_subscribe: bool
    #: ``group.<name>=<class>`` keys ([1.4.6] server-side consumer filters): kept, not used.
    group_filters: tuple[tuple[str, str], ...] = ()
    #: Attributes the section set itself; the others are inherited from ``[system]``.
    explicit: frozenset[str] = attrs.field(default=frozenset(), eq=False, repr=False)

    @property
    def is_pattern(self) -> bool:
        """Whether ``section`` is a wildcard pattern (contains ``*``)."""
        return self.section is not None and "*" in self.section

    @classmethod
    def from_system(cls, topic: str, system: SystemConfig, section: str | None = None,
                    **overrides: Any) -> TopicConfig:
        """A topic config inheriting from ``system`` every per-topic key not in ``overrides``."""
        values: dict[str, Any] = {o.attr: getattr(system, o.attr) for o in _TOPIC_OPTIONS}
        values.update(overrides)
        explicit = frozenset(overrides) & frozenset(TOPIC_KEYS.values())
        return cls(topic=topic, section=section, explicit=explicit, **values)

    def inherit(self, system: SystemConfig) -> TopicConfig:
        """This config with its inherited (not explicitly set) keys taken from ``system``."""
        return attrs.evolve(self, **{o.attr: getattr(system, o.attr) for o in _TOPIC_OPTIONS
                                     if o.attr not in self.explicit})

    def as_ini(self) -> dict[str, str]:
        values = {o.key: _ini_text(getattr(self, o.attr)) for o in _TOPIC_OPTIONS}
        values.update(self.group_filters)
        return values


def _specificity(pattern: str, index: int) -> tuple[int, int, int]:
    # More literal characters first, then fewer stars, then the earlier section in the file.
    return (-len(pattern.replace("*", "")), pattern.count("*"), index)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """``*`` matches any sequence (also empty); every other character is literal (§1.10)."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def _build_topics(sections: Mapping[str, _Section], system: SystemConfig,
                  errors: list[str], warnings: list[str]) -> dict[str, TopicConfig]:
    topics: dict[str, TopicConfig] = {}
    suggestions = tuple(o.key for o in _TOPIC_OPTIONS)
    for name, section in sections.items():
        if not name.startswith(TOPIC_SECTION_PREFIX):
            continue
        topic = name[len(TOPIC_SECTION_PREFIX):].strip()
        try:
            validate_topic(topic)
        except InvalidTopicError as exc:
            errors.append(f"Invalid topic name in [{name}]: {exc}")
            continue
        filters: list[tuple[str, str]] = []
        for key, item in section.items.items():
            if key in TOPIC_KEYS or key == _TOPIC_IGNORED_KEY:
                continue
            if key.startswith(_GROUP_PREFIX) and len(key) > len(_GROUP_PREFIX):
                filters.append((key, item.value))
                warnings.append(f"[{name}] {key}: server-side consumer filters are not "
                                "supported; the key is ignored")
                continue
            errors.append(_invalid_key(key, suggestions))
        values = _read_section(section, _TOPIC_OPTIONS, name, errors)
        config = TopicConfig.from_system(topic, system, section=topic,
                                         group_filters=tuple(filters), **values)
        # Inherited values were checked (and reported) in [system]: check only this section's.
        _check_values(config, [o for o in _TOPIC_OPTIONS if o.attr in values], name, errors)
        if topic in topics:
            warnings.append(f"Topic {topic} is configured again in [{name}]; that section wins")
        topics[topic] = config
    return topics


def _static_sections_diff(old: Mapping[str, _Section], new: Mapping[str, _Section]) -> tuple[str, ...]:
    """``[system] key`` / ``[zookeeper] key`` entries whose raw value differs between two files."""
    changed = []
    for name in ("system", "zookeeper"):
        before = old.get(name, _Section(name, 0))
        after = new.get(name, _Section(name, 0))
        for key in dict.fromkeys([*before.items, *after.items]):
            if before.value(key) != after.value(key):
                changed.append(f"[{name}] {key}")
    return tuple(changed)


def _warn_unknown_sections(sections: Mapping[str, _Section], warnings: list[str]) -> None:
    # Java ignores them silently; a typo such as [topic = x] would drop a topic unnoticed.
    for name in sections:
        if name not in ("system", "zookeeper") and not name.startswith(TOPIC_SECTION_PREFIX):
            warnings.append(f"Unknown section [{name}] is ignored")


def _decode(data: bytes) -> tuple[str, str]:
    """Text and encoding: UTF-8 (a BOM is dropped), else GBK (§2.1's recommendation)."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gbk"), "gbk"
    except UnicodeDecodeError:
        raise ConfigError("The config file is neither UTF-8 nor GBK text") from None


def _read_file(path: str) -> tuple[int, bytes]:
    try:
        mtime = os.stat(path).st_mtime_ns   # before reading: a later write triggers a reload
        with open(path, "rb") as handle:
            return mtime, handle.read()
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc.strerror or exc}") from None


def _render_ini(system: SystemConfig, zookeeper: ZooKeeperConfig,
                topics: Mapping[str, TopicConfig], header: str) -> str:
    lines = [f"; {line}" if line else ";" for line in header.splitlines()]
    lines += ["", "[system]"]
    lines += [f"{key}={value}" for key, value in system.as_ini().items()]
    lines += ["", "[zookeeper]"]
    lines += [f"{key}={value}" for key, value in zookeeper.as_ini().items()]
    for name, topic in topics.items():
        lines += ["", f"[{TOPIC_SECTION_PREFIX}{name}]"]
        lines += [f"{key}={value}" for key, value in topic.as_ini().items()]
    return "\n".join(lines) + "\n"


@attrs.frozen
class BrokerConfig:
    """A whole, validated broker configuration. Immutable: a reload returns a new one.

    ``topics`` maps each ``[topic=…]`` section name (a topic, or a pattern with ``*``) to its
    config, in file order (Java reports the names sorted: :meth:`topic_names`).
    ``config_checksum`` is the unsigned CRC-32 of the file's bytes (of ``text`` encoded as UTF-8
    when built from a ``str``). ``retired_topics`` are section names that earlier reloads removed:
    the accepted set only grows during a broker's life (§1.10), so these stay accepted, with
    ``[system]`` settings, as in Java.
    """

    system: SystemConfig
    zookeeper: ZooKeeperConfig
    topics: Mapping[str, TopicConfig] = attrs.field(converter=lambda t: types.MappingProxyType(dict(t)))
    config_checksum: int
    path: str | None = None
    text: str = attrs.field(default="", repr=False)
    encoding: str = "utf-8"
    #: ``st_mtime_ns`` of the file when it was read (None if not read from a file).
    mtime_ns: int | None = None
    warnings: tuple[str, ...] = ()
    retired_topics: tuple[str, ...] = ()

    _exact: dict[str, TopicConfig] = attrs.field(init=False, eq=False, repr=False)
    _patterns: tuple[tuple[re.Pattern[str], TopicConfig], ...] = attrs.field(
        init=False, eq=False, repr=False)
    _retired: tuple[re.Pattern[str], ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        exact = {name: tc for name, tc in self.topics.items() if "*" not in name}
        patterns = sorted(
            ((name, index, tc) for index, (name, tc) in enumerate(self.topics.items()) if "*" in name),
            key=lambda entry: _specificity(entry[0], entry[1]))
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_patterns",
                           tuple((_pattern_regex(name), tc) for name, _, tc in patterns))
        object.__setattr__(self, "_retired",
                           tuple(_pattern_regex(name) for name in self.retired_topics))

    # ------------------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BrokerConfig:
        """Read and validate ``path`` (§2.1–§2.6). Raises ConfigError, also for a missing file."""
        path = os.fspath(path)
        mtime, data = _read_file(path)
        return cls._from_bytes(data, path=path, mtime_ns=mtime)

    @classmethod
    def from_text(cls, text: str | bytes, path: str | os.PathLike[str] | None = None) -> BrokerConfig:
        """Validate configuration text. ``bytes`` are decoded like a file (UTF-8, else GBK) and
        checksummed as they are; a ``str`` is checksummed as its UTF-8 encoding."""
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        return cls._from_bytes(data, path=None if path is None else os.fspath(path), mtime_ns=None)

    @classmethod
    def _from_bytes(cls, data: bytes, *, path: str | None, mtime_ns: int | None) -> BrokerConfig:
        text, encoding = _decode(data)
        errors: list[str] = []
        warnings: list[str] = []
        sections = _parse_ini(text, errors, warnings)
        if errors:
            raise ConfigError(errors)

        _warn_unknown_sections(sections, warnings)
        system_section = sections.get("system")
        if system_section is None:
            errors.append("Null system config")
            system = SystemConfig()
        else:
            system = cls._build_system(system_section, errors, warnings)

        zk_section = sections.get("zookeeper")
        zookeeper = ZooKeeperConfig()
        if zk_section is not None:
            zookeeper = cls._build_zookeeper(zk_section, errors, warnings)

        topics = _build_topics(sections, system, errors, warnings)
        if not any(name.startswith(TOPIC_SECTION_PREFIX) for name in sections):
            errors.append("Empty topics list")
        if zk_section is None:
            errors.append("Null zookeeper config")
        elif not zookeeper.zk_connect:
            errors.append("Empty zookeeper servers")
        if errors:
            raise ConfigError(errors)
        for warning in warnings:
            log.warning("%s: %s", path or "config", warning)
        return cls(system=system, zookeeper=zookeeper, topics=topics,
                   config_checksum=zlib.crc32(data), path=path, text=text, encoding=encoding,
                   mtime_ns=mtime_ns, warnings=tuple(warnings))

    @staticmethod
    def _build_system(section: _Section, errors: list[str], warnings: list[str]) -> SystemConfig:
        suggestions = tuple(SYSTEM_KEYS)
        _check_keys(section, (*SYSTEM_KEYS, *_DIAMOND_KEYS), suggestions, errors)
        for key in _DIAMOND_KEYS:
            if key in section.items:
                warnings.append(f"[system] {key} (Diamond) is accepted and has no effect")
        values = _read_section(section, _SYSTEM_OPTIONS, "system", errors)
        system = SystemConfig(**values)
        _check_values(system, _SYSTEM_OPTIONS, "system", errors)
        return system

    @staticmethod
    def _build_zookeeper(section: _Section, errors: list[str], warnings: list[str]) -> ZooKeeperConfig:
        suggestions = (*ZOOKEEPER_KEYS, *SYSTEM_KEYS)
        _check_keys(section, (*ZOOKEEPER_KEYS, *_DIAMOND_KEYS, *SYSTEM_KEYS), suggestions, errors)
        for key in section.items:
            if key in _DIAMOND_KEYS:
                warnings.append(f"[zookeeper] {key} (Diamond) is accepted and has no effect")
            elif key in SYSTEM_KEYS:
                warnings.append(f"[zookeeper] {key} is a [system] key; it is ignored here")
        values = _read_section(section, _ZOOKEEPER_OPTIONS, "zookeeper", errors)
        zookeeper = ZooKeeperConfig(**values)
        _check_values(zookeeper, _ZOOKEEPER_OPTIONS, "zookeeper", errors)
        return zookeeper

    @classmethod
    def default(cls, data_dir: str | os.PathLike[str] | None = None, *,
                port: int = DEFAULT_SERVER_PORT, host: str | None = None) -> BrokerConfig:
        """The zero-configuration broker of ``metaq-trio serve``.

        * no ZooKeeper (``zk.zkEnable=false``, and no ``zk.zkConnect`` needed: unlike a file,
          which must name servers even when disabled, §2.6);
        * stores under ``data_dir`` (default :func:`java_default_data_path`, ``~/meta``, where a
          Java broker without ``dataPath`` keeps them too); port ``port`` (8123); ``host`` as
          ``hostName`` (None = the local address, resolved by the server);
        * every topic accepted, through a single ``[topic=*]`` section;
        * ``numPartitions=1``: Java's default and the sample's. One partition keeps a topic
          totally ordered on a single broker, and gives each topic one group-commit queue, so
          concurrent producers share fsyncs instead of splitting them over partitions (group
          commit's throughput comes from batch size). Consumer parallelism needs more, and is
          one ``numPartitions`` line in a ``server.ini`` away;
        * group commit (``unflushThreshold=0``, the shipped ``server.ini``'s choice and
          protocol.md §9.20): every put is fsynced before it is acknowledged;
        * ``updateConsumerOffsets=false`` (the production setting).

        ``text`` is an equivalent ``server.ini`` rendering (for ``stats config``) and
        ``config_checksum`` its CRC-32; it has ``zk.zkConnect`` blank, so it documents this
        configuration but does not load as a file.
        """
        data_path = java_default_data_path() if data_dir is None else os.fspath(data_dir)
        system = SystemConfig(broker_id=0, host_name=host, server_port=port, num_partitions=1,
                              data_path=data_path, unflush_threshold=0,
                              update_consumer_offsets=False)
        zookeeper = ZooKeeperConfig(zk_connect=None, zk_enable=False)
        errors: list[str] = []
        _check_values(system, _SYSTEM_OPTIONS, "system", errors)
        if errors:
            raise ConfigError(errors)
        topics = {"*": TopicConfig.from_system("*", system, section="*")}
        text = _render_ini(system, zookeeper, topics,
                           "metaq-trio serve: built-in configuration (no ZooKeeper, every topic)")
        return cls(system=system, zookeeper=zookeeper, topics=topics,
                   config_checksum=zlib.crc32(text.encode("utf-8")), text=text)

    def with_system(self, **changes: Any) -> BrokerConfig:
        """This config with ``[system]`` attributes replaced (command-line overrides, tests),
        e.g. ``config.with_system(data_path=d, server_port=0)``.

        Topic values inherited from ``[system]`` follow the new values (values a section sets
        itself do not); ``data_log_path`` follows ``data_path`` when the two were equal. The
        result is validated like a file (ConfigError). ``text`` and ``config_checksum`` still
        describe the file: overrides are not part of it. Reloads keep the overrides, since
        topic sections are rebuilt over the running ``[system]``.
        """
        current = self.system
        if ("data_path" in changes and "data_log_path" not in changes
                and current.data_log_path == current.data_path):
            changes["data_log_path"] = changes["data_path"]
        system = attrs.evolve(current, **changes)
        errors: list[str] = []
        _check_values(system, _SYSTEM_OPTIONS, "system", errors)
        if errors:
            raise ConfigError(errors)
        topics = {name: config.inherit(system) for name, config in self.topics.items()}
        return attrs.evolve(self, system=system, topics=topics)

    # ------------------------------------------------------------------------------ reload

    def reload(self, path: str | os.PathLike[str] | None = None, *, force: bool = False) -> ConfigReload:
        """Re-read the file and apply its topic sections only (§2.7). Returns a ConfigReload.

        * If the file's modification time and checksum are both unchanged (and not ``force``),
          nothing is done: ``result.reloaded`` is False and ``result.config is self``.
        * Topic sections are rebuilt over the **running** ``[system]`` values and validated as
          at start-up; a problem raises ConfigError and ``self`` stays the config in force.
        * ``[system]`` / ``[zookeeper]`` edits are not applied (they need a restart); they are
          listed in ``result.ignored_changes`` and logged.
        * Sections removed from the file are not forgotten: their names go to
          ``retired_topics``, so topics they accepted stay accepted (with ``[system]``
          settings). Patterns only grow (§1.10) as long as the caller always reloads **the
          config in force** and replaces it with ``result.config`` — never builds a fresh one
          with :meth:`load` during the broker's life.
        """
        path = self.path if path is None else os.fspath(path)
        if path is None:
            raise ConfigError("No config file to reload")
        mtime, data = _read_file(path)
        checksum = zlib.crc32(data)
        if (not force and path == self.path and mtime == self.mtime_ns
                and checksum == self.config_checksum):
            return ConfigReload(old=self, config=self, reloaded=False)
        text, encoding = _decode(data)
        errors: list[str] = []
        warnings: list[str] = []
        sections = _parse_ini(text, errors, warnings)
        if errors:
            raise ConfigError(errors)
        topics = _build_topics(sections, self.system, errors, warnings)
        if not any(name.startswith(TOPIC_SECTION_PREFIX) for name in sections):
            errors.append("Empty topics list")
        if errors:
            raise ConfigError(errors)

        _warn_unknown_sections(sections, warnings)
        ignored = _static_sections_diff(_parse_ini(self.text, [], []), sections)
        for change in ignored:
            warnings.append(f"{change} changed in the file; restart the broker to apply it")
        removed = tuple(name for name in self.topics if name not in topics)
        changed = tuple(name for name, tc in topics.items() if self.topics.get(name) != tc)
        retired = tuple(dict.fromkeys(
            name for name in (*self.retired_topics, *removed) if name not in topics))
        for warning in warnings:
            log.warning("%s: %s", path, warning)
        new = attrs.evolve(self, topics=topics, config_checksum=checksum, path=path, text=text,
                           encoding=encoding, mtime_ns=mtime, warnings=tuple(warnings),
                           retired_topics=retired)
        return ConfigReload(old=self, config=new, reloaded=True, changed_sections=changed,
                            removed_sections=removed, ignored_changes=ignored)

    # ------------------------------------------------------------------------------ topics

    def topic_config(self, topic: str) -> TopicConfig | None:
        """The config of ``topic`` if this broker accepts it, else None.

        Order (protocol.md §9.21): an exact ``[topic=<topic>]`` section; else the most specific
        matching wildcard section — ``*`` matches any sequence, every other character is
        literal; most specific = most characters besides the stars, then fewer stars, then the
        section that comes first in the file — whose keys apply (unlike Java, which would use
        ``[system]`` values); else a section retired by a reload (``[system]`` values); else
        None: a put must answer 500 ``The server do not accept topic <topic>``.
        """
        config = self._exact.get(topic)
        if config is not None:
            return config
        for regex, config in self._patterns:
            if regex.fullmatch(topic):
                return attrs.evolve(config, topic=topic)
        if any(regex.fullmatch(topic) for regex in self._retired):
            return self.default_topic_config(topic)
        return None

    def accepts(self, topic: str) -> bool:
        """Whether a put may create stores of ``topic`` (§1.10)."""
        return self.topic_config(topic) is not None

    def default_topic_config(self, topic: str) -> TopicConfig:
        """``[system]`` settings for a topic without a section (e.g. one found only on disk)."""
        return TopicConfig.from_system(topic, self.system)

    def log_settings(self, topic: str) -> LogSettings:
        """Storage settings of ``topic`` for ``metaq_core.LogStore(settings_for=...)``.

        A topic that is not accepted (stores found on disk, §1.2) gets ``[system]`` settings:
        its stores stay readable; refusing puts is :meth:`topic_config`'s job.
        """
        config = self.topic_config(topic) or self.default_topic_config(topic)
        return LogSettings(
            num_partitions=config.num_partitions,
            max_segment_size=self.system.max_segment_size,
            max_transfer_size=self.system.max_transfer_size,
            unflush_threshold=config.unflush_threshold,
            unflush_interval=config.unflush_interval,
            data_path=config.data_path,
        )

    def topic_setting(self, topic: str, name: str) -> Any:
        """One per-topic value of ``topic`` (an attribute name such as ``delete_when``, or its
        ini key ``deleteWhen``), from :meth:`topic_config`, else ``[system]`` settings."""
        config = self.topic_config(topic) or self.default_topic_config(topic)
        return getattr(config, TOPIC_KEYS.get(name, name))

    def topic_names(self) -> list[str]:
        """Section names sorted alphabetically, as Java lists its configured topics."""
        return sorted(self.topics)

    def data_paths(self) -> tuple[str, ...]:
        """The directories scanned for stores at start-up (§1.2): ``[system] dataPath`` first,
        then every different topic ``dataPath``, in file order."""
        paths = dict.fromkeys([self.system.data_path, *(t.data_path for t in self.topics.values())])
        return tuple(paths)


@attrs.frozen
class ConfigReload:
    """What a :meth:`BrokerConfig.reload` did. Replace the config in force with ``config``.

    ``changed_sections``: topic sections that are new or whose values differ (file order);
    ``removed_sections``: sections no longer in the file (still accepted, see
    ``BrokerConfig.retired_topics``; Java does not unregister them); ``ignored_changes``:
    ``[system]``/``[zookeeper]`` keys edited in the file, which need a restart.

    It also unpacks as ``new_config, changed_sections = config.reload(path)``.
    """

    old: BrokerConfig
    config: BrokerConfig
    reloaded: bool
    changed_sections: tuple[str, ...] = ()
    removed_sections: tuple[str, ...] = ()
    ignored_changes: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        return iter((self.config, self.changed_sections))

    @property
    def topics_changed(self) -> bool:
        """§2.7 step 3: whether the set of topic configurations changed."""
        return bool(self.changed_sections or self.removed_sections)

    @property
    def checksum_changed(self) -> bool:
        return self.old.config_checksum != self.config.config_checksum

    def topic_changed(self, topic: str) -> bool:
        """Whether the effective config of a concrete ``topic`` changed (acceptance included):
        the question to ask for each topic with stores, since one edited pattern section can
        change many topics. Those are the ones to re-register in ZooKeeper (§2.7 3d)."""
        return self.old.topic_config(topic) != self.config.topic_config(topic)
