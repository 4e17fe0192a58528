"""Quotas per tenant without a socket: connections, concurrent sessions, the audio rate, each tenant apart."""

from __future__ import annotations

import pytest

from pipeline.gateway.protocol import ErrorCode, ProtocolError
from pipeline.gateway.tenant_quotas import TenantQuotas


def code(call) -> ErrorCode:
    with pytest.raises(ProtocolError) as caught:
        call()
    return caught.value.code


def test_connections_are_counted_per_tenant_and_freed_on_disconnect():
    quotas = TenantQuotas(max_connections=2)
    quotas.connect("acme")
    quotas.connect("acme")
    assert code(lambda: quotas.connect("acme")) == ErrorCode.TOO_MANY_CONNECTIONS
    quotas.connect("beta")  # another tenant is not held back
    quotas.disconnect("acme")
    quotas.connect("acme")
    assert quotas.connections == {"acme": 2, "beta": 1}
    for _ in range(3):
        quotas.disconnect("beta")
    assert "beta" not in quotas.connections


def test_concurrent_sessions_are_counted_once_each_and_freed_when_they_end():
    quotas = TenantQuotas(max_sessions=2)
    quotas.start_session("acme", "acme:1")
    quotas.start_session("acme", "acme:1")  # a resume of a session counted already
    quotas.start_session("acme", "acme:2")
    assert code(lambda: quotas.start_session("acme", "acme:3")) == ErrorCode.TOO_MANY_SESSIONS
    quotas.start_session("beta", "beta:1")
    quotas.end_session("acme", "acme:1")
    quotas.start_session("acme", "acme:3")
    assert quotas.sessions["acme"] == {"acme:2", "acme:3"}


def test_zero_is_no_limit():
    quotas = TenantQuotas()
    for i in range(500):
        quotas.connect("acme")
        quotas.start_session("acme", str(i))
        quotas.take_audio("acme", 60.0)


def test_the_audio_rate_allows_a_minutes_burst_then_the_rate():
    now = [0.0]
    quotas = TenantQuotas(audio_seconds_per_minute=120.0, clock=lambda: now[0])
    for _ in range(12):
        quotas.take_audio("acme", 10.0)  # a minute's allowance at once
    assert code(lambda: quotas.take_audio("acme", 0.5)) == ErrorCode.AUDIO_RATE_EXCEEDED
    quotas.take_audio("beta", 100.0)  # another tenant's allowance is its own
    now[0] = 30.0  # half a minute refills 60 s of it
    quotas.take_audio("acme", 60.0)
    assert code(lambda: quotas.take_audio("acme", 1.0)) == ErrorCode.AUDIO_RATE_EXCEEDED
    now[0] = 1000.0  # never more than a minute's worth banked
    quotas.take_audio("acme", 120.0)
    assert code(lambda: quotas.take_audio("acme", 1.0)) == ErrorCode.AUDIO_RATE_EXCEEDED


def test_a_batch_job_borrows_what_it_needs_and_later_audio_waits_for_the_debt():
    now = [0.0]
    quotas = TenantQuotas(audio_seconds_per_minute=120.0, clock=lambda: now[0])
    quotas.take_audio("acme", 600.0, borrow=True)  # five minutes' allowance in one job
    assert code(lambda: quotas.take_audio("acme", 1.0)) == ErrorCode.AUDIO_RATE_EXCEEDED
    assert code(lambda: quotas.take_audio("acme", 1.0, borrow=True)) == ErrorCode.AUDIO_RATE_EXCEEDED
    now[0] = 200.0  # 400 s of allowance: still 80 s owed
    assert code(lambda: quotas.take_audio("acme", 1.0)) == ErrorCode.AUDIO_RATE_EXCEEDED
    now[0] = 300.0
    quotas.take_audio("acme", 10.0)
