"""Reconcilers: real-world quota reports, and malformed ones ignored without a crash."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tokenbucket import (
    HeaderReconciler,
    KeepaReconciler,
    Rate,
    Reconciler,
    UpstreamReport,
    parse_amzn_ratelimit,
    parse_headers,
    parse_keepa,
    parse_ratelimit,
    parse_retry_after,
    parse_x_ratelimit,
)

NOW = 1_700_000_000.0

# --------------------------------------------------------------------------- Keepa

KEEPA_OK = (
    b'{"timestamp":1700000000123,"tokensLeft":273,"refillIn":34567,"refillRate":5,'
    b'"tokenFlowReduction":0.0,"tokensConsumed":20,"processingTimeInMs":12,"products":[{"asin":"B00TEST123"}]}'
)
KEEPA_429 = (
    b'{"timestamp":1700000000123,"tokensLeft":-42,"refillIn":12000,"refillRate":5,'
    b'"tokenFlowReduction":0.0,"tokensConsumed":0,"processingTimeInMs":0,'
    b'"error":{"type":"tokensExhausted","message":"not enough tokens"}}'
)


def test_keepa_success_body() -> None:
    report = parse_keepa(KEEPA_OK)
    assert report == UpstreamReport(
        "keepa",
        remaining=273,
        consumed=20,
        refill_rate=Rate(5, per=60),
        reset_after=34.567,
        timestamp=1_700_000_000.123,
    )


def test_keepa_debt_body_waits_for_the_refills_that_pay_the_debt() -> None:
    report = parse_keepa(KEEPA_429)
    assert report is not None
    assert (report.remaining, report.consumed) == (-42, 0)
    # 43 tokens to reach 1 at 5 a minute: 9 refills, the first in 12 s
    assert report.retry_after == pytest.approx(12 + 8 * 60)


def test_keepa_body_as_text_or_decoded_object() -> None:
    assert parse_keepa(KEEPA_OK.decode()) == parse_keepa(json.loads(KEEPA_OK))


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"",
        b"<html>502 Bad Gateway</html>",
        b"[1, 2, 3]",
        b'{"products": []}',
        b'{"tokensLeft": "many"}',
        b'{"tokensLeft": true}',
        b"\xff\xfe\x00",
    ],
)
def test_keepa_bodies_without_a_readable_balance_report_nothing(body: bytes | None) -> None:
    assert parse_keepa(body) is None


def test_keepa_malformed_optional_fields_are_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="tokenbucket.reconcile"):
        report = parse_keepa(b'{"tokensLeft": 10, "refillRate": "5/min", "tokensConsumed": -3, "refillIn": null}')
    assert report == UpstreamReport("keepa", remaining=10)
    assert any("refillRate" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- IETF RateLimit fields


def test_ietf_fields_from_the_draft() -> None:
    report = parse_ratelimit({"RateLimit": '"default";r=50;t=30', "RateLimit-Policy": '"default";q=100;w=60'})
    assert report == UpstreamReport(
        "ratelimit", remaining=50, limit=100, refill_rate=Rate(100, per=60), reset_after=30, policy="default"
    )


def test_ietf_several_limits_report_the_tightest_with_its_policy() -> None:
    headers = {
        "ratelimit": '"permin";r=10;t=20, "perhr";r=3;t=1800',
        "ratelimit-policy": '"permin";q=50;w=60,"perhr";q=1000;w=3600',
    }
    report = parse_ratelimit(headers)
    assert report is not None
    assert (report.policy, report.remaining, report.limit, report.reset_after) == ("perhr", 3, 1000, 1800)
    assert report.refill_rate == Rate(1000, per=3600)
    assert [(r.policy, r.remaining, r.limit, r.refill_rate) for r in report.limits] == [
        ("permin", 10, 50, Rate(50, per=60)),
        ("perhr", 3, 1000, Rate(1000, per=3600)),
    ]
    one = parse_ratelimit({"ratelimit": '"permin";r=10;t=20'})
    assert one is not None
    assert one.limits == ()


def test_ietf_partition_keys_quota_units_and_unknown_parameters_are_accepted() -> None:
    headers = {
        "RateLimit": '"peruser";r=999;pk=:dHJpYWwxMjEzMjM=:;acme-burst=?1',
        "RateLimit-Policy": '"peruser";q=65535;qu="content-bytes";w=10;pk=:sdfjLJUOUH==:',
    }
    report = parse_ratelimit(headers)
    assert report is not None
    assert (report.remaining, report.limit, report.reset_after) == (999, 65535, None)


def test_ietf_policy_without_window_gives_a_limit_but_no_rate() -> None:
    report = parse_ratelimit({"RateLimit": '"daily";r=7', "RateLimit-Policy": '"daily";q=10'})
    assert report is not None
    assert report.limit == 10
    assert report.refill_rate is None


def test_earlier_draft_dictionary_form() -> None:
    report = parse_ratelimit({"RateLimit": "limit=100, remaining=50, reset=30"})
    assert report == UpstreamReport("ratelimit", remaining=50, limit=100, reset_after=30)


@pytest.mark.parametrize(
    "value",
    [
        '"default";r=abc',
        '"unterminated;r=5',
        '"default";r=-5;t=3',
        '"default";t=30',
        ";;;",
        '"default";r=5,',
        '("a" "b");r=5',
        '"default";R=5',
        "",
    ],
)
def test_malformed_ietf_fields_are_ignored_with_a_debug_log(value: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="tokenbucket.reconcile"):
        assert parse_ratelimit({"RateLimit": value}) is None
    assert caplog.records or value == ""


def test_malformed_policy_keeps_the_remaining_quota() -> None:
    report = parse_ratelimit({"RateLimit": '"default";r=5', "RateLimit-Policy": '"default";q=ten'})
    assert report is not None
    assert report.remaining == 5
    assert report.limit is None


# --------------------------------------------------------------------------- legacy X-RateLimit-*


def test_github_style_epoch_reset() -> None:
    headers = {
        "x-ratelimit-limit": "5000",
        "x-ratelimit-remaining": "4999",
        "x-ratelimit-reset": str(int(NOW) + 873),
        "x-ratelimit-used": "1",
    }
    assert parse_x_ratelimit(headers, now=NOW) == UpstreamReport(
        "x-ratelimit", remaining=4999, limit=5000, reset_after=873
    )


@pytest.mark.parametrize(
    ("reset", "seconds"),
    [
        ("60", 60),
        ("0", 0),
        ("1.5", 1.5),
        (str(int(NOW * 1000) + 30_000), 30),  # epoch milliseconds
        (str(int(NOW) - 10), 0),  # a moment already past
        (format_datetime(datetime.fromtimestamp(NOW + 7, tz=timezone.utc), usegmt=True), 7),  # an HTTP-date
    ],
)
def test_reset_as_delay_epoch_seconds_epoch_ms_or_date(reset: str, seconds: float) -> None:
    report = parse_x_ratelimit({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": reset}, now=NOW)
    assert report is not None
    assert report.reset_after == pytest.approx(seconds)


def test_legacy_name_variants_and_draft_three_values() -> None:
    assert parse_x_ratelimit({"X-Rate-Limit-Remaining": "7", "X-Rate-Limit-Limit": "15"}, now=NOW) == UpstreamReport(
        "x-ratelimit", remaining=7, limit=15
    )
    report = parse_x_ratelimit({"RateLimit-Limit": "100, 100;w=60", "RateLimit-Remaining": "42"}, now=NOW)
    assert report is not None
    assert (report.limit, report.remaining) == (100, 42)


def test_malformed_legacy_values_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="tokenbucket.reconcile"):
        report = parse_x_ratelimit(
            {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "lots", "X-RateLimit-Reset": "soon"}, now=NOW
        )
    assert report == UpstreamReport("x-ratelimit", limit=100)
    assert len(caplog.records) == 2
    assert parse_x_ratelimit({"X-RateLimit-Remaining": "lots"}, now=NOW) is None
    assert parse_x_ratelimit({"Content-Type": "text/html"}, now=NOW) is None


# --------------------------------------------------------------------------- Retry-After and SP-API


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("120") == 120
    when = datetime.fromtimestamp(NOW + 90, tz=timezone.utc)
    assert parse_retry_after(format_datetime(when, usegmt=True), now=NOW) == pytest.approx(90)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW) == 0  # in the past
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("value", ["soon", "-5", "1.5", "", "Wed, 99 Foo 2015 07:28:00 GMT", "2015-10-21T07:28:00"])
def test_malformed_retry_after_is_ignored(value: str) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_amazon_sp_api_rate() -> None:
    assert parse_amzn_ratelimit({"x-amzn-RateLimit-Limit": "5.0"}) == UpstreamReport(
        "x-amzn-ratelimit", refill_rate=Rate(5.0, per=1.0)
    )
    report = parse_amzn_ratelimit({"X-Amzn-Ratelimit-Limit": "0.0055"})
    assert report is not None
    assert report.refill_rate is not None
    assert report.refill_rate.per_second == pytest.approx(0.0055)
    for bad in ("abc", "0", "-1", "inf", "nan"):
        assert parse_amzn_ratelimit({"x-amzn-RateLimit-Limit": bad}) is None


# --------------------------------------------------------------------------- merged and reconcilers


def test_headers_are_merged_with_retry_after() -> None:
    headers = httpx.Headers({"RateLimit": '"default";r=0;t=30', "Retry-After": "31"})
    report = parse_headers(headers, now=NOW)
    assert report is not None
    assert (report.source, report.remaining, report.reset_after, report.retry_after) == (
        "ratelimit+retry-after",
        0,
        30,
        31,
    )
    assert parse_headers({"Content-Type": "application/json"}, now=NOW) is None


def test_ietf_fields_win_over_legacy_ones() -> None:
    headers = {"RateLimit": '"default";r=5', "X-RateLimit-Remaining": "9", "X-RateLimit-Limit": "60"}
    report = parse_headers(headers, now=NOW)
    assert report is not None
    assert (report.remaining, report.limit) == (5, 60)


def test_reconcilers() -> None:
    headers = HeaderReconciler(now=lambda: NOW)
    keepa = KeepaReconciler(now=lambda: NOW)
    assert isinstance(headers, Reconciler)
    assert isinstance(keepa, Reconciler)
    assert (headers.needs_body, keepa.needs_body) == (False, True)
    report = keepa(429, {"Retry-After": "60"}, KEEPA_429)
    assert report is not None
    assert report.source == "keepa"
    assert report.remaining == -42
    assert report.retry_after == pytest.approx(492)  # the body's own estimate comes first
    fallback = keepa(503, {"Retry-After": "60"}, b"<html>busy</html>")
    assert fallback == UpstreamReport("retry-after", retry_after=60)
    assert headers(200, {"X-RateLimit-Remaining": "4"}, None) == UpstreamReport("x-ratelimit", remaining=4)


# --------------------------------------------------------------------------- never a crash

HEADER_NAMES = [
    "RateLimit",
    "RateLimit-Policy",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
    "x-amzn-RateLimit-Limit",
]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(HEADER_NAMES), st.text(max_size=40)))
def test_no_header_value_makes_a_parser_raise(headers: dict[str, str]) -> None:
    parse_headers(headers, now=NOW)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=60),
        st.dictionaries(
            st.sampled_from(["tokensLeft", "tokensConsumed", "refillIn", "refillRate", "timestamp"]),
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
        ).map(lambda d: json.dumps(d).encode()),
    )
)
@example(b'{"tokensLeft": 0, "refillRate": 2.2250738585e-313}')  # a denormal rate: the wait overflows
def test_no_body_makes_the_keepa_parser_raise(body: bytes) -> None:
    report = parse_keepa(body)
    if report is not None:
        assert report.remaining is not None
