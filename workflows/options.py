"""Timeouts and retry policies of every activity call, in one place."""

from __future__ import annotations

from datetime import timedelta
from typing import TypedDict

from temporalio.common import RetryPolicy


class ActivityOptions(TypedDict, total=False):
    """The keyword arguments of `workflow.execute_activity` that set time and retries."""

    start_to_close_timeout: timedelta
    heartbeat_timeout: timedelta
    retry_policy: RetryPolicy


PUSH: ActivityOptions = {
    "start_to_close_timeout": timedelta(seconds=15),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=3), maximum_attempts=5),
}
KEYS: ActivityOptions = {
    "start_to_close_timeout": timedelta(seconds=15),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=3), maximum_attempts=10),
}
DEPROVISION: ActivityOptions = {
    "start_to_close_timeout": timedelta(minutes=2),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=20),
}
MONITOR: ActivityOptions = {
    "start_to_close_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=2), maximum_attempts=3),
}
# Changing traffic waits until the gateways have the new table.
TRAFFIC: ActivityOptions = {
    "start_to_close_timeout": timedelta(seconds=60),
    "heartbeat_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=5), maximum_attempts=10),
}
REQUEST: ActivityOptions = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=5), maximum_attempts=20),
}
# A long poll: heartbeats between chunks, so a cancel (a signal arrived) lands within seconds.
WATCH: ActivityOptions = {
    "start_to_close_timeout": timedelta(seconds=90),
    "heartbeat_timeout": timedelta(seconds=15),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=5)),
}
# One read of the instances as they are (the control loop's check in case a signal was lost):
# quick, and given up soon; the next check comes anyway.
READ: ActivityOptions = {
    "start_to_close_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=2), maximum_attempts=3),
}
# A patch waits for a rolling replacement of every instance of one deployment.
PATCH: ActivityOptions = {
    "start_to_close_timeout": timedelta(minutes=30),
    "heartbeat_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=3),
}
# The gateways' patch: per gateway VM a boot (bounded by azure_gateway_ready_seconds) and a
# delete. A retried attempt reads the scale set and continues where the last one stopped.
PATCH_GATEWAYS: ActivityOptions = {
    "start_to_close_timeout": timedelta(hours=3),
    "heartbeat_timeout": timedelta(seconds=60),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=3),
}
