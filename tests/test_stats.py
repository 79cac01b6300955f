"""Real-time statistics (broker.md §7, protocol §5.6): number formatting, the <R> text, per-topic
recording, ``Invalid keyTwo``, and the automatic reset every 30 minutes."""

from __future__ import annotations

import pytest

from metaq_server.stats import RealTimeStats, format_number, format_realtime, stats_body


@pytest.mark.parametrize("value,text", [
    (3, "3"), (0.5, "0.5"), (2 / 3, "0.67"), (1 / 3, "0.33"), (0.125, "0.12"), (0.375, "0.38"),
    (100.0, "100"), (0, "0"), (1234567, "1234567"), (2.005, "2"), (0.001, "0"),
])
def test_numbers_have_at_most_two_decimals_half_even(value, text):
    assert format_number(value) == text


def test_realtime_text():
    assert format_realtime(3, 2, 4) == "Count=3,Value=2,Value/Count=0.67,Count/Duration=0.75,Duration=4"
    assert format_realtime(0, 0, 4) == "Count=0,Value=0,Value/Count=invalid,Count/Duration=0,Duration=4"
    assert format_realtime(2, 2, 0).endswith("Count/Duration=invalid,Duration=0")


def test_recording_per_topic_and_auto_reset():
    now = [1000.0]
    stats = RealTimeStats(lambda topic: topic != "quiet", clock=lambda: now[0])
    assert stats.render("put") == "null"
    stats.record("put", "a", "0-1")
    stats.record("put", "a", "0-2")
    stats.record("put", "quiet", "0-1")  # stat off for this topic: not recorded
    stats.record("message_size", "a", "*", 1024)
    now[0] += 10
    assert stats.render("put") == "Count=2,Value=2,Value/Count=1,Count/Duration=0.2,Duration=10"
    assert stats.render("put", "a") == stats.render("put")
    assert stats.render("put", "b") == "Invalid keyTwo:b"
    assert stats.render("message_size", "a").startswith("Count=1,Value=1024,Value/Count=1024,")
    now[0] += 30 * 60  # every counter is zeroed after 30 minutes
    assert stats.render("put") == "null"
    stats.record("put", "a", "0-1")
    assert stats.render("put") == "Count=1,Value=1,Value/Count=1,Count/Duration=invalid,Duration=0"
    stats.reset()
    assert stats.render("put") == "null"


def test_stats_framing():
    assert stats_body(["a 1", "b 2"]) == b"STATS\r\na 1\r\nb 2\r\nEND\r\n"
    assert stats_body([]) == b"STATS\r\nEND\r\n"
