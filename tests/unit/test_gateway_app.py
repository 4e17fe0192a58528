"""The gateway's HTTP side without a broker."""

from __future__ import annotations


async def test_health_is_503_before_startup(gateway_client):
    # The lifespan never ran: the app is up but has no producer or fan-out.
    response = await gateway_client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] != "ok"
