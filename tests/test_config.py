"""metaq_server.config: server.ini parsing and validation (broker.md §2), topic acceptance with
wildcard sections (§1.10, protocol.md §9.21), storage settings per topic, and reload (§2.7)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from metaq_core import LogSettings, RetentionPolicy
from metaq_server.config import (
    SYSTEM_KEYS,
    TOPIC_KEYS,
    ZOOKEEPER_KEYS,
    BrokerConfig,
    ConfigError,
    SystemConfig,
    TopicConfig,
    closest_key,
    java_default_data_path,
    parse_int_expression,
)

DATA = Path(__file__).parent / "data" / "config"

SYSTEM = """\
[system]
brokerId=1
numPartitions=4
unflushThreshold=0
unflushInterval=10000
maxSegmentSize=1073741824
maxTransferSize=1048576
"""
ZOOKEEPER = """\
[zookeeper]
zk.zkConnect=localhost:2181
"""
TOPIC = """\
[topic=test]
"""


def make(system_extra: str = "", zookeeper_extra: str = "", topics: str = TOPIC) -> str:
    return f"{SYSTEM}{system_extra}\n{ZOOKEEPER}{zookeeper_extra}\n{topics}"


def load(text: str) -> BrokerConfig:
    return BrokerConfig.from_text(text)


def refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        BrokerConfig.from_text(text)
    return info.value


def only_message(text: str) -> str:
    error = refused(text)
    assert len(error.messages) == 1, error.messages
    assert str(error) == error.message
    return error.message


# ------------------------------------------------------------------------------ sample files


def test_sample_config_has_the_documented_values():
    config = BrokerConfig.load(DATA / "sample.server.ini")
    system = config.system
    assert system.broker_id == 0
    assert system.host_name is None                      # empty: the server resolves it
    assert system.num_partitions == 1
    assert system.server_port == 8123
    assert system.dashboard_http_port == 8120
    assert system.data_path == java_default_data_path() == os.path.expanduser("~/meta")
    assert system.data_log_path == system.data_path
    assert system.load_message_stores_in_parallel is False
    assert system.unflush_threshold == 1000
    assert system.unflush_interval == 10000
    assert system.max_segment_size == 1073741824
    assert system.max_transfer_size == 1048576
    assert system.get_process_thread_count == 80
    assert system.put_process_thread_count == 80
    assert system.delete_policy == "delete,168"
    assert system.retention_policy == RetentionPolicy("delete", 168 * 3600, False, "delete,168")
    assert system.delete_when == "0 0 6,18 * * ?"
    assert str(system.delete_when_cron) == "0 0 6,18 * * ?"
    assert system.max_checkpoints == 3
    assert system.checkpoint_interval == 3600000
    assert system.max_tx_timeout_timer_capacity == 30000
    assert system.max_tx_timeout_in_seconds == 60
    assert system.flush_tx_log_at_commit == 1
    assert system.accept_publish is True
    assert system.accept_subscribe is True
    assert system.update_consumer_offsets is False
    assert system.stat is True
    zk = config.zookeeper
    assert zk.zk_enable is True
    assert zk.zk_connect == "localhost:2181"
    assert zk.zk_session_timeout_ms == 30000
    assert zk.zk_connection_timeout_ms == 30000
    assert zk.zk_sync_time_ms == 5000
    assert zk.zk_root == "/meta"
    assert list(config.topics) == ["test"]
    test = config.topic_config("test")
    assert test == config.topics["test"]
    assert (test.topic, test.section, test.stat, test.num_partitions) == ("test", "test", True, 10)
    assert test.delete_policy == "delete,168"            # blank: inherited
    assert test.unflush_interval == 10000
    assert test.unflush_threshold == 1000
    assert test.delete_when == "0 0 6,18 * * ?"
    assert config.path == str(DATA / "sample.server.ini")
    assert config.warnings == ()
    assert config.encoding == "utf-8"


def test_shipped_minimal_server_ini():
    config = BrokerConfig.load(DATA / "server.ini")
    assert config.system.unflush_threshold == 0
    assert config.system.stat is True
    assert config.system.update_consumer_offsets is True
    assert config.system.get_process_thread_count == 10 * (os.cpu_count() or 1)
    assert list(config.topics) == ["test", "meta-test"]  # file order
    assert config.topic_names() == ["meta-test", "test"]  # Java's sorted list
    for name in ("test", "meta-test"):
        topic = config.topic_config(name)
        assert topic.num_partitions == 1 and topic.stat is True and topic.unflush_threshold == 0
    assert config.log_settings("meta-test").group_commit


def test_checksum_is_the_crc32_of_the_file_bytes():
    path = DATA / "sample.server.ini"
    config = BrokerConfig.load(path)
    assert config.config_checksum == zlib.crc32(path.read_bytes())
    assert config.text == path.read_text("utf-8")
    assert BrokerConfig.from_text(config.text).config_checksum == config.config_checksum
    crlf = path.read_bytes().replace(b"\n", b"\r\n")
    assert BrokerConfig.from_text(crlf).config_checksum == zlib.crc32(crlf)


def test_gbk_file_is_read_when_it_is_not_utf8():
    path = DATA / "gbk.server.ini"
    data = path.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    config = BrokerConfig.load(path)
    assert config.encoding == "gbk"
    assert config.system.data_path == "/data/消息队列"
    assert config.system.max_segment_size == 1024 * 1024
    assert list(config.topics) == ["订单"]
    assert config.config_checksum == zlib.crc32(data)


def test_utf8_bom_is_ignored():
    config = BrokerConfig.from_text(b"\xef\xbb\xbf" + make().encode())
    assert config.system.broker_id == 1


# ------------------------------------------------------------------------------ syntax


def test_comments_blank_lines_and_whitespace():
    text = make(system_extra="  # a hash comment\n\n   ;a semicolon comment\n"
                             "  hostName   =   broker-1.example  \n")
    assert load(text).system.host_name == "broker-1.example"


def test_value_keeps_inner_text_literally():
    config = load(make(system_extra="dataPath=/var/lib/meta ; not a comment\n"))
    assert config.system.data_path == "/var/lib/meta ; not a comment"


def test_empty_value_means_not_set():
    config = load(make(system_extra="serverPort=\nstat=\ndeletePolicy=\n"))
    assert config.system.server_port == 8123
    assert config.system.stat is False
    assert config.system.delete_policy == "delete,168"


def test_duplicate_key_last_value_wins_with_a_warning():
    config = load(make(system_extra="serverPort=1\nserverPort=2\n"))
    assert config.system.server_port == 2
    assert any("serverPort" in w for w in config.warnings)


def test_line_without_equals_sign_is_a_syntax_error():
    assert only_message(make(system_extra="serverPort 8123\n")) == \
        "Syntax error at line 8: expected key=value, got 'serverPort 8123'"


def test_key_before_any_section_is_a_syntax_error():
    assert only_message("brokerId=0\n" + make()) == \
        "Syntax error at line 1: 'brokerId' is outside of any section"


def test_unknown_section_is_ignored_with_a_warning():
    config = load(make() + "[metrics]\nfoo=bar\n")
    assert config.warnings == ("Unknown section [metrics] is ignored",)


# ------------------------------------------------------------------------------ §2.6 messages


def test_invalid_system_key_suggests_the_closest():
    assert only_message(make(system_extra="brokerid=3\n")) == \
        "Invalid config key:brokerid,do you mean 'brokerId'?"


def test_invalid_system_key_java_internal_field_is_refused():
    assert only_message(make(system_extra="topics=a\n")) == \
        "Invalid config key:topics,do you mean 'stat'?"


def test_invalid_zookeeper_key_suggests_the_closest():
    assert only_message(make(zookeeper_extra="zk.zkconnect=x:1\n")) == \
        "Invalid config key:zk.zkconnect,do you mean 'zk.zkConnect'?"


def test_invalid_topic_key_suggests_the_closest():
    assert only_message(make(topics="[topic=test]\nnumPartition=3\n")) == \
        "Invalid config key:numPartition,do you mean 'numPartitions'?"


def test_closest_key_is_the_smallest_levenshtein_distance():
    assert closest_key("unflushInterva", SYSTEM_KEYS) == "unflushInterval"
    assert closest_key("maxSegmentSise", SYSTEM_KEYS) == "maxSegmentSize"
    assert closest_key("zk.root", ZOOKEEPER_KEYS) == "zk.zkRoot"
    assert closest_key("dataPth", TOPIC_KEYS) == "dataPath"
    assert closest_key("ab", ["xb", "ay"]) == "xb"       # tie: the first listed


@pytest.mark.parametrize("key", ["brokerId", "numPartitions", "unflushThreshold",
                                 "unflushInterval", "maxSegmentSize", "maxTransferSize"])
@pytest.mark.parametrize("how", ["missing", "empty"])
def test_required_system_key_blank_value(key, how):
    lines = [line for line in SYSTEM.splitlines() if not line.startswith(key + "=")]
    if how == "empty":
        lines.append(f"{key}=   ")
    text = "\n".join(lines) + "\n" + ZOOKEEPER + TOPIC
    assert only_message(text) == f"Blank value for {key}"


def test_empty_topics_list():
    assert only_message(make(topics="")) == "Empty topics list"


def test_null_zookeeper_config():
    assert only_message(SYSTEM + TOPIC) == "Null zookeeper config"


def test_null_system_config():
    assert only_message(ZOOKEEPER + TOPIC) == "Null system config"


def test_empty_zookeeper_servers():
    assert only_message(SYSTEM + "[zookeeper]\nzk.zkConnect=\n" + TOPIC) == "Empty zookeeper servers"


def test_empty_zookeeper_servers_even_when_zookeeper_is_disabled():
    assert only_message(SYSTEM + "[zookeeper]\nzk.zkEnable=false\n" + TOPIC) == \
        "Empty zookeeper servers"


@pytest.mark.parametrize("value", ["1024", "-1", "2000"])
def test_broker_id_outside_0_to_1023(value):
    text = make().replace("brokerId=1", f"brokerId={value}")
    assert only_message(text) == f"Invalid value for brokerId in [system]: {value} is outside 0..1023"


@pytest.mark.parametrize("value", ["0", "1023"])
def test_broker_id_bounds_are_accepted(value):
    assert load(make().replace("brokerId=1", f"brokerId={value}")).system.broker_id == int(value)


def test_unknown_delete_policy():
    assert only_message(make(system_extra="deletePolicy=keep,10\n")) == (
        "Invalid value for deletePolicy in [system]: "
        "Unknown delete policy 'keep' in 'keep,10' (use delete or archive)")


def test_delete_policy_without_age():
    assert only_message(make(topics="[topic=test]\ndeletePolicy=delete\n")) == (
        "Invalid value for deletePolicy in [topic=test]: "
        "delete policy 'delete' needs an age, e.g. delete,168")


def test_delete_policy_units_and_archive():
    config = load(make(system_extra="deletePolicy=archive,30m,true\n"))
    assert config.system.retention_policy == RetentionPolicy("archive", 1800, True, "archive,30m,true")


@pytest.mark.parametrize("value", ["3", "-1"])
def test_flush_tx_log_at_commit_outside_0_to_2(value):
    assert only_message(make(system_extra=f"flushTxLogAtCommit={value}\n")) == \
        f"Invalid value for flushTxLogAtCommit in [system]: {value} is outside 0..2"


def test_invalid_delete_when():
    assert only_message(make(system_extra="deleteWhen=0 0 25 * * ?\n")) == (
        "Invalid value for deleteWhen in [system]: "
        "invalid hours field '25' in '0 0 25 * * ?': value 25 out of range 0-23")


def test_invalid_topic_delete_when():
    message = only_message(make(topics="[topic=test]\ndeleteWhen=every day\n"))
    assert message.startswith("Invalid value for deleteWhen in [topic=test]: ")


def test_invalid_topic_name_in_section():
    assert only_message(make(topics="[topic=a/b]\n")) == (
        "Invalid topic name in [topic=a/b]: topic name 'a/b' contains a forbidden character '/' "
        "(no slashes, backslashes, whitespace or control characters)")


def test_empty_topic_name_in_section():
    assert only_message(make(topics="[topic=]\n")) == \
        "Invalid topic name in [topic=]: topic name is empty"


def test_integer_that_does_not_parse():
    assert only_message(make(system_extra="serverPort=80x\n")) == (
        "Invalid value for serverPort in [system]: '80x' is not an integer expression "
        "(only decimal integers, + - * / and parentheses are allowed)")


def test_num_partitions_must_be_positive():
    assert only_message(make(topics="[topic=test]\nnumPartitions=0\n")) == \
        "Invalid value for numPartitions in [topic=test]: 0 is less than 1"


def test_max_transfer_size_must_hold_a_record():
    assert only_message(make().replace("maxTransferSize=1048576", "maxTransferSize=20")) == \
        "Invalid value for maxTransferSize in [system]: 20 is less than 21"


def test_server_port_range():
    assert only_message(make(system_extra="serverPort=65536\n")) == \
        "Invalid value for serverPort in [system]: 65536 is outside 0..65535"


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        BrokerConfig.load(tmp_path / "nope.ini")
    assert info.value.message == f"Config file not found: {tmp_path / 'nope.ini'}"


def test_several_problems_are_reported_together():
    text = (SYSTEM.replace("brokerId=1", "brokerId=")
            + "flushTxLogAtCommit=9\nbogus=1\n[zookeeper]\n[topic=test]\nstat=maybe\nfoo=1\n")
    error = refused(text)
    assert error.messages == (
        "Invalid config key:bogus,do you mean 'stat'?",
        "Blank value for brokerId",
        "Invalid value for flushTxLogAtCommit in [system]: 9 is outside 0..2",
        "Invalid config key:foo,do you mean 'stat'?",
        "Empty zookeeper servers",
    )
    assert str(error) == "\n".join(error.messages)
    assert isinstance(error, ValueError)


# ------------------------------------------------------------------------------ value types


@pytest.mark.parametrize(("text", "value"), [
    ("1024*1024*1024", 1073741824),
    (" 42 ", 42),
    ("(1+2)*3", 9),
    ("-5", -5),
    ("-(2-7)", 5),
    ("10 - -3", 13),
    ("1024*1024/2", 524288),
    ("3/2*2", 3),
    ("2147483647", 2**31 - 1),
    ("-2147483648", -(2**31)),
])
def test_integer_expressions(text, value):
    assert parse_int_expression(text) == value


@pytest.mark.parametrize("text", [
    "__import__('os')",
    "__import__('os').system('true')",
    "2**64",
    "2**3",
    "(1).real",
    "1 .real",
    "x",
    "1.5",
    "1.0*2",
    "3/2",
    "1/0",
    "7//2",
    "7%2",
    "1_000",
    "0x10",
    "1e3",
    "+5",
    "()",
    "1 2",
    "010",
    "(1",
    "",
    "1" * 300,
])
def test_refused_integer_expressions(text):
    with pytest.raises(ValueError):
        parse_int_expression(text)


def test_fractional_result_message():
    with pytest.raises(ValueError, match=r"'3/2' = 3/2 is not a whole number"):
        parse_int_expression("3/2")


def test_power_is_refused_without_being_computed():
    with pytest.raises(ValueError, match="operator Pow is not allowed"):
        parse_int_expression("9**9**9**9")


def test_arithmetic_values_in_the_file():
    config = load(make(system_extra="checkpointInterval=24*3600*1000\n")
                  .replace("maxSegmentSize=1073741824", "maxSegmentSize=512 * 1024 * 1024"))
    assert config.system.max_segment_size == 512 * 1024 * 1024
    assert config.system.checkpoint_interval == 86_400_000


def test_int_options_are_32_bits_and_out_of_range_is_refused():
    text = make().replace("maxSegmentSize=1073741824", "maxSegmentSize=4*1024*1024*1024")
    assert only_message(text) == (
        "Invalid value for maxSegmentSize in [system]: '4*1024*1024*1024' = 4294967296 does not "
        "fit in a 32-bit integer (Java would silently use 0)")


def test_checkpoint_interval_keeps_64_bits():
    config = load(make(system_extra="checkpointInterval=30*24*3600*1000*1000\n"))
    assert config.system.checkpoint_interval == 30 * 24 * 3600 * 1000 * 1000
    assert "64-bit" in only_message(make(system_extra="checkpointInterval=2*4611686018427387904\n"))


def test_fractional_value_in_the_file():
    assert only_message(make(topics="[topic=test]\nnumPartitions=5/2\n")) == \
        "Invalid value for numPartitions in [topic=test]: '5/2' = 5/2 is not a whole number"


def test_expression_in_the_file_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = make(system_extra=f"serverPort=__import__('os').mkdir('{marker}')\n")
    assert only_message(text).startswith("Invalid value for serverPort in [system]: ")
    assert not marker.exists()


@pytest.mark.parametrize("value", ["True", "TRUE", "yes", "1", "on", "false "])
def test_booleans_are_strict(value):
    text = make(system_extra=f"acceptPublish={value}\n")
    if value.strip() == "false":  # surrounding whitespace is trimmed
        assert load(text).system.accept_publish is False
        return
    assert only_message(text) == \
        f"Invalid value for acceptPublish in [system]: {value!r} is not true or false"


def test_topic_booleans_other_than_stat_are_strict():
    assert only_message(make(topics="[topic=test]\nacceptSubscribe=False\n")) == \
        "Invalid value for acceptSubscribe in [topic=test]: 'False' is not true or false"


def test_system_stat_is_strict():
    assert only_message(make(system_extra="stat=yes\n")) == \
        "Invalid value for stat in [system]: 'yes' is not true or false"


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("TRUE", True), ("True", True), ("yes", False), ("1", False),
    ("false", False), ("anything", False),
])
def test_topic_stat_is_lenient(value, expected):
    config = load(make(system_extra="stat=true\n", topics=f"[topic=test]\nstat={value}\n"))
    assert config.topic_config("test").stat is expected


def test_strings_are_literal():
    config = load(make(system_extra="hostName=10.0.0.1\ndataPath=~/x/../y\n",
                       zookeeper_extra="zk.zkConnect=a:1,b:2/chroot\n"))
    assert config.system.host_name == "10.0.0.1"
    assert config.system.data_path == "~/x/../y"
    assert config.zookeeper.zk_connect == "a:1,b:2/chroot"


def test_data_log_path_follows_data_path_unless_set():
    assert load(make(system_extra="dataPath=/d\n")).system.data_log_path == "/d"
    config = load(make(system_extra="dataPath=/d\ndataLogPath=/j\n"))
    assert (config.system.data_path, config.system.data_log_path) == ("/d", "/j")


@pytest.mark.parametrize(("value", "root"), [
    ("meta", "/meta"), ("/meta/", "/meta"), ("a/b//", "/a/b"), ("/", ""), ("", "/meta"),
])
def test_zk_root_is_normalised(value, root):
    assert load(make(zookeeper_extra=f"zk.zkRoot={value}\n")).zookeeper.zk_root == root


def test_system_keys_are_accepted_and_ignored_in_zookeeper_section():
    config = load(make(zookeeper_extra="brokerId=99\n"))
    assert config.system.broker_id == 1
    assert config.warnings == ("[zookeeper] brokerId is a [system] key; it is ignored here",)


def test_diamond_keys_are_accepted_with_a_warning():
    config = load(make(system_extra="diamondZKDataId=x\n", zookeeper_extra="diamondZKGroup=y\n"))
    assert len(config.warnings) == 2


def test_topic_key_and_group_filters_are_accepted():
    config = load(make(topics="[topic=test]\ntopic=test\ngroup.g1=com.example.Filter\n"))
    assert config.topics["test"].group_filters == (("group.g1", "com.example.Filter"),)
    assert len(config.warnings) == 1


def test_ini_key_mapping():
    assert SYSTEM_KEYS["brokerId"] == "broker_id"
    assert SYSTEM_KEYS["maxTxTimeoutInSeconds"] == "max_tx_timeout_in_seconds"
    assert ZOOKEEPER_KEYS["zk.zkSyncTimeMs"] == "zk_sync_time_ms"
    assert set(TOPIC_KEYS) == {"numPartitions", "stat", "deletePolicy", "deleteWhen", "dataPath",
                               "unflushInterval", "unflushThreshold", "acceptPublish",
                               "acceptSubscribe"}
    config = load(make())
    assert config.system.as_ini()["brokerId"] == "1"
    assert all(hasattr(config.system, attr) for attr in SYSTEM_KEYS.values())


# ------------------------------------------------------------------------------ inheritance


def test_topic_inherits_system_values():
    config = load(make(
        system_extra=("stat=true\ndeletePolicy=delete,24\ndeleteWhen=0 30 2 * * ?\ndataPath=/d\n"
                      "acceptPublish=false\nacceptSubscribe=false\n"),
        topics="[topic=test]\nnumPartitions=\n"))
    topic = config.topic_config("test")
    assert topic == TopicConfig(
        topic="test", section="test", num_partitions=4, stat=True, delete_policy="delete,24",
        delete_when="0 30 2 * * ?", data_path="/d", unflush_interval=10000, unflush_threshold=0,
        accept_publish=False, accept_subscribe=False)


def test_topic_overrides_system_values():
    config = load(make(topics=(
        "[topic=test]\nnumPartitions=2*4\nstat=true\ndeletePolicy=archive,1h\n"
        "deleteWhen=0 0 1 * * ?\ndataPath=/big\nunflushInterval=500\nunflushThreshold=100\n"
        "acceptPublish=false\nacceptSubscribe=false\n")))
    topic = config.topic_config("test")
    assert (topic.num_partitions, topic.stat, topic.delete_policy, topic.delete_when) == \
        (8, True, "archive,1h", "0 0 1 * * ?")
    assert (topic.data_path, topic.unflush_interval, topic.unflush_threshold) == ("/big", 500, 100)
    assert (topic.accept_publish, topic.accept_subscribe) == (False, False)
    assert config.log_settings("test") == LogSettings(
        num_partitions=8, max_segment_size=1073741824, max_transfer_size=1048576,
        unflush_threshold=100, unflush_interval=500, data_path="/big")
    assert config.data_paths() == (java_default_data_path(), "/big")


def test_topic_without_section_uses_system_settings_for_its_stores():
    config = load(make(system_extra="dataPath=/d\n"))
    assert config.topic_config("on-disk-only") is None
    assert config.log_settings("on-disk-only") == LogSettings(
        num_partitions=4, max_segment_size=1073741824, max_transfer_size=1048576,
        unflush_threshold=0, unflush_interval=10000, data_path="/d")
    assert config.default_topic_config("x").section is None


# ------------------------------------------------------------------------------ wildcards

WILDCARDS = """\
[topic=*]
numPartitions=1
[topic=orders-*]
numPartitions=2
[topic=orders-eu-*]
numPartitions=3
[topic=orders-eu-1]
numPartitions=9
[topic=*-audit]
numPartitions=5
"""


def test_exact_section_beats_any_pattern():
    config = load(make(topics=WILDCARDS))
    assert config.topic_config("orders-eu-1").num_partitions == 9
    assert config.topic_config("orders-eu-1").section == "orders-eu-1"


def test_most_specific_pattern_wins():
    config = load(make(topics=WILDCARDS))
    assert config.topic_config("orders-eu-2").num_partitions == 3
    assert config.topic_config("orders-us-1").num_partitions == 2
    assert config.topic_config("orders-").num_partitions == 2      # * also matches nothing
    assert config.topic_config("payments").num_partitions == 1
    match = config.topic_config("orders-eu-2")
    assert (match.topic, match.section, match.is_pattern) == ("orders-eu-2", "orders-eu-*", True)
    assert config.log_settings("orders-us-1").num_partitions == 2


def test_pattern_tie_break_more_literals_then_fewer_stars_then_file_order():
    config = load(make(topics="[topic=*-audit]\nnumPartitions=5\n[topic=orders-*]\nnumPartitions=2\n"
                              "[topic=o*s-audit]\nnumPartitions=7\n"))
    # "orders-audit": *-audit (6 literals), orders-* (7), o*s-audit (8) -> the last one
    assert config.topic_config("orders-audit").num_partitions == 7
    tie = load(make(topics="[topic=a*]\nnumPartitions=2\n[topic=*b]\nnumPartitions=3\n"
                           "[topic=*a*]\nnumPartitions=4\n"))
    assert tie.topic_config("ab").num_partitions == 2    # a* and *b: same literals and stars
    assert tie.topic_config("xab").num_partitions == 3   # *b beats *a* (fewer stars)


def test_unmatched_topic_is_not_accepted():
    config = load(make(topics="[topic=orders-*]\n[topic=test]\n"))
    assert config.topic_config("payments") is None
    assert not config.accepts("payments")
    assert config.accepts("orders-1")
    assert config.topic_config("test-1") is None


def test_pattern_characters_other_than_star_are_literal():
    config = load(make(topics="[topic=a.b*]\n[topic=x+]\n"))
    assert config.accepts("a.b1")
    assert not config.accepts("axb1")
    assert config.accepts("x+")
    assert not config.accepts("xx")


def test_pattern_section_inherits_and_applies_its_keys():
    config = load(make(system_extra="stat=true\n", topics="[topic=*]\nnumPartitions=8\n"))
    topic = config.topic_config("anything")
    assert (topic.num_partitions, topic.stat, topic.unflush_threshold) == (8, True, 0)


# ------------------------------------------------------------------------------ default()


def test_default_config_for_serve(tmp_path):
    config = BrokerConfig.default(tmp_path / "data", port=9000, host="127.0.0.1")
    assert config.zookeeper.zk_enable is False
    assert config.zookeeper.zk_connect is None
    assert config.system.server_port == 9000
    assert config.system.host_name == "127.0.0.1"
    assert config.system.data_path == str(tmp_path / "data")
    assert config.system.num_partitions == 1
    assert config.system.unflush_threshold == 0
    assert config.system.update_consumer_offsets is False
    assert list(config.topics) == ["*"]
    assert config.accepts("any.topic-name")
    settings = config.log_settings("any.topic-name")
    assert settings.group_commit and settings.num_partitions == 1
    assert settings.data_path == str(tmp_path / "data")
    assert config.config_checksum == zlib.crc32(config.text.encode())
    assert "[topic=*]" in config.text


def test_default_config_defaults():
    config = BrokerConfig.default()
    assert config.system.server_port == 8123
    assert config.system.data_path == java_default_data_path()
    assert config.system.host_name is None


def test_default_config_validates_port():
    with pytest.raises(ConfigError, match="serverPort"):
        BrokerConfig.default("/tmp/x", port=70000)


def test_config_objects_are_frozen():
    config = load(make())
    with pytest.raises(AttributeError):
        config.system.broker_id = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.topics["new"] = config.topics["test"]  # type: ignore[index]
    assert SystemConfig(data_path="/d").data_log_path == "/d"


# ------------------------------------------------------------------------------ reload


def write(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def ini(tmp_path):
    return tmp_path / "server.ini"


def test_reload_picks_up_changed_and_new_topic_sections(ini):
    write(ini, make(topics="[topic=test]\n[topic=keep]\n"), 1_000_000_000)
    config = BrokerConfig.load(ini)
    write(ini, make(topics="[topic=test]\nnumPartitions=7\n[topic=keep]\n[topic=fresh]\n"),
          2_000_000_000)
    result = config.reload()
    assert result.reloaded and result.topics_changed and result.checksum_changed
    assert result.changed_sections == ("test", "fresh")
    assert result.removed_sections == ()
    new = result.config
    assert new.topic_config("test").num_partitions == 7
    assert new.topic_config("fresh").num_partitions == 4
    assert new.config_checksum == zlib.crc32(ini.read_bytes())
    assert new.system == config.system
    assert result.topic_changed("test") and result.topic_changed("fresh")
    assert not result.topic_changed("keep")
    assert config.topic_config("test").num_partitions == 4   # the old object is unchanged


def test_reload_does_nothing_when_the_file_is_unchanged(ini):
    write(ini, make(), 1_000_000_000)
    config = BrokerConfig.load(ini)
    result = config.reload()
    assert not result.reloaded and result.config is config
    assert config.reload(force=True).reloaded


def test_reload_applies_only_topic_sections(ini):
    write(ini, make(), 1_000_000_000)
    config = BrokerConfig.load(ini)
    text = make(system_extra="stat=true\n", topics="[topic=test]\n[topic=new]\n")
    write(ini, text.replace("brokerId=1", "brokerId=5"), 2_000_000_000)
    result = config.reload()
    assert result.config.system == config.system
    assert result.config.system.broker_id == 1
    assert result.ignored_changes == ("[system] brokerId", "[system] stat")
    # topics inherit the running [system] values, not the edited ones
    assert result.config.topic_config("new").stat is False


def test_reload_error_keeps_the_old_config(ini):
    write(ini, make(), 1_000_000_000)
    config = BrokerConfig.load(ini)
    write(ini, make(topics="[topic=test]\nnumPartitions=many\n"), 2_000_000_000)
    with pytest.raises(ConfigError, match="numPartitions in \\[topic=test\\]"):
        config.reload()
    write(ini, make(topics=""), 3_000_000_000)
    with pytest.raises(ConfigError, match="Empty topics list"):
        config.reload()
    assert config.topic_config("test").num_partitions == 4


def test_reload_never_forgets_accepted_topics_and_patterns(ini):
    write(ini, make(topics="[topic=test]\nnumPartitions=2\n[topic=logs-*]\nnumPartitions=3\n"),
          1_000_000_000)
    config = BrokerConfig.load(ini)
    write(ini, make(topics="[topic=other]\n"), 2_000_000_000)
    result = config.reload()
    assert result.removed_sections == ("test", "logs-*")
    new = result.config
    assert list(new.topics) == ["other"]
    assert new.retired_topics == ("test", "logs-*")
    # still accepted, now with [system] settings (as Java)
    assert new.topic_config("test").num_partitions == 4
    assert new.topic_config("logs-app").num_partitions == 4
    assert new.topic_config("unknown") is None
    # a section that comes back is a section again
    write(ini, make(topics="[topic=other]\n[topic=test]\nnumPartitions=6\n"), 3_000_000_000)
    again = new.reload().config
    assert again.retired_topics == ("logs-*",)
    assert again.topic_config("test").num_partitions == 6
    assert again.accepts("logs-x")


def test_reload_of_a_changed_pattern_reports_each_affected_topic(ini):
    write(ini, make(topics="[topic=*]\n[topic=orders-*]\n"), 1_000_000_000)
    config = BrokerConfig.load(ini)
    write(ini, make(topics="[topic=*]\n[topic=orders-*]\nnumPartitions=6\n"), 2_000_000_000)
    result = config.reload()
    assert result.changed_sections == ("orders-*",)
    assert result.topic_changed("orders-1")
    assert not result.topic_changed("payments")


def test_reload_without_a_path_is_an_error():
    with pytest.raises(ConfigError, match="No config file to reload"):
        BrokerConfig.default("/tmp/x").reload()


# ------------------------------------------------------------------------------ overrides, helpers


def test_with_system_overrides_and_inherited_topic_values_follow():
    config = load(make(topics="[topic=test]\ndataPath=/own\n[topic=plain]\n[topic=logs-*]\n"))
    new = config.with_system(data_path="/d", server_port=0, host_name="127.0.0.1", num_partitions=6)
    assert (new.system.data_path, new.system.data_log_path) == ("/d", "/d")
    assert (new.system.server_port, new.system.host_name) == (0, "127.0.0.1")
    assert new.topic_config("test").data_path == "/own"          # set by its section
    assert new.topic_config("plain").data_path == "/d"           # inherited: follows
    assert new.topic_config("logs-x").num_partitions == 6
    assert new.log_settings("unconfigured").data_path == "/d"
    assert (new.text, new.config_checksum) == (config.text, config.config_checksum)
    assert config.system.server_port == 8123                      # the original is unchanged


def test_with_system_keeps_an_explicit_data_log_path_and_validates():
    config = load(make(system_extra="dataPath=/d\ndataLogPath=/j\n"))
    assert config.with_system(data_path="/e").system.data_log_path == "/j"
    with pytest.raises(ConfigError) as info:
        config.with_system(broker_id=4096)
    assert info.value.message == "Invalid value for brokerId in [system]: 4096 is outside 0..1023"


def test_reload_keeps_with_system_overrides(ini):
    write(ini, make(), 1_000_000_000)
    config = BrokerConfig.load(ini).with_system(data_path="/override")
    write(ini, make(topics="[topic=test]\n[topic=new]\n"), 2_000_000_000)
    new = config.reload().config
    assert new.system.data_path == "/override"
    assert new.topic_config("new").data_path == "/override"


def test_topic_setting_by_attribute_or_ini_key():
    config = load(make(system_extra="deleteWhen=0 0 1 * * ?\n",
                       topics="[topic=test]\ndeletePolicy=delete,1h\n"))
    assert config.topic_setting("test", "delete_policy") == "delete,1h"
    assert config.topic_setting("test", "deletePolicy") == "delete,1h"
    assert config.topic_setting("test", "delete_when") == "0 0 1 * * ?"
    assert config.topic_setting("on-disk-only", "delete_policy") == "delete,168"


def test_reload_result_unpacks_as_config_and_changed_sections(ini):
    write(ini, make(), 1_000_000_000)
    config = BrokerConfig.load(ini)
    write(ini, make(topics="[topic=test]\nstat=true\n"), 2_000_000_000)
    new_config, changed = config.reload(str(ini))
    assert changed == ("test",)
    assert new_config.topic_config("test").stat is True
